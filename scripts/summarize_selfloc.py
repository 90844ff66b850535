"""Self-localization figures of Phase-2 heat-map pages (the .jsonl beside each .html).

    python scripts/summarize_selfloc.py outputs/run3-seed*/distill/selfloc/step-*.jsonl

Per page: responses (correct / wrong), mean per-token KL on each, mean share of a response's KL on its top
10% of tokens, how many responses have their largest KL on the first token, and the first token's mean KL
against the later tokens'.
"""

import argparse
import json

from sdzero.selfloc import summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pages", nargs="+")
    print("| page | correct / wrong | mean KL correct / wrong | top-10% share correct / wrong "
          "| largest KL at token 1 | token-1 KL / later KL |")
    print("|---|---|---|---|---|---|")
    for page in ap.parse_args().pages:
        with open(page) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        s = summarize(rows)
        print(f"| {page} | {s['correct_responses']} / {s['wrong_responses']} | {s['correct_mean_kl']:.2f} / "
              f"{s['wrong_mean_kl']:.2f} | {s['correct_top10_share']:.2f} / {s['wrong_top10_share']:.2f} | "
              f"{s['first_token_is_max']} of {len(rows)} | {s['first_token_mean_kl']:.2f} / "
              f"{s['later_tokens_mean_kl']:.2f} |")


if __name__ == "__main__":
    main()
