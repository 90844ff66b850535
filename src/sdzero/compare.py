"""`sdzero compare`: base, RFT, GRPO, SDFT, SRT and SD-Zero on the same questions at matched budgets.

Per seed:
  1. `sdzero run` (OUTPUT_DIR/seed-N/sdzero): base, SRT and SD-Zero, evaluated on the held-out set.
  2. The budget: SD-Zero's Phase-1 + Phase-2 generations of that seed (or `budget_generations`), so SD-Zero
     never spends more than a baseline (the paper gave the baselines 60K generations, SD-Zero 49K).
  3. RFT, GRPO and SDFT each start from the base model, train on the same training questions (the Phase-1
     and Phase-2 sets together) within that budget (`sdzero.budget`), and are evaluated on the same held-out
     questions with the same k, temperature and token cap.
Then a table in the shape of the paper's Table 1 (mean and spread over seeds) and accuracy-vs-generations
curves go to OUTPUT_DIR/report. A method already finished for a seed is not redone when compare is
started again. Held-out evaluation is not charged to any budget.

Simplifications: one process (the baselines' sampling is not sharded); evaluations skip generate-then-revise
(Table 1 is accuracy; `sdzero run`'s own evaluations keep it for base / SRT / SD-Zero).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdzero.runfolder import history_totals, read_history, reward_curve
from sdzero.errors import SDZeroError, require_at_least
from sdzero.files import atomic_write_json, atomic_write_text, check_output_dir

BASELINES = ("rft", "grpo", "sdft")
ROW_ORDER = ("base", "rft", "grpo", "sdft", "srt", "sdzero")  # the paper's Table 1 order
LABELS = {"base": "Base", "rft": "RFT", "grpo": "GRPO", "sdft": "SDFT", "srt": "SRT", "sdzero": "SD-Zero"}


@dataclass
class CompareConfig:
    seeds: str = field(default="0,1,2", metadata={"help": "Comma-separated seeds (sampling and training)."})
    methods: str = field(default="rft,grpo,sdft", metadata={"help": "Baselines to run besides base / SRT / SD-Zero."})
    budget_generations: int | None = field(default=None, metadata={
        "help": "Generations each baseline may sample; default: SD-Zero's Phase-1 + Phase-2 generations."})
    rft_samples_per_question: int = field(default=4, metadata={"help": "RFT: k samples per question."})
    rft_learning_rate: float = field(default=1e-5, metadata={"help": "RFT learning rate (SRT's)."})
    rft_num_train_epochs: float = field(default=2.0, metadata={"help": "RFT epochs (SRT's)."})
    grpo_num_generations: int = field(default=4, metadata={"help": "GRPO group size."})
    grpo_questions_per_step: int = field(default=16, metadata={"help": "GRPO questions per step."})
    grpo_learning_rate: float = field(default=5e-6, metadata={"help": "GRPO learning rate."})
    sdft_questions_per_step: int = field(default=16, metadata={"help": "SDFT questions per step (Phase 2's)."})
    sdft_learning_rate: float = field(default=5e-6, metadata={"help": "SDFT learning rate (Phase 2's)."})
    sdft_teacher: str = field(default="frozen", metadata={"help": "SDFT teacher: frozen, sync or ema."})

    def seed_list(self) -> list[int]:
        try:
            seeds = [int(s) for s in str(self.seeds).split(",") if s.strip()]
        except ValueError as e:
            raise SDZeroError(f"seeds must be comma-separated integers, not {self.seeds!r}") from e
        if not seeds:
            raise SDZeroError("compare needs at least one seed")
        return seeds

    def validate(self) -> None:
        """Every baseline's settings, checked before seed 0's SD-Zero run rather than after it."""
        self.seed_list()
        self.method_list()
        require_at_least(self, 1, "rft_samples_per_question", "grpo_questions_per_step", "sdft_questions_per_step")
        if self.grpo_num_generations < 2:
            raise SDZeroError("grpo_num_generations must be at least 2: an advantage is relative to the group")
        if not self.rft_num_train_epochs > 0:
            raise SDZeroError(f"rft_num_train_epochs must be above 0, not {self.rft_num_train_epochs}")
        if self.sdft_teacher not in ("frozen", "sync", "ema"):
            raise SDZeroError(f"sdft_teacher must be frozen, sync or ema, not {self.sdft_teacher!r}")
        if self.budget_generations is not None and self.budget_generations < 1:
            raise SDZeroError(f"budget_generations must be at least 1, not {self.budget_generations}")

    def method_list(self) -> list[str]:
        methods = [m.strip().lower() for m in self.methods.split(",") if m.strip()]
        unknown = sorted(set(methods) - set(BASELINES))
        if unknown:
            raise SDZeroError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
        return methods


def run_compare(mc: Any, tc: Any, gc: Any, rc: Any, run_cfg: Any, cfg: CompareConfig) -> dict[str, Any]:
    from accelerate import PartialState

    from sdzero.pipeline import run_pipeline
    from sdzero.tasks import load_task

    if PartialState().num_processes > 1:
        raise SDZeroError("sdzero compare runs in one process; launch it without accelerate launch")
    seeds, methods = cfg.seed_list(), cfg.method_list()
    out = Path(run_cfg.output_dir)  # compare's root: one folder per seed, and report/
    check_output_dir(out)  # a file, /proc or a read-only place fails here, before any work
    for seed in seeds:
        folder = out / f"seed-{seed}"
        print(f"[compare] seed {seed}: base / SRT / SD-Zero (sdzero run)", flush=True)
        state = run_pipeline(mc, tc, replace(gc, seed=seed), rc, replace(run_cfg, output_dir=str(folder / "sdzero"),
                                                                                stop_after="report"))
        spent = state["collect"]["generations"] + state["distill"]["generations"]
        budget = cfg.budget_generations if cfg.budget_generations is not None else spent
        if budget < spent:
            print(f"[compare] note: budget_generations={budget} is below SD-Zero's {spent}", flush=True)
        task = load_task(tc)
        try:
            splits = task.split(tc.split_sizes("phase2"))
            train_questions = splits["phase1"] + splits["phase2"]
            for method in methods:
                run_baseline(method, folder, seed, budget, train_questions, splits["eval"], task, mc, tc, gc, rc,
                             run_cfg, cfg)
        finally:
            task.close()
    return write_compare_report(out, seeds, methods)


def seeds_in(folder: Path, seeds: str | None = None) -> list[int]:
    """The seeds asked for (comma-separated), else every seed-N folder in a compare (or archive) folder."""
    if seeds:
        return CompareConfig(seeds=seeds).seed_list()
    return sorted(int(p.name.split("-", 1)[1]) for p in folder.glob("seed-*") if p.is_dir())


def _state(folder: Path) -> dict[str, Any]:
    f = folder / "baselines.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def run_baseline(method: str, folder: Path, seed: int, budget_generations: int, train_questions: list, eval_questions:
                 list, task: Any, mc: Any, tc: Any, gc: Any, rc: Any, run_cfg: Any, cfg: CompareConfig) -> None:
    """Train one baseline from the base model within the budget, evaluate it, record it in baselines.json."""
    from sdzero.budget import GenerationBudget
    from sdzero.evaluate import EvalConfig, evaluate_model
    from sdzero.generation import SamplingParams

    state = _state(folder)
    if method in state:
        print(f"[compare] seed {seed}: {method} done before, skipped", flush=True)
        return
    print(f"[compare] seed {seed}: {method} within {budget_generations} generations", flush=True)
    gcs = replace(gc, seed=seed)
    sampling = SamplingParams(gc.max_new_tokens, gc.temperature, gc.top_p)
    budget = GenerationBudget(budget_generations)
    target = folder / method
    t0 = time.perf_counter()
    curve: list[dict[str, Any]] = []
    if method == "rft":
        from sdzero.baselines.rft import RFTConfig, run_rft

        rcfg = RFTConfig(output_dir=str(target), samples_per_question=cfg.rft_samples_per_question,
                         learning_rate=cfg.rft_learning_rate, num_train_epochs=cfg.rft_num_train_epochs,
                         max_length=run_cfg.srt_max_length, drop_truncated=run_cfg.collect_drop_truncated)
        summary = run_rft(mc.model, task, train_questions, rcfg, sampling, budget, tc.system_prompt, gc.backend,
                          gc.batch_size, seed, mc.dtype)
        curve = [{"generations": summary["generations"], "train_accuracy": summary["sample_accuracy"]}]
    elif method == "grpo":
        from sdzero.baselines.grpo import GRPOBaselineConfig, run_grpo

        per_step = cfg.grpo_questions_per_step * cfg.grpo_num_generations
        gcfg = GRPOBaselineConfig(output_dir=str(target), num_generations=cfg.grpo_num_generations,
                                  questions_per_step=cfg.grpo_questions_per_step,
                                  micro_batch_size=math.gcd(16, per_step), learning_rate=cfg.grpo_learning_rate,
                                  mask_truncated_completions=run_cfg.distill_skip_truncated)
        summary = run_grpo(mc.model, task, train_questions, gcfg, sampling, budget, tc.system_prompt, gc.batch_size,
                           seed)
        curve = [{"generations": (i + 1) * per_step, "train_accuracy": h["reward"]}
                 for i, h in enumerate(summary["history"])]
    elif method == "sdft":
        from sdzero.baselines.sdft import SDFTConfig, run_sdft

        steps = budget_generations // cfg.sdft_questions_per_step
        if steps < 1:
            raise SDZeroError(f"a budget of {budget_generations} generations is less than one SDFT step")
        scfg = SDFTConfig(output_dir=str(target), max_steps=steps, questions_per_step=cfg.sdft_questions_per_step,
                          learning_rate=cfg.sdft_learning_rate, warmup_steps=run_cfg.distill_warmup_steps,
                          divergence=run_cfg.distill_divergence, divergence_kind=run_cfg.distill_divergence_kind,
                          teacher=cfg.sdft_teacher, skip_truncated=run_cfg.distill_skip_truncated,
                          skip_first_tokens=run_cfg.distill_skip_first_tokens,
                          max_teacher_tokens=run_cfg.distill_max_teacher_tokens)
        run_sdft(mc.model, task, train_questions, scfg, sampling, tc.system_prompt, gc.backend, gc.batch_size, seed)
        history = read_history(target)
        totals = history_totals(history)
        budget.charge(totals["responses"], totals["sampled_tokens"], "sdft rollouts")
        curve = reward_curve(history)
    else:
        raise SDZeroError(f"unknown method {method!r}")
    train_s = time.perf_counter() - t0
    ec = EvalConfig(num_samples=run_cfg.eval_num_samples, revise=False)
    metrics = evaluate_model(str(target / "model"), task, eval_questions, mc, tc, gcs, rc, ec,
                             folder / f"eval-{method}.json")["metrics"]
    state = _state(folder)
    state[method] = {"generations": budget.generations, "sampled_tokens": budget.sampled_tokens,
                     "budget": budget_generations, "train_seconds": round(train_s, 1),
                     "seconds": round(time.perf_counter() - t0, 1), "curve": curve}
    atomic_write_json(folder / "baselines.json", state)
    print(f"[compare] seed {seed}: {method} avg@{ec.num_samples} {metrics[f'avg@{ec.num_samples}']:.3f}, "
          f"{budget.generations} generations", flush=True)


# --- the report ---------------------------------------------------------------------------------------------

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
        stages = json.loads((run_dir / "stages.json").read_text()) if (run_dir / "stages.json").is_file() else {}
        p1 = stages.get("collect", {}).get("generations", 0)
        p2 = stages.get("distill", {}).get("generations", 0)
        t1 = stages.get("collect", {}).get("sampled_tokens", 0)
        t2 = stages.get("distill", {}).get("sampled_tokens", 0)
        files = {"base": (run_dir / "eval-base.json", 0, 0, 0.0),
                 "srt": (run_dir / "eval-srt.json", p1, t1,
                         sum(stages.get(s, {}).get("seconds", 0) for s in ("collect", "srt"))),
                 "sdzero": (run_dir / "eval-sdzero.json", p1 + p2, t1 + t2,
                            sum(stages.get(s, {}).get("seconds", 0) for s in ("collect", "srt", "distill")))}
        base_state = _state(folder)
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[compare] matplotlib is not installed: no plots (pip install 'sdzero[plots]')", flush=True)
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

