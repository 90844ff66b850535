"""`sdzero run`: the whole SD-Zero pipeline in one command, with a report.

Stages, in order; each writes under OUTPUT_DIR, and a stage whose output is already there is not redone
when the same run is started again (OUTPUT_DIR/stages.json records what finished, with its wall time):

  eval-base    held-out evaluation of the starting model        -> eval-base.json
  collect      Phase 1a on the Phase-1 questions                 -> phase1/
  srt          Phase 1b, Self-Revision Training                  -> srt/model
  eval-srt     held-out evaluation after SRT                     -> eval-srt.json
  distill      Phase 2 on the Phase-2 questions                  -> distill/model
  eval-sdzero  held-out evaluation after Phase 2                 -> eval-sdzero.json
  report       results.md + results.json, plots, heat-map        -> report/

The three question sets (held-out, Phase 1, Phase 2) come from one deterministic split of the task
(`TaskConfig`), so no stage sees another's questions. Under `accelerate launch`, SRT and Phase 2 train on
every process; the evaluations, the collection and the report run on the main process while the others
wait (they are not sharded yet). Every generation is counted: the report gives, per
stage, the responses sampled and their tokens, and the wall time.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, check_output_dir
from sdzero.logs import info, log_file
from sdzero.runfolder import STAGE_OUTPUTS, STAGES, drop_checkpoints, read_stages, write_stages

# `sdzero run`'s own defaults for fields shared with the other commands: sized so that the whole pipeline
# fits a laptop-class CPU (README, "The main job"). A recipe or flags override them. The 200 validation
# questions are reserved so that settings can be chosen on them (`--eval_split validation`) while the
# held-out set stays unseen; reasoning-gym questions are generated, so reserving them costs nothing.
RUN_DEFAULTS = {"eval_size": 100, "validation_size": 200, "phase1_size": 128, "phase2_size": 320,
                "max_new_tokens": 128}

DISTRIBUTED_STAGES = ("srt", "distill")  # the others run on the main process only


# The stages whose configs `sdzero run` exposes, each field as --STAGE_FIELD (e.g. --distill_learning_rate),
# built from the stage's own dataclass so that a field added there is a flag here with the same help.
STAGE_CONFIGS = {"collect": ("sdzero.collect", "CollectConfig", "Phase 1 collection"),
                 "srt": ("sdzero.srt", "SRTConfig", "Phase 1 SRT"),
                 "distill": ("sdzero.distill", "DistillConfig", "Phase 2")}
RUN_MANAGED = ("output_dir", "data_dir", "seed", "resume", "stop_after_steps")  # the run sets these itself
FLAG_NAMES = {("srt", "per_device_train_batch_size"): "srt_batch_size"}  # shorter flags kept from before
# `sdzero run`'s defaults where they differ from the stage commands': sized for the embedded default on a CPU.
# Phase 1 collection is not the paper's (1 draft, 3 sampled revisions, right drafts rephrased): at 135M the
# reviser fixes ~5% of wrong drafts after "start over", against ~15% for a fresh sample, so the paper's
# collection keeps ~7 wrong->right tuples and SRT teaches copying. 8 drafts per question, each wrong draft
# paired with the question's right drafts (issue 13's ablation, RESULTS.md). `--collect_drafts_per_question 1
# --collect_revisions_per_draft 3 --collect_revise_correct true --collect_pair_right_drafts false` is the paper's.
# SRT trains L_revision alone: with all-wrong->right pairs, L_generation teaches every first attempt to open
# with a throwaway draft and "start over" (91-93% of them after SRT), which Phase 2 then removes; without it
# the reviser fixes more than a fresh sample and Phase 2 adds over SRT (validation, 3 seeds; RESULTS.md).
# `--srt_generation_loss true` is the paper's.
STAGE_DEFAULTS = {
    "collect": {"drafts_per_question": 8, "revisions_per_draft": 0, "revise_correct": False,
                "pair_right_drafts": True},
    "srt": {"learning_rate": 1e-5, "num_train_epochs": 2.0, "generation_loss": False},
    "distill": {"max_steps": 20, "questions_per_step": 16, "warmup_steps": 3, "skip_truncated": True},
}
# Settings for both training stages at once: on when either this or the stage's own flag says so.
SHARED_TRAINING = {"use_lora": (False, "Train LoRA adapters in SRT and Phase 2 (--srt_use_lora / "
                                       "--distill_use_lora for one of them)."),
                   "gradient_checkpointing": (False, "Recompute activations in the backward pass in SRT and Phase 2 "
                                                     "(less memory for long sequences)."),
                   "report_to": ("none", "Trackers for SRT and Phase 2: none, or a comma list of tensorboard, "
                                         "trackio, wandb.")}
EVALUATION_FIELDS = ("eval_split", "eval_num_samples", "eval_revise")
# Settings that change how a stage runs or logs, not what it produces: a change redoes nothing.
BOOKKEEPING_FIELDS = ("report_to", "gradient_checkpointing", "logging_steps", "save_steps", "save_total_limit",
                      "keep_checkpoints", "push_to_hub", "hub_model_id", "hub_private")


def _stage_config_class(stage: str) -> type:
    import importlib

    module, name, _ = STAGE_CONFIGS[stage]
    return getattr(importlib.import_module(module), name)


def stage_flags() -> list[tuple[str, str, str]]:
    """(flag name, stage, the stage config's field) for every stage field `sdzero run` exposes."""
    from dataclasses import fields

    return [(FLAG_NAMES.get((stage, f.name), f"{stage}_{f.name}"), stage, f.name)
            for stage in STAGE_CONFIGS for f in fields(_stage_config_class(stage)) if f.name not in RUN_MANAGED]


def _run_config_class() -> type:
    from dataclasses import fields, make_dataclass

    own = [
        ("output_dir", str, field(default="outputs/run", metadata={"help": "Where every stage and the report go."})),
        ("stop_after", str, field(default="report", metadata={
            "help": f"Last stage to run: one of {', '.join(STAGES)}."})),
        ("eval_split", str, field(default="eval", metadata={
            "help": "Which questions the three evaluations use: eval (the held-out set) or validation "
                    "(--validation_size questions, for choosing settings without looking at the held-out set)."})),
        ("eval_num_samples", int, field(default=2, metadata={"help": "k for the evaluations (avg@k, pass@k)."})),
        ("eval_revise", bool, field(default=True, metadata={"help": "Measure the generate-then-revise correction "
                                                                      "rate."})),
        *[(name, type(default), field(default=default, metadata={"help": help}))
          for name, (default, help) in SHARED_TRAINING.items()],
        ("keep_checkpoints", bool, field(default=False, metadata={
            "help": "Keep the checkpoints of finished training stages (SRT, Phase 2, the baselines); by default they "
                    "are deleted once the stage's model is saved (3 GB per stage for the 135M default)."})),
        ("push_to_hub", bool, field(default=False, metadata={
            "help": "After the report, upload the SD-Zero model to the Hub (--hub_model_id) with a model card: the "
                    "recipe, the measured numbers, the control phrases."})),
        ("hub_model_id", "str | None", field(default=None, metadata={"help": "Hub repo id for --push_to_hub "
                                                                              "(user/name)."})),
        ("hub_private", bool, field(default=False, metadata={"help": "Create the Hub repo private."})),
    ]
    stage_fields = {(stage, f.name): f for stage in STAGE_CONFIGS for f in fields(_stage_config_class(stage))}
    generated = []
    for flag, stage, name in stage_flags():
        f = stage_fields[(stage, name)]
        default = STAGE_DEFAULTS.get(stage, {}).get(name, f.default)
        generated.append((flag, f.type, field(default=default, metadata={
            "help": f"{STAGE_CONFIGS[stage][2]}: {f.metadata.get('help', '')}"})))

    def validate(self) -> None:
        if self.eval_num_samples < 1:
            raise SDZeroError(f"eval_num_samples must be at least 1, not {self.eval_num_samples}")
        if self.push_to_hub and not self.hub_model_id:
            raise SDZeroError("push_to_hub needs --hub_model_id (user/name)")

    cls = make_dataclass("RunConfig", own + generated, namespace={
        "validate": validate, "__doc__": "`sdzero run`'s settings: its own, then every stage's as --STAGE_FIELD."})
    cls.__module__ = __name__  # where its string annotations ("int | None") are resolved
    return cls


RunConfig = _run_config_class()


def stage_configs(cfg: Any, seed: int = 0) -> dict[str, Any]:
    """The collect / SRT / distill configs this run builds (validated), keyed by stage."""
    out = Path(cfg.output_dir)
    values: dict[str, dict[str, Any]] = {"collect": {"output_dir": str(out / "phase1")},
                                         "srt": {"data_dir": str(out / "phase1"), "output_dir": str(out / "srt"),
                                                 "seed": seed},
                                         "distill": {"output_dir": str(out / "distill")}}
    for flag, stage, name in stage_flags():
        values[stage][name] = getattr(cfg, flag)
    for stage in ("srt", "distill"):
        values[stage]["use_lora"] = values[stage]["use_lora"] or cfg.use_lora
        values[stage]["gradient_checkpointing"] = values[stage]["gradient_checkpointing"] or \
            cfg.gradient_checkpointing
        if values[stage]["report_to"] in ("none", "", None):
            values[stage]["report_to"] = cfg.report_to
    configs = {stage: _stage_config_class(stage)(**v) for stage, v in values.items()}
    for c in configs.values():
        c.validate()
    return configs


def stages_changed_by(keys: Sequence[str]) -> list[str] | None:
    """The stages a change of these RunConfig settings makes stale (the first training stage touched and every
    stage after it; evaluations alone for evaluation settings; none for logging, checkpointing and memory
    settings), or None when a shared setting (model, task, generation, phrases) changed, which every stage
    depends on."""
    stage_of = {flag: stage for flag, stage, _ in stage_flags()}
    field_of = {flag: name for flag, _, name in stage_flags()}
    stale: set[str] = set()
    for key in keys:
        if field_of.get(key, key) in BOOKKEEPING_FIELDS:
            continue
        if key in EVALUATION_FIELDS:
            stale |= {"eval-base", "eval-srt", "eval-sdzero", "report"}
        elif key in stage_of or key in SHARED_TRAINING:
            first = STAGES.index(stage_of.get(key, "srt"))
            stale |= set(STAGES[first:])
        else:
            return None
    return [s for s in STAGES if s in stale]


def supersede(out: Path, state: dict[str, Any], stale: Sequence[str], changed: Sequence[str]) -> None:
    """Move the outputs of stale stages to OUTPUT_DIR/superseded/TIME/ with the stages.json they were made
    under, so that a sweep over Phase-2 settings in one run folder keeps every point's results."""
    target = out / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    info(f"[run] settings changed ({', '.join(changed)}): re-running {', '.join(stale) or 'nothing'}"
          + (f"; their previous outputs move to {target}" if stale else ""))
    if not stale:
        return
    target.mkdir(parents=True, exist_ok=False)
    atomic_write_json(target / "stages.json", {k: v for k, v in state.items() if k == "settings" or k in stale})
    for stage in stale:
        source = out / STAGE_OUTPUTS[stage]
        if source.exists():
            shutil.move(str(source), str(target / STAGE_OUTPUTS[stage]))


def _field_defaults(*config_classes: type) -> dict[str, Any]:
    """The fields of these configs that have a default, with it (as stored in stages.json)."""
    from dataclasses import MISSING, fields

    return {f.name: f.default for c in config_classes for f in fields(c) if f.default is not MISSING}


def _processes() -> Any:
    """accelerate's view of the processes (one, unless started by `accelerate launch`)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def run_pipeline(mc: Any, tc: Any, gc: Any, rc: Any, cfg: RunConfig, rerun_stale: bool = True) -> dict[str, Any]:
    """Run the stages in order, skipping finished ones. A changed stage setting redoes that stage and the later
    ones (`rerun_stale`; else it is refused, as `sdzero compare` wants: its baselines were matched to the run)."""
    from sdzero.collect import collect
    from sdzero.context import Context
    from sdzero.distill import run_distill
    from sdzero.evaluate import EvalConfig, check_eval_split, evaluate_model
    from sdzero.reports import write_run_report
    from sdzero.runfolder import history_totals, read_history, recorded_settings
    from sdzero.srt import run_srt
    from sdzero.training import check_sharding_applied

    if cfg.stop_after not in STAGES:
        raise SDZeroError(f"stop_after must be one of {', '.join(STAGES)}, not {cfg.stop_after!r}")
    configs = stage_configs(cfg, gc.seed)  # a broken setting fails here, before any work
    check_eval_split(cfg.eval_split, tc)
    out = Path(cfg.output_dir)
    check_output_dir(out)  # a file, /proc or a read-only place fails here, before any work
    state = read_stages(out)
    # What the finished stages depend on; not where the run lives (a run folder may be moved) or where it stops.
    own = {k: v for k, v in asdict(cfg).items() if k not in ("stop_after", "output_dir")}
    settings = json.loads(json.dumps({**asdict(mc), **asdict(tc), **asdict(gc), **asdict(rc), **own}))
    state.setdefault("settings", settings)
    stored = {k: v for k, v in recorded_settings(state).items() if k != "output_dir"}  # older runs: no output_dir
    # A field added since that run was made (to any of its configs), left at its default, matches.
    for k, v in _field_defaults(type(mc), type(tc), type(gc), type(rc), RunConfig).items():
        if k not in stored and settings.get(k) == v:
            stored[k] = v
    stale: list[str] = []
    if stored != settings:
        changed = sorted(k for k in set(settings) | set(stored) if stored.get(k) != settings.get(k))
        found = stages_changed_by(changed)
        if found is None or (found and not rerun_stale):
            then_now = ", ".join(f"{k}: {stored.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise SDZeroError(f"{out} holds a run made with other settings ({then_now})"
                              + (", which every stage depends on" if found is None else "")
                              + ". Pass the earlier values to resume it, use another --output_dir, or delete it")
        stale = [s for s in found if s in state or (out / STAGE_OUTPUTS[s]).exists()]
    ctx = Context(mc, tc, gc, rc)
    srt_model, sdzero_model = out / "srt" / "model", out / "distill" / "model"
    processes = _processes()
    check_sharding_applied(processes.distributed_type)  # an FSDP launch on CPUs: refused before any work
    configs["distill"].validate(processes.num_processes)  # e.g. questions_per_step vs processes: now, not hours later

    def redo_stale() -> dict[str, Any]:
        """Only stage settings changed: move the stale stages' outputs aside, keep the rest."""
        if processes.is_main_process:
            supersede(out, state, stale, changed)
            write_stages(out, {**{k: v for k, v in state.items() if k not in stale}, "settings": settings})
        processes.wait_for_everyone()
        return read_stages(out)

    def run_stage(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        nonlocal state
        if name in state:
            if processes.is_main_process:
                info(f"[run] {name}: done before ({state[name]['seconds']:.0f} s), skipped")
            return
        if processes.is_main_process:
            info(f"[run] {name} ...")
        t0 = time.perf_counter()
        result = fn() if name in DISTRIBUTED_STAGES or processes.is_main_process else None
        processes.wait_for_everyone()
        if processes.is_main_process:
            state[name] = {"seconds": round(time.perf_counter() - t0, 1), **(result or {})}
            write_stages(out, state)
            if name in DISTRIBUTED_STAGES and not cfg.keep_checkpoints:
                drop_checkpoints(out / STAGE_OUTPUTS[name])
        processes.wait_for_everyone()
        state = {**read_stages(out), "settings": state["settings"]}

    def evaluation(model: str, target: str) -> Callable[[], dict[str, Any]]:
        def fn() -> dict[str, Any]:
            ec = EvalConfig(num_samples=cfg.eval_num_samples, revise=cfg.eval_revise, output=str(out / target))
            metrics = evaluate_model(ctx, model, ctx.questions(cfg.eval_split), ec, out / target)["metrics"]
            return {"generations": metrics["generations"], "sampled_tokens": metrics["sampled_tokens"]}
        return fn

    def phase1_collect() -> dict[str, Any]:
        summary = collect(ctx.generator(), ctx.task, ctx.questions("phase1"), ctx.sampling(), configs["collect"],
                          ctx.phrases(), ctx.system_prompt, ctx.seed,
                          meta={"model": mc.model, "task": tc.task, "task_config": asdict(tc)})
        s = summary["stats"]
        return {"generations": s["generations"], "sampled_tokens": s["sampled_tokens"], "kept": s.get("kept")}

    def phase1_srt() -> dict[str, Any]:
        summary = run_srt(mc.model, configs["srt"])
        return {"generations": 0, "sampled_tokens": 0, "records": summary["revision_records"] +
                summary["generation_records"]}

    def phase2() -> dict[str, Any]:
        run_distill(str(srt_model), ctx.task, ctx.questions("phase2"), configs["distill"], ctx.sampling(),
                    ctx.phrases(srt_model), ctx.system_prompt, gc.backend, gc.batch_size, ctx.seed)
        t = history_totals(read_history(out / "distill"))
        return {"generations": t["responses"], "sampled_tokens": t["sampled_tokens"]}

    stages: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("eval-base", evaluation(mc.model, "eval-base.json")),
        ("collect", phase1_collect),
        ("srt", phase1_srt),
        ("eval-srt", evaluation(str(srt_model), "eval-srt.json")),
        ("distill", phase2),
        ("eval-sdzero", evaluation(str(sdzero_model), "eval-sdzero.json")),
        ("report", lambda: write_run_report(out, state, ctx.task.name, mc.model)),
    ]
    with log_file(out) if processes.is_main_process else nullcontext(), ctx:
        if stored != settings:
            state = redo_stale()
        ctx.questions("phase2")  # every set exists before any work (a task too small fails here)
        for name, fn in stages:
            run_stage(name, fn)
            if name == cfg.stop_after:
                break
    if cfg.push_to_hub and "report" in state and processes.is_main_process:
        from sdzero.config import read_meta
        from sdzero.hub import model_card, push_model
        from sdzero.reports import results_table

        card = model_card(cfg.hub_model_id, state, results_table(out), read_meta(sdzero_model)["control_phrases"])
        url = push_model(sdzero_model, cfg.hub_model_id, card, out / "stages.json", private=cfg.hub_private)
        info(f"[run] pushed {sdzero_model} to {url}")
    return state
