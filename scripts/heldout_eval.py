"""Measure a run that was tuned on the validation split on the held-out split, once.

A `sdzero run --validation_size N --eval_split validation` folder evaluates base, SRT and SD-Zero on validation
questions only, so settings can be chosen without looking at the held-out set. After the choice is made (and
only then), this script evaluates the same three models on the held-out split with the run's own settings and
writes RUN_DIR/heldout/eval-{base,srt,sdzero}.json. The held-out questions are the same ones a run without a
validation split uses (the split takes them first). A file already written is kept, so the held-out set is
measured once per model; delete RUN_DIR/heldout to measure again.

    python scripts/heldout_eval.py outputs/ablate/pairs-8-seed0 outputs/ablate/pairs-8-seed1
    python scripts/heldout_eval.py --table-only outputs/ablate/pairs-8-seed*    # the table, no evaluation
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

MODELS = {"eval-base.json": None, "eval-srt.json": "srt/model", "eval-sdzero.json": "distill/model"}


def heldout_eval(run: Path) -> dict[str, dict]:
    from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig
    from sdzero.context import Context
    from sdzero.evaluate import EvalConfig, evaluate_model
    from sdzero.pipeline import RunConfig

    state = json.loads((run / "stages.json").read_text())
    if "eval-sdzero" not in state:
        raise SystemExit(f"{run}: the run has not finished (no eval-sdzero stage in stages.json)")
    settings = state["settings"]
    if settings.get("eval_split") != "validation":
        raise SystemExit(f"{run}: its own evaluations already used the held-out set (eval_split "
                         f"{settings.get('eval_split')!r}); see its report")
    pick = lambda cls: cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})  # noqa: E731
    mc, tc, gc, rc, cfg = (pick(c) for c in (ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, RunConfig))
    out, metrics = run / "heldout", {}
    out.mkdir(exist_ok=True)
    with Context(mc, tc, gc, rc) as ctx:
        for name, sub in MODELS.items():
            target = out / name
            if not target.is_file():
                model = mc.model if sub is None else str(run / sub)
                ec = EvalConfig(num_samples=cfg.eval_num_samples, revise=cfg.eval_revise, output=str(target))
                evaluate_model(ctx, model, ctx.questions("eval"), ec, target)
            metrics[name] = json.loads(target.read_text())["metrics"]
    return metrics


def table(runs: list[Path]) -> str:
    """Per run and model: held-out avg@k, greedy, pass@k, correction rate, fresh-resample rate on wrong drafts,
    right->right and mean response tokens; then the mean and sample standard deviation over the runs."""
    import statistics

    from sdzero.reports import results_table

    tables = {r: results_table(r / "heldout") for r in runs}
    if not any(tables.values()):
        raise SystemExit("no held-out evaluation on disk yet: run without --table-only first")
    k = next(m["samples_per_question"] for t in tables.values() for m in t.values())
    keys = [f"avg@{k}", "greedy_accuracy", f"pass@{k}", "correction_rate", "resample_accuracy_on_wrong",
            "right_to_right", "mean_response_tokens"]
    lines = ["| run | model | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r, t in tables.items():
        lines += [f"| {r.name} | {model} | " + " | ".join("-" if m.get(key) is None else f"{m[key]:.3f}"
                                                           for key in keys) + " |" for model, m in t.items()]
    if len(runs) > 1:
        for model in next(iter(tables.values())):
            cells = []
            for key in keys:
                vals = [t[model][key] for t in tables.values() if t.get(model, {}).get(key) is not None]
                sd = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
                cells.append(f"{statistics.mean(vals):.3f}{sd}" if vals else "-")
            lines.append(f"| **mean of {len(runs)}** | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+", help="finished `sdzero run` folders")
    ap.add_argument("--table-only", action="store_true", help="no evaluation: the table of what is on disk")
    args = ap.parse_args()
    runs = [Path(r) for r in args.run_dirs]
    if not args.table_only:
        for run in runs:
            heldout_eval(run)
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
