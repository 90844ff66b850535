"""Print the held-out table over archived seeds plus seeds known only from a recorded file.

    python scripts/summarize_compare.py results/compare          # archived seeds -> report/results.json
    python scripts/combine_seeds.py results/compare --recorded results/compare/seed-0-recorded.json

Why: a seed whose raw files were lost keeps only the numbers written down at the time (avg@k and greedy
accuracy per method); this puts them beside the archived seeds' and gives, per method, the per-seed values,
mean ± sample std, and SD-Zero's per-seed lead (mean ± std, and on how many seeds it was ahead).
"""

import argparse
import json
from pathlib import Path

from sdzero.reports import LABELS, ROW_ORDER, mean_std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="an archive (or compare) folder whose report/results.json is up to date")
    ap.add_argument("--recorded", action="append", default=[], help="JSON of a seed's recorded numbers (repeatable)")
    args = ap.parse_args()
    report = Path(args.folder) / "report" / "results.json"
    if not report.is_file():
        raise SystemExit(f"error: no {report}: run scripts/summarize_compare.py {args.folder} first")
    summary = json.loads(report.read_text())["methods"]
    k_key = next(key for key in next(iter(summary.values())) if key.startswith("avg@"))
    keys = (k_key, "greedy_accuracy")
    # values[key][method][seed] in points
    values = {key: {m: {int(s): 100 * v for s, v in e[key]["per_seed"].items()} for m, e in summary.items()}
              for key in keys}
    for f in args.recorded:
        rec = json.loads(Path(f).read_text())
        missing = [key for key in ("seed", *keys) if key not in rec]
        if missing:
            raise SystemExit(f"error: {f} lacks {', '.join(missing)}")
        for key in keys:
            for m, v in rec[key].items():
                values[key].setdefault(m, {})[rec["seed"]] = v
    seeds = sorted({s for per in values[k_key].values() for s in per})
    fmt = lambda per: " / ".join(f"{per[s]:.1f}" if s in per else "-" for s in seeds)
    ms = lambda xs, sign="": f"{{:{sign}.1f}} ± {{:.1f}}".format(*mean_std(xs)).replace(" ± nan", "")
    sd = values[k_key].get("sdzero", {})
    names = " / ".join(map(str, seeds))
    print(f"| method | {k_key}, seeds {names} | {k_key}, mean | greedy, seeds {names} | greedy, mean "
          f"| SD-Zero minus it ({k_key}) | SD-Zero ahead on |")
    print("|---|---|---|---|---|---|---|")
    for m in [m for m in ROW_ORDER if m in values[k_key]]:
        a, g = values[k_key][m], values["greedy_accuracy"].get(m, {})
        lead = "| | |"
        if m != "sdzero":
            diffs = [sd[s] - a[s] for s in seeds if s in sd and s in a]
            lead = f"| {ms(diffs, '+')} | {sum(d > 0 for d in diffs)} of {len(diffs)} |" if diffs else "| | |"
        print(f"| {LABELS[m]} | {fmt(a)} | {ms(list(a.values()))} | {fmt(g)} | {ms(list(g.values()))} {lead}")


if __name__ == "__main__":
    main()
