"""The held-out table of several `sdzero run` folders (one per seed), with the mean and sample standard
deviation over them.

    python scripts/summarize_runs.py outputs/run-seed0 outputs/run-seed1
"""

import argparse
import json
from pathlib import Path

from sdzero.reports import mean_std, results_table
from sdzero.runfolder import STAGES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    runs = [Path(r) for r in ap.parse_args().runs]
    tables = {r: results_table(r) for r in runs}
    k = next(m["samples_per_question"] for t in tables.values() for m in t.values())
    keys = [f"avg@{k}", "greedy_accuracy", f"pass@{k}", "correction_rate", "resample_accuracy_on_wrong",
            "right_to_right", "mean_response_tokens"]
    print("| run | model | " + " | ".join(keys) + " | wall time |")
    print("|---|---|" + "---|" * (len(keys) + 1))
    for r, table in tables.items():
        state = json.loads((r / "stages.json").read_text())
        minutes = sum(v["seconds"] for n, v in state.items() if n in STAGES and n != "report") / 60
        for i, (model, m) in enumerate(table.items()):
            print(f"| {r.name} | {model} | " + " | ".join(f"{m[key]:.3f}" for key in keys)
                  + (f" | {minutes:.1f} min |" if i == 0 else " | |"))
    for model in next(iter(tables.values())):
        vals = [t[model] for t in tables.values() if model in t]
        stats = [mean_std([m[key] for m in vals]) for key in keys]
        print(f"| mean of {len(vals)} | {model} | " + " | ".join(f"{mean:.3f}" for mean, _ in stats) + " | |")
        print(f"| sd of {len(vals)} | {model} | " + " | ".join(f"{sd:.3f}" for _, sd in stats) + " | |")


if __name__ == "__main__":
    main()
