"""Rebuild and print the `sdzero compare` table from a compare folder (every seed-N found in it).

    python scripts/summarize_compare.py outputs/compare
    python scripts/summarize_compare.py outputs/compare --seeds 0      # only these seeds
"""

import argparse
import json
from pathlib import Path

from sdzero.compare import BASELINES, seeds_in
from sdzero.reports import write_compare_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--seeds", default=None, help="comma-separated; default: every seed-N folder")
    args = ap.parse_args()
    out = Path(args.folder)
    seeds = seeds_in(out, args.seeds)
    methods = set()
    for s in seeds:
        f = out / f"seed-{s}" / "baselines.json"
        if f.is_file():
            methods |= set(json.loads(f.read_text()))
    write_compare_report(out, seeds, [m for m in BASELINES if m in methods])


if __name__ == "__main__":
    main()
