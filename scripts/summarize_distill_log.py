"""Summarize a Phase-2 log: steps, wall time, and the mean of the first vs the last 5 steps.

    python scripts/summarize_distill_log.py outputs/distill-embedded/log.jsonl [--window 5]
"""

import argparse
import json

from sdzero.runfolder import format_history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--window", type=int, default=5)
    args = ap.parse_args()
    with open(args.log) as f:
        print(format_history([json.loads(line) for line in f if line.strip()], args.window))


if __name__ == "__main__":
    main()
