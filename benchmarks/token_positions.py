"""Finding which tokens carry a response's answer (Phase 2's per-step answer log) and where its final attempt
begins (`--loss_tokens final_attempt`): decoding every prefix against the bisection sdzero uses, side by
side in one run, on self-revision traces of growing length with the embedded tokenizer.

    python benchmarks/token_positions.py [--repeats 3]

Both must give the same tokens; the script checks that and prints milliseconds per response and the ratio.
"""

import argparse
import random
import time

from sdzero.distill import final_attempt_start
from sdzero.models import load_tokenizer
from sdzero.selfloc import answer_token_positions

PHRASE = "Wait, this response is not correct, let me start over."


def scan(decode, ids, answer):
    """The reference: decode every prefix, one per token (what sdzero did before the bisection)."""
    ends = [len(decode(ids[: j + 1])) for j in range(len(ids))]
    text = decode(ids)
    at = text.rfind(answer)
    positions = [j for j in range(len(ids)) if ends[j] > at and (ends[j - 1] if j else 0) < at + len(answer)]
    cut = text.rfind(PHRASE) + len(PHRASE)
    return positions, next((j for j in range(len(ids)) if ends[j] > cut), len(ids))


def bisect(decode, ids, answer):
    return answer_token_positions(decode, ids, answer), final_attempt_start(decode, ids, [PHRASE])


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs per response")
    args = ap.parse_args()
    tok = load_tokenizer("embedded")
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    rng = random.Random(0)
    print("| response tokens | every prefix (ms) | bisection (ms) | ratio |\n|---|---|---|---|")
    for steps in (8, 80, 400):
        draft = " ".join(f"{rng.randint(0, 99)} + {rng.randint(0, 9)} = step" for _ in range(steps))
        ids = tok(f"{draft} {PHRASE} {draft[: len(draft) // 2]} The answer is 42.", add_special_tokens=False)
        ids = ids["input_ids"]
        slow, expected = timed(lambda: scan(decode, ids, "42"), args.repeats)
        fast, got = timed(lambda: bisect(decode, ids, "42"), args.repeats)
        if got != expected:
            raise SystemExit(f"{len(ids)} tokens: the bisection gives {got}, every prefix {expected}")
        print(f"| {len(ids)} | {1000 * slow:.1f} | {1000 * fast:.1f} | {slow / fast:.0f}x |")


if __name__ == "__main__":
    main()
