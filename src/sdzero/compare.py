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

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdzero.errors import SDZeroError, require_at_least
from sdzero.files import check_output_dir
from sdzero.logs import info, log_file
from sdzero.runfolder import drop_checkpoints, read_baselines, write_baselines



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
    eval_suite: str | None = field(default=None, metadata={
        "help": "Also evaluate every method's model on a benchmark suite (`sdzero eval --suite`): paper-math, "
                "paper-code, offline; a table per method with the average, in the paper's Table 1 shape."})
    eval_benchmark_paths: str | None = field(default=None, metadata={
        "help": "With --eval_suite: NAME=PATH,... local files for benchmarks."})
    eval_suite_size: int | None = field(default=None, metadata={
        "help": "With --eval_suite: at most N questions per benchmark."})

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
        if self.eval_suite is not None:
            from sdzero.suites import SUITES

            if self.eval_suite not in SUITES:
                raise SDZeroError(f"unknown eval_suite {self.eval_suite!r}; choose from {', '.join(SUITES)}")
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


def _module(name: str) -> Any:
    import importlib

    return lambda: importlib.import_module(name)


# The baselines: each module has a Config and `train(ctx, questions, budget, config) -> curve`, charged to the
# budget it is given. Imported when used (GRPO pulls in TRL's trainer).
BASELINES = {"rft": _module("sdzero.baselines.rft"), "grpo": _module("sdzero.baselines.grpo"),
             "sdft": _module("sdzero.baselines.sdft")}


def run_compare(mc: Any, tc: Any, gc: Any, rc: Any, run_cfg: Any, cfg: CompareConfig) -> dict[str, Any]:
    from accelerate import PartialState

    from sdzero.context import Context
    from sdzero.pipeline import run_pipeline

    if PartialState().num_processes > 1:
        raise SDZeroError("sdzero compare runs in one process; launch it without accelerate launch")
    seeds, methods = cfg.seed_list(), cfg.method_list()
    out = Path(run_cfg.output_dir)  # compare's root: one folder per seed, and report/
    check_output_dir(out)  # a file, /proc or a read-only place fails here, before any work
    with log_file(out):
        for seed in seeds:
            folder = out / f"seed-{seed}"
            info(f"[compare] seed {seed}: base / SRT / SD-Zero (sdzero run)")
            run_cfg_seed = replace(run_cfg, output_dir=str(folder / "sdzero"), stop_after="report")
            # A changed setting is refused: the baselines already run for this seed were matched to this run.
            state = run_pipeline(mc, tc, replace(gc, seed=seed), rc, run_cfg_seed, rerun_stale=False)
            spent = state["collect"]["generations"] + state["distill"]["generations"]
            budget = cfg.budget_generations if cfg.budget_generations is not None else spent
            if budget < spent:
                info(f"[compare] note: budget_generations={budget} is below SD-Zero's {spent}")
            with Context(mc, tc, gc, rc).with_seed(seed) as ctx:
                train_questions = ctx.questions("phase1") + ctx.questions("phase2")
                for method in methods:
                    run_baseline(ctx, method, folder, budget, train_questions, ctx.questions("eval"), run_cfg, cfg)
        from sdzero.reports import write_compare_report

        summary = write_compare_report(out, seeds, methods)
        if cfg.eval_suite:
            suite_tables(out, seeds, methods, Context(mc, tc, gc, rc), run_cfg, cfg)
        return summary


# Where each method's model lives in a seed's folder.
MODEL_DIRS = {"base": None, "srt": "sdzero/srt/model", "sdzero": "sdzero/distill/model", "rft": "rft/model",
              "grpo": "grpo/model", "sdft": "sdft/model"}


def suite_tables(out: Path, seeds: list[int], methods: list[str], ctx: Any, run_cfg: Any,
                 cfg: CompareConfig) -> str:
    """Every method's model of every seed on cfg.eval_suite (a finished table is not redone); one table,
    method x benchmark, mean over seeds, with the average: report/suite.md and .json."""
    import json

    from sdzero.evaluate import EvalConfig
    from sdzero.files import atomic_write_json, atomic_write_text
    from sdzero.reports import LABELS, ROW_ORDER
    from sdzero.suites import run_suite

    ec = EvalConfig(num_samples=run_cfg.eval_num_samples, revise=False, suite=cfg.eval_suite,
                    benchmark_paths=cfg.eval_benchmark_paths, suite_size=cfg.eval_suite_size)
    per_method: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for method in [m for m in ROW_ORDER if m in ("base", "srt", "sdzero", *methods)]:
            sub = MODEL_DIRS[method]
            model = ctx.model_config.model if sub is None else str(out / f"seed-{seed}" / sub)
            folder = out / f"seed-{seed}" / f"suite-{cfg.eval_suite}" / method
            if not (folder / "table.json").is_file():
                info(f"[compare] seed {seed}: {method} on the {cfg.eval_suite} suite")
                run_suite(ctx.with_seed(seed), ec, model, folder)
            per_method.setdefault(method, []).append(json.loads((folder / "table.json").read_text()))
    names = list(per_method[next(iter(per_method))][0]["benchmarks"])
    lines = [f"# {cfg.eval_suite}: avg@{ec.num_samples} (points), mean over seeds {', '.join(map(str, seeds))}", "",
             "| method | " + " | ".join(names) + " | Avg. |", "|---|" + "---|" * (len(names) + 1)]
    summary = {}
    for method, tables in per_method.items():
        means = {n: sum(t["benchmarks"][n]["avg"] for t in tables) / len(tables) for n in names}
        avg = sum(t["average"] for t in tables) / len(tables)
        summary[method] = {"benchmarks": means, "average": avg, "seeds": len(tables)}
        lines.append(f"| {LABELS[method]} | " + " | ".join(f"{100 * means[n]:.1f}" for n in names)
                     + f" | {100 * avg:.1f} |")
    table = "\n".join(lines)
    (out / "report").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report" / "suite.md", table + "\n")
    atomic_write_json(out / "report" / "suite.json", {"suite": cfg.eval_suite, "methods": summary})
    info(table)
    return table


def seeds_in(folder: Path, seeds: str | None = None) -> list[int]:
    """The seeds asked for (comma-separated), else every seed-N folder in a compare (or archive) folder."""
    if seeds:
        return CompareConfig(seeds=seeds).seed_list()
    return sorted(int(p.name.split("-", 1)[1]) for p in folder.glob("seed-*") if p.is_dir())


def baseline_configs(cfg: CompareConfig, run_cfg: Any, folder: Path) -> dict[str, Any]:
    """Each baseline's own config for one seed's folder, from compare's and the run's settings."""
    from sdzero.baselines.grpo import GRPOBaselineConfig
    from sdzero.baselines.rft import RFTConfig
    from sdzero.baselines.sdft import SDFTConfig

    per_step = cfg.grpo_questions_per_step * cfg.grpo_num_generations
    return {
        "rft": RFTConfig(output_dir=str(folder / "rft"), samples_per_question=cfg.rft_samples_per_question,
                         learning_rate=cfg.rft_learning_rate, num_train_epochs=cfg.rft_num_train_epochs,
                         max_length=run_cfg.srt_max_length, drop_truncated=run_cfg.collect_drop_truncated),
        "grpo": GRPOBaselineConfig(output_dir=str(folder / "grpo"), num_generations=cfg.grpo_num_generations,
                                   questions_per_step=cfg.grpo_questions_per_step,
                                   micro_batch_size=math.gcd(16, per_step), learning_rate=cfg.grpo_learning_rate,
                                   mask_truncated_completions=run_cfg.distill_skip_truncated),
        "sdft": SDFTConfig(output_dir=str(folder / "sdft"), questions_per_step=cfg.sdft_questions_per_step,
                           learning_rate=cfg.sdft_learning_rate, warmup_steps=run_cfg.distill_warmup_steps,
                           divergence=run_cfg.distill_divergence, divergence_kind=run_cfg.distill_divergence_kind,
                           teacher=cfg.sdft_teacher, skip_truncated=run_cfg.distill_skip_truncated,
                           skip_first_tokens=run_cfg.distill_skip_first_tokens,
                           max_teacher_tokens=run_cfg.distill_max_teacher_tokens),
    }


def run_baseline(ctx: Any, method: str, folder: Path, budget_generations: int, train_questions: list,
                 eval_questions: list, run_cfg: Any, cfg: CompareConfig) -> None:
    """Train one baseline from the base model within the budget, evaluate it, record it in baselines.json."""
    from sdzero.budget import GenerationBudget
    from sdzero.evaluate import EvalConfig, evaluate_model

    seed = ctx.seed
    state = read_baselines(folder)
    if method in state:
        info(f"[compare] seed {seed}: {method} done before, skipped")
        return
    info(f"[compare] seed {seed}: {method} within {budget_generations} generations")
    budget = GenerationBudget(budget_generations)
    config = baseline_configs(cfg, run_cfg, folder)[method]
    t0 = time.perf_counter()
    curve = BASELINES[method]().train(ctx, train_questions, budget, config)
    train_s = time.perf_counter() - t0
    ec = EvalConfig(num_samples=run_cfg.eval_num_samples, revise=False)
    metrics = evaluate_model(ctx, str(Path(config.output_dir) / "model"), eval_questions, ec,
                             folder / f"eval-{method}.json")["metrics"]
    state = read_baselines(folder)
    state[method] = {"generations": budget.generations, "sampled_tokens": budget.sampled_tokens,
                     "budget": budget_generations, "train_seconds": round(train_s, 1),
                     "seconds": round(time.perf_counter() - t0, 1), "curve": curve}
    write_baselines(folder, state)
    if not run_cfg.keep_checkpoints:
        drop_checkpoints(config.output_dir)
    info(f"[compare] seed {seed}: {method} avg@{ec.num_samples} {metrics[f'avg@{ec.num_samples}']:.3f}, "
          f"{budget.generations} generations")
