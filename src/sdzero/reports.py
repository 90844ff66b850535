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
from sdzero.logs import info
from sdzero.runfolder import STAGES, format_history, read_baselines, read_history, read_stages, reward_curve

# the stages of `sdzero run` whose evaluations the run report shows, and their labels
MODELS = {"base": "eval-base", "SRT": "eval-srt", "SD-Zero": "eval-sdzero"}
ROW_ORDER = ("base", "rft", "grpo", "sdft", "srt", "sdzero")  # the paper's Table 1 order
LABELS = {"base": "Base", "rft": "RFT", "grpo": "GRPO", "sdft": "SDFT", "srt": "SRT", "sdzero": "SD-Zero"}


def pyplot(who: str) -> Any:
    """matplotlib's pyplot on the file backend, or None (with a note) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        info(f"[{who}] matplotlib is not installed: no plots (pip install 'sdzero[plots]')")
        return None
    return plt


# --- sdzero run ---------------------------------------------------------------------------------------------

ROWS = [("avg@{k}", "avg@{k}"), ("greedy accuracy", "greedy_accuracy"), ("pass@{k}", "pass@{k}"),
        ("correction rate (wrong -> right)", "correction_rate"), ("right -> right", "right_to_right"),
        ("mean response tokens", "mean_response_tokens"), ("share cut at the token cap", "truncated_fraction"),
        ("share revising inline (a control phrase in the response)", "inline_revision_share"),
        ("accuracy of responses revising inline", "accuracy_with_inline_revision"),
        ("accuracy of the other responses", "accuracy_without_inline_revision")]


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


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of an accuracy p measured on n questions (Wilson score; k samples per question are not
    independent, so n counts questions: a conservative width)."""
    if n < 1:
        return math.nan, math.nan
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return center - half, center + half


def verdicts(table: dict[str, dict[str, Any]], k: int) -> list[str]:
    """Plain sentences where SD-Zero ends below SRT or the base model (avg@k), or above both."""
    key = f"avg@{k}"
    if "SD-Zero" not in table:
        return []
    sd = table["SD-Zero"][key]
    below = [f"{name} by {(table[name][key] - sd) * 100:.1f} points" for name in ("SRT", "base")
             if name in table and table[name][key] > sd]
    if below:
        return [f"SD-Zero is below {' and below '.join(below)} ({key})."]
    others = [n for n in ("SRT", "base") if n in table]
    return [f"SD-Zero is at or above {' and '.join(others)} ({key})."] if others else []


def smooth(values: list[float], window: int = 5) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def _accuracy_chart(table: dict[str, dict[str, Any]], k: int, folder: Path) -> Path | None:
    """avg@k per model with its 95% interval over the questions."""
    plt = pyplot("run") if table else None
    if plt is None:
        return None
    names = list(table)
    acc = [table[n][f"avg@{k}"] for n in names]
    lows, highs = zip(*(wilson_interval(a, table[n]["questions"]) for a, n in zip(acc, names)))
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.bar(names, acc, color=[f"C{i}" for i in range(len(names))], alpha=0.8)
    ax.errorbar(names, acc, yerr=[[a - lo for a, lo in zip(acc, lows)], [hi - a for a, hi in zip(acc, highs)]],
                fmt="none", ecolor="black", capsize=4)
    ax.set(ylabel=f"avg@{k} (95% interval over {table[names[0]]['questions']} questions)", ylim=(0, 1))
    fig.tight_layout()
    path = folder / "accuracy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    lines += [f"**{v}**" for v in verdicts(table, k)] + [""]
    hist = read_history(out / "distill")
    if hist:
        lines += ["```", format_history(hist), "```", ""]
    plots = [p for p in (_accuracy_chart(table, k, report),) if p] + _plots(hist, report)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    heatmaps = sorted((out / "distill" / "selfloc").glob("step-*.html")) if (out / "distill").is_dir() else []
    if heatmaps:
        for h in (heatmaps[0], heatmaps[-1]):
            shutil.copy(h, report / f"selfloc-{h.name}")
        lines += ["", f"Self-localization heat-maps: selfloc-{heatmaps[0].name} (first Phase-2 step), "
                  f"selfloc-{heatmaps[-1].name} (last)."]
    atomic_write_text(report / "results.md", "\n".join(lines) + "\n")
    atomic_write_json(report / "results.json", {"models": table, "stages": state})
    info("\n".join(lines[:len(ROWS) + 6] + [f"  {v}" for v in verdicts(table, k)]))
    return {"generations": 0, "sampled_tokens": 0}


def _plots(hist: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Phase-2 curves against the step, raw points faint and a 5-step moving average over them: reward and
    response length; the training divergence (the loss) on correct and on wrong responses."""
    plt = pyplot("run") if hist else None
    if plt is None:
        return []
    from matplotlib.ticker import MaxNLocator

    def curve(ax: Any, points: list[tuple[int, float]], color: str, label: str | None = None) -> None:
        xs, ys = [x for x, _ in points], [y for _, y in points]
        ax.plot(xs, ys, ".", color=color, alpha=0.35)
        ax.plot(xs, smooth(ys), "-", color=color, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Phase-2 step")

    made = []
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    curve(ax[0], [(h["step"], h["reward"]) for h in hist], "C0")
    ax[0].set(ylabel="reward (accuracy on the step's questions)", ylim=(0, 1))
    curve(ax[1], [(h["step"], h["response_length"]) for h in hist], "C1")
    ax[1].set(ylabel="mean response tokens")
    fig.tight_layout()
    made.append(folder / "phase2-reward-length.png")
    fig.savefig(made[-1], dpi=100)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label, color in (("kl_correct", "correct responses", "C2"), ("kl_wrong", "wrong responses", "C3")):
        points = [(h["step"], h[key]) for h in hist if h.get(key) is not None]
        if points:
            curve(ax, points, color, label)
    ax.set(ylabel="training divergence per token\n(the Phase-2 loss)")
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
        behind = [f"{LABELS[m]} by {-d * 100:.1f} points" for m in ("srt", "base") if m in summary
                  for d in [summary["sdzero"][f"avg@{k}"]["mean"] - summary[m][f"avg@{k}"]["mean"]] if d < 0]
        if behind:
            lines += ["", f"**SD-Zero is below {' and below '.join(behind)} (held-out avg@{k}, mean over seeds).**"]
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    plot = _curves(rows, k, report)
    if plot:
        lines += ["", f"![accuracy vs generations]({plot.name})"]
    atomic_write_text(report / "results.md", "\n".join(lines) + "\n")
    atomic_write_json(report / "results.json", {"methods": summary, "per_seed": rows})
    info("\n".join(lines))
    return summary


def t95(df: int) -> float:
    """Student t's 0.975 quantile: the table for 1-9 degrees of freedom, then a Cornish-Fisher expansion
    around the normal's 1.96 (within 0.005 from 10 on)."""
    table = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262)
    if df < 10:
        return table[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def _curves(rows: dict[str, Any], k: int, folder: Path) -> Path | None:
    """Left: held-out avg@k against training generations spent (mean over seeds, bars = spread). Right: the
    accuracy of each method's own training samples against generations (on-policy methods: per step)."""
    plt = pyplot("compare")
    if plt is None:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for i, method in enumerate(m for m in ROW_ORDER if m in rows):
        seeds = rows[method]["seeds"].values()
        x = mean_std([v["train_generations"] for v in seeds])[0]
        y, s = mean_std([v[f"avg@{k}"] for v in seeds])
        half = 0.0 if math.isnan(s) else t95(len(seeds) - 1) * s / math.sqrt(len(seeds))
        ax[0].errorbar([x], [y], yerr=[half], fmt="o", capsize=3, color=f"C{i}", label=LABELS[method])
        curves = [v["curve"] for v in seeds if v.get("curve")]
        if curves:
            n = min(len(c) for c in curves)
            ax[1].plot([curves[0][j]["generations"] for j in range(n)],
                       [sum(c[j]["train_accuracy"] for c in curves) / len(curves) for j in range(n)],
                       marker=".", color=f"C{i}", label=LABELS[method])
    ax[0].set(xlabel="training generations", ylabel=f"held-out avg@{k} (bars: 95% interval over seeds)",
              title="held-out accuracy vs budget")
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
