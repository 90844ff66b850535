"""How much of a model's accuracy comes from self-revision traces in its first attempts, from saved evaluations.

    python scripts/inline_revisions.py outputs/run/eval-srt.json outputs/run/eval-sdzero.json
    python scripts/inline_revisions.py outputs/ablate/pairs-8-seed*/eval-{srt,sdzero}.json

For each evaluation file (`sdzero eval` / `sdzero run`, samples saved): the share of sampled responses that hold
a control phrase (a draft, the phrase, another attempt: what SRT's generation loss teaches), the accuracy of those
and of the others, and the accuracy of all (graded, as everywhere, by the final attempt). The same statistic that
evaluations now report (`sdzero.evaluate.inline_revision_metrics`), recomputed for files written before it was.
"""

from __future__ import annotations

import argparse
import json
import math

from sdzero.evaluate import inline_revision_metrics
from sdzero.verifiers.answers import KNOWN_CONTROL_PHRASES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="+", help="evaluation JSON files")
    args = ap.parse_args()
    print("| file | responses | revising inline | accuracy of those | of the others | all |")
    print("|---|---|---|---|---|---|")
    for path in args.evals:
        report = json.load(open(path))
        phrases = report.get("control_phrases") or {}
        control = [*KNOWN_CONTROL_PHRASES, phrases.get("correct", ""), phrases.get("wrong", "")]
        texts, rewards = [], []
        for q in report["questions"]:
            if "samples" not in q:
                raise SystemExit(f"{path}: no samples saved (evaluate with save_samples on)")
            texts += q["samples"]
            rewards += q["rewards"]
        m = inline_revision_metrics(texts, rewards, control)
        pct = lambda v: "-" if math.isnan(v) else f"{100 * v:.1f}%"  # noqa: E731
        print(f"| {path} | {len(texts)} | {pct(m['inline_revision_share'])} | "
              f"{pct(m['accuracy_with_inline_revision'])} | {pct(m['accuracy_without_inline_revision'])} | "
              f"{pct(sum(rewards) / len(rewards))} |")


if __name__ == "__main__":
    main()
