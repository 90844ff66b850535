"""The reports: `sdzero run`'s (OUTPUT_DIR/report: a table per model, stage costs, Phase-2 curves, heat-maps)
and `sdzero compare`'s (a Table-1-shaped table over seeds, accuracy against generations). Plots need
matplotlib (`pip install 'sdzero[plots]'`); without it the reports are written without them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, atomic_write_text
from sdzero.runfolder import STAGES, format_history, read_baselines, read_history, read_stages, reward_curve

# the stages of `sdzero run` whose evaluations the run report shows, and their labels
MODELS = {"base": "eval-base", "SRT": "eval-srt", "SD-Zero": "eval-sdzero"}
ROW_ORDER = ("base", "rft", "grpo", "sdft", "srt", "sdzero")  # the paper's Table 1 order
LABELS = {"base": "Base", "rft": "RFT", "grpo": "GRPO", "sdft": "SDFT", "srt": "SRT", "sdzero": "SD-Zero"}


def _pyplot(who: str) -> Any:
    """matplotlib's pyplot on the file backend, or None (with a note) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"[{who}] matplotlib is not installed: no plots (pip install 'sdzero[plots]')", flush=True)
        return None
    return plt


# --- sdzero run ---------------------------------------------------------------------------------------------

ROWS = [("avg@{k}", "avg@{k}"), ("greedy accuracy", "greedy_accuracy"), ("pass@{k}", "pass@{k}"),
        ("correction rate (wrong -> right)", "correction_rate"), ("right -> right", "right_to_right"),
        ("mean response tokens", "mean_response_tokens"), ("share cut at the token cap", "truncated_fraction")]


def results_table(out: Path) -> dict[str, dict[str, Any]]:
    """{model: metrics} from the evaluation files that exist."""
    table = {}
    for label, stage in MODELS.items():
        f = out / f"{stage}.json"
        if f.is_file():
            table[label] = json.loads(f.read_text())["metrics"]
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) <= 1 else f"{v:.1f}"  # rates to 3 decimals, token counts to 1
    return str(v)


def write_run_report(out: Path, state: dict[str, Any], task_name: str, model_name: str) -> dict[str, Any]:
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    table = results_table(out)
    k = next((m["samples_per_question"] for m in table.values()), 1)
    split = "validation" if state.get("settings", {}).get("eval_split") == "validation" else "Held-out"
    lines = [f"# sdzero run: {model_name} on {task_name}", "",
             f"{split} questions: {next((m['questions'] for m in table.values()), 0)}; k = {k}.", "",
             "| metric | " + " | ".join(table) + " |", "|---|" + "---|" * len(table)]
    for name, key in ROWS:
        lines.append(f"| {name.format(k=k)} | " + " | ".join(_fmt(m.get(key.format(k=k))) for m in table.values())
                     + " |")
    lines += ["", "| stage | responses sampled | tokens sampled | wall time |", "|---|---|---|---|"]
    for name in STAGES[:-1]:
        s = state.get(name)
        if s:
            lines.append(f"| {name} | {s.get('generations', 0)} | {s.get('sampled_tokens', 0)} | "
                         f"{s['seconds'] / 60:.1f} min |")
    total = sum(s["seconds"] for n, s in state.items() if n in STAGES and n != "report")
    lines += ["", f"Total wall time (stages above): {total / 60:.1f} min.", ""]
    hist = read_history(out / "distill")
    if hist:
        lines += ["```", format_history(hist), "```", ""]
    plots = _plots(hist, report)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    heatmaps = sorted((out / "distill" / "selfloc").glob("step-*.html")) if (out / "distill").is_dir() else []
    if heatmaps:
        for h in (heatmaps[0], heatmaps[-1]):
            shutil.copy(h, report / f"selfloc-{h.name}")
        lines += ["", f"Self-localization heat-maps: selfloc-{heatmaps[0].name} (first Phase-2 step), "
                  f"selfloc-{heatmaps[-1].name} (last)."]
    atomic_write_text(report / "results.md", "\n".join(lines) + "\n")
    atomic_write_json(report / "results.json", {"models": table, "stages": state})
    print("\n".join(lines[:len(ROWS) + 6]))
    return {"generations": 0, "sampled_tokens": 0}


def _plots(hist: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Phase-2 curves vs step: reward and response length; KL on correct vs wrong responses."""
    if not hist:
        return []
    plt = _pyplot("run")
    if plt is None:
        return []
    steps = [h["step"] for h in hist]
    made = []
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(steps, [h["reward"] for h in hist], marker=".")
    ax[0].set(xlabel="Phase-2 step", ylabel="reward (accuracy on the step's questions)", ylim=(0, 1))
    ax[1].plot(steps, [h["response_length"] for h in hist], marker=".", color="C1")
    ax[1].set(xlabel="Phase-2 step", ylabel="mean response tokens")
    fig.tight_layout()
    made.append(folder / "phase2-reward-length.png")
    fig.savefig(made[-1], dpi=100)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("kl_correct", "correct responses"), ("kl_wrong", "wrong responses")):
        pts = [(h["step"], h[key]) for h in hist if h.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
    ax.set(xlabel="Phase-2 step", ylabel="mean per-token divergence")
    ax.legend()
    fig.tight_layout()
    made.append(folder / "phase2-kl.png")
    fig.savefig(made[-1], dpi=100)
    plt.close("all")
    return made


# --- sdzero compare -----------------------------------------------------------------------------------------

def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan where there are too few values)."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, math.nan
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def collect_rows(out: Path, seeds: list[int], methods: list[str]) -> dict[str, dict[str, Any]]:
    """{method: {"seeds": {seed: metrics + spend}}} for every method with results."""
    rows: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        folder = out / f"seed-{seed}"
        run_dir = folder / "sdzero"
        stages = read_stages(run_dir)
        p1 = stages.get("collect", {}).get("generations", 0)
        p2 = stages.get("distill", {}).get("generations", 0)
        t1 = stages.get("collect", {}).get("sampled_tokens", 0)
        t2 = stages.get("distill", {}).get("sampled_tokens", 0)
        files = {"base": (run_dir / "eval-base.json", 0, 0, 0.0),
                 "srt": (run_dir / "eval-srt.json", p1, t1,
                         sum(stages.get(s, {}).get("seconds", 0) for s in ("collect", "srt"))),
                 "sdzero": (run_dir / "eval-sdzero.json", p1 + p2, t1 + t2,
                            sum(stages.get(s, {}).get("seconds", 0) for s in ("collect", "srt", "distill")))}
        base_state = read_baselines(folder)
        hist = read_history(run_dir / "distill")
        sdzero_curve = reward_curve(hist, start=p1, per_step=p2 // len(hist) if hist else 0)
        for m in methods:
            if m in base_state:
                s = base_state[m]
                files[m] = (folder / f"eval-{m}.json", s["generations"], s["sampled_tokens"], s["train_seconds"])
        for method, (f, gens, tokens, seconds) in files.items():
            if not f.is_file():
                continue
            metrics = json.loads(f.read_text())["metrics"]
            rows.setdefault(method, {"seeds": {}})["seeds"][seed] = {
                **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                "train_generations": gens, "train_sampled_tokens": tokens, "train_seconds": seconds,
                "eval_seconds": metrics.get("wall_seconds", 0.0),
                "curve": sdzero_curve if method == "sdzero" else base_state.get(method, {}).get("curve", [])}
    return rows


def write_compare_report(out: Path, seeds: list[int], methods: list[str]) -> dict[str, Any]:
    rows = collect_rows(out, seeds, methods)
    if not rows:
        raise SDZeroError(f"no results under {out} yet")
    k = next(iter(next(iter(rows.values()))["seeds"].values()))["samples_per_question"]
    keys = [(f"avg@{k}", f"held-out avg@{k}"), ("greedy_accuracy", "greedy accuracy"),
            (f"pass@{k}", f"pass@{k}"), ("mean_response_tokens", "mean response tokens")]
    lines = [f"# sdzero compare: seeds {', '.join(map(str, seeds))}", "",
             "Mean ± standard deviation over seeds (sample std; one seed: no spread). Training generations: "
             "responses sampled for training (held-out evaluation not counted). Minutes: wall time of the training "
             "stages, and of the held-out evaluation (the run's own evaluations include the revision pass).", "",
             "| method | " + " | ".join(label for _, label in keys) + " | training generations | training tokens "
             "| training min | eval min |", "|---|" + "---|" * (len(keys) + 4)]
    summary: dict[str, Any] = {}
    for method in [m for m in ROW_ORDER if m in rows]:
        per_seed = rows[method]["seeds"]
        cells, entry = [], {}
        for key, _ in keys:
            m, s = mean_std([v[key] for v in per_seed.values() if v.get(key) is not None])
            entry[key] = {"mean": m, "std": s, "per_seed": {str(sd): v.get(key) for sd, v in per_seed.items()}}
            scale = 1 if key == "mean_response_tokens" else 100
            cells.append(f"{m * scale:.1f}" + ("" if math.isnan(s) else f" ± {s * scale:.1f}"))
        gens = mean_std([v["train_generations"] for v in per_seed.values()])[0]
        toks = mean_std([v["train_sampled_tokens"] for v in per_seed.values()])[0]
        mins = mean_std([v["train_seconds"] / 60 for v in per_seed.values()])[0]
        eval_mins = mean_std([v["eval_seconds"] / 60 for v in per_seed.values()])[0]
        entry.update({"train_generations": gens, "train_sampled_tokens": toks, "train_minutes": mins,
                      "eval_minutes": eval_mins, "seeds": sorted(per_seed)})
        summary[method] = entry
        seeds_note = f"{len(per_seed)} seed" + ("" if len(per_seed) == 1 else "s")
        lines.append(f"| {LABELS[method]} ({seeds_note}) | " + " | ".join(cells)
                     + f" | {gens:.0f} | {toks:.0f} | {mins:.1f} | {eval_mins:.1f} |")
    lines += ["", "Accuracies in points (x100). Per-seed values are in results.json."]
    if "sdzero" in summary:
        lines += ["", f"SD-Zero minus each method, held-out avg@{k} (points, mean over seeds):"]
        for method in [m for m in ROW_ORDER if m in summary and m != "sdzero"]:
            diff = summary["sdzero"][f"avg@{k}"]["mean"] - summary[method][f"avg@{k}"]["mean"]
            lines.append(f"- {LABELS[method]}: {diff * 100:+.1f}")
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    plot = _curves(rows, k, report)
    if plot:
        lines += ["", f"![accuracy vs generations]({plot.name})"]
    atomic_write_text(report / "results.md", "\n".join(lines) + "\n")
    atomic_write_json(report / "results.json", {"methods": summary, "per_seed": rows})
    print("\n".join(lines))
    return summary


def _curves(rows: dict[str, Any], k: int, folder: Path) -> Path | None:
    """Left: held-out avg@k against training generations spent (mean over seeds, bars = spread). Right: the
    accuracy of each method's own training samples against generations (on-policy methods: per step)."""
    plt = _pyplot("compare")
    if plt is None:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for i, method in enumerate(m for m in ROW_ORDER if m in rows):
        seeds = rows[method]["seeds"].values()
        x = mean_std([v["train_generations"] for v in seeds])[0]
        y, s = mean_std([v[f"avg@{k}"] for v in seeds])
        ax[0].errorbar([x], [y], yerr=[0 if math.isnan(s) else s], fmt="o", capsize=3, color=f"C{i}",
                       label=LABELS[method])
        curves = [v["curve"] for v in seeds if v.get("curve")]
        if curves:
            n = min(len(c) for c in curves)
            ax[1].plot([curves[0][j]["generations"] for j in range(n)],
                       [sum(c[j]["train_accuracy"] for c in curves) / len(curves) for j in range(n)],
                       marker=".", color=f"C{i}", label=LABELS[method])
    ax[0].set(xlabel="training generations", ylabel=f"held-out avg@{k}", title="held-out accuracy vs budget")
    ax[0].legend(fontsize=8)
    ax[1].set(xlabel="training generations", ylabel="accuracy of its own training samples",
              title="training-sample accuracy")
    if ax[1].has_data():
        ax[1].legend(fontsize=8)
    fig.tight_layout()
    path = folder / "accuracy-vs-generations.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
