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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, atomic_write_text, check_output_dir

# `sdzero run`'s own defaults for fields shared with the other commands: sized so that the whole pipeline
# fits a laptop-class CPU (README, "The main job"). A recipe or flags override them. The 200 validation
# questions are reserved so that settings can be chosen on them (`--eval_split validation`) while the
# held-out set stays unseen; reasoning-gym questions are generated, so reserving them costs nothing.
RUN_DEFAULTS = {"eval_size": 100, "validation_size": 200, "phase1_size": 128, "phase2_size": 320,
                "max_new_tokens": 128}

STAGES = ("eval-base", "collect", "srt", "eval-srt", "distill", "eval-sdzero", "report")
DISTRIBUTED_STAGES = ("srt", "distill")  # the others run on the main process only
MODELS = {"base": "eval-base", "SRT": "eval-srt", "SD-Zero": "eval-sdzero"}


@dataclass
class RunConfig:
    output_dir: str = field(default="outputs/run", metadata={"help": "Where every stage and the report go."})
    stop_after: str = field(default="report", metadata={"help": f"Last stage to run: one of {', '.join(STAGES)}."})
    eval_split: str = field(default="eval", metadata={
        "help": "Which questions the three evaluations use: eval (the held-out set) or validation (--validation_size "
                "questions, for choosing settings without looking at the held-out set)."})
    eval_num_samples: int = field(default=2, metadata={"help": "k for the held-out evaluations (avg@k, pass@k)."})
    eval_revise: bool = field(default=True, metadata={"help": "Measure the generate-then-revise correction rate."})
    # Phase 1 collection on the embedded default is not the paper's (1 draft, 3 sampled revisions, right drafts
    # rephrased): at 135M the reviser fixes ~5% of wrong drafts after "start over", against ~15% for a fresh
    # sample, so the paper's collection keeps ~7 wrong->right tuples and SRT teaches copying. 8 drafts per
    # question, each wrong draft paired with the question's right drafts (issue 13's ablation, RESULTS.md).
    # `--collect_drafts_per_question 1 --collect_revisions_per_draft 3 --collect_revise_correct true
    # --collect_pair_right_drafts false` is the paper's collection.
    collect_drafts_per_question: int = field(default=8, metadata={"help": "Phase 1: drafts per question "
                                                                          "(paper: 1)."})
    collect_revisions_per_draft: int = field(default=0, metadata={"help": "Phase 1: revisions per draft "
                                                                          "(paper: 3)."})
    collect_revise_correct: bool = field(default=False, metadata={"help": "Phase 1: also revise right drafts "
                                                                          "(paper: yes; see `sdzero collect --help`)."})
    collect_pair_right_drafts: bool = field(default=True, metadata={
        "help": "Phase 1: keep (wrong draft, start over, right draft of the same question) tuples too (not in the "
                "paper; see `sdzero collect --help`)."})
    collect_drop_truncated: bool = field(default=True, metadata={"help": "Phase 1: drop revisions cut at the cap."})
    srt_learning_rate: float = field(default=1e-5, metadata={"help": "Phase 1 SRT learning rate."})
    srt_num_train_epochs: float = field(default=2.0, metadata={"help": "Phase 1 SRT epochs."})
    srt_batch_size: int = field(default=8, metadata={"help": "Phase 1 SRT records per step."})
    srt_padding_free: bool = field(default=True, metadata={"help": "Phase 1 SRT: padding-free batches (same loss, "
                                                                   "faster); false: padded, as before 2026-11-30."})
    srt_revision_loss: bool = field(default=True, metadata={"help": "Phase 1 SRT: train L_revision."})
    srt_generation_loss: bool = field(default=True, metadata={"help": "Phase 1 SRT: train L_generation."})
    distill_max_steps: int = field(default=20, metadata={"help": "Phase 2 optimizer steps."})
    distill_questions_per_step: int = field(default=16, metadata={"help": "Phase 2 questions per step."})
    distill_learning_rate: float = field(default=5e-6, metadata={"help": "Phase 2 learning rate (paper: 5e-6)."})
    distill_warmup_steps: int = field(default=3, metadata={"help": "Phase 2 warmup steps."})
    distill_divergence: str = field(default="topk", metadata={"help": "Phase 2 divergence: topk, full, sampled."})
    distill_divergence_kind: str = field(default="mixed", metadata={"help": "forward, reverse, mixed, jsd."})
    distill_teacher: str = field(default="frozen", metadata={"help": "Phase 2 teacher: frozen, sync, ema."})
    distill_skip_truncated: bool = field(default=True, metadata={
        "help": "Phase 2: no loss on responses cut at the token cap (see `sdzero distill --help`)."})
    distill_skip_first_tokens: int = field(default=0, metadata={
        "help": "Phase 2: no loss on the first N tokens of each response (see `sdzero distill --help`)."})
    distill_max_teacher_tokens: int = field(default=4096, metadata={"help": "Phase 2 teacher length limit."})
    srt_max_length: int = field(default=1024, metadata={"help": "Phase 1 SRT record length limit."})

    def validate(self) -> None:
        if self.eval_num_samples < 1:
            raise SDZeroError(f"eval_num_samples must be at least 1, not {self.eval_num_samples}")


def stage_configs(cfg: RunConfig, seed: int = 0) -> dict[str, Any]:
    """The collect / SRT / distill configs this run builds (validated), keyed by stage."""
    from sdzero.collect import CollectConfig
    from sdzero.distill import DistillConfig
    from sdzero.srt import SRTConfig

    out = Path(cfg.output_dir)
    dc = DistillConfig(output_dir=str(out / "distill"), max_steps=cfg.distill_max_steps,
                       questions_per_step=cfg.distill_questions_per_step, learning_rate=cfg.distill_learning_rate,
                       warmup_steps=cfg.distill_warmup_steps, divergence=cfg.distill_divergence,
                       divergence_kind=cfg.distill_divergence_kind, teacher=cfg.distill_teacher,
                       skip_truncated=cfg.distill_skip_truncated, skip_first_tokens=cfg.distill_skip_first_tokens,
                       max_teacher_tokens=cfg.distill_max_teacher_tokens)
    dc.validate()
    configs = {
        "collect": CollectConfig(output_dir=str(out / "phase1"), drafts_per_question=cfg.collect_drafts_per_question,
                                 revisions_per_draft=cfg.collect_revisions_per_draft,
                                 revise_correct=cfg.collect_revise_correct,
                                 pair_right_drafts=cfg.collect_pair_right_drafts,
                                 drop_truncated=cfg.collect_drop_truncated),
        "srt": SRTConfig(data_dir=str(out / "phase1"), output_dir=str(out / "srt"),
                         learning_rate=cfg.srt_learning_rate, num_train_epochs=cfg.srt_num_train_epochs,
                         per_device_train_batch_size=cfg.srt_batch_size, max_length=cfg.srt_max_length, seed=seed,
                         revision_loss=cfg.srt_revision_loss, generation_loss=cfg.srt_generation_loss,
                         padding_free=cfg.srt_padding_free),
        "distill": dc,
    }
    configs["collect"].validate()
    configs["srt"].validate()
    return configs


def _run_field_defaults() -> dict[str, Any]:
    """RunConfig's fields that have a default, with it (as stored in stages.json)."""
    from dataclasses import MISSING, fields

    return {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}


def _processes() -> Any:
    """accelerate's view of the processes (one, unless started by `accelerate launch`)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _state(out: Path) -> dict[str, Any]:
    f = out / "stages.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def run_pipeline(mc: Any, tc: Any, gc: Any, rc: Any, cfg: RunConfig) -> dict[str, Any]:
    from sdzero.collect import collect
    from sdzero.config import read_meta
    from sdzero.distill import run_distill
    from sdzero.runfolder import history_totals, read_history
    from sdzero.evaluate import EvalConfig, check_eval_split, evaluate_model
    from sdzero.generation import SamplingParams, make_generator
    from sdzero.models import load_model_and_tokenizer
    from sdzero.srt import run_srt
    from sdzero.tasks import load_task

    if cfg.stop_after not in STAGES:
        raise SDZeroError(f"stop_after must be one of {', '.join(STAGES)}, not {cfg.stop_after!r}")
    configs = stage_configs(cfg, gc.seed)  # a broken setting fails here, before any work
    check_eval_split(cfg.eval_split, tc)
    out = Path(cfg.output_dir)
    check_output_dir(out)  # a file, /proc or a read-only place fails here, before any work
    state = _state(out)
    # What the finished stages depend on; not where the run lives (a run folder may be moved) or where it stops.
    own = {k: v for k, v in asdict(cfg).items() if k not in ("stop_after", "output_dir")}
    settings = json.loads(json.dumps({**asdict(mc), **asdict(tc), **asdict(gc), **asdict(rc), **own}))
    stored = {k: v for k, v in state.setdefault("settings", settings).items() if k != "output_dir"}  # older runs
    for k, v in _run_field_defaults().items():  # a field added since that run was made, left at its default
        if k not in stored and settings.get(k) == v:
            stored[k] = v
    if stored != settings:
        changed = sorted(k for k in set(settings) | set(stored) if stored.get(k) != settings.get(k))
        raise SDZeroError(f"{out} holds a run made with other settings ({', '.join(changed)}); finished stages "
                          "would be reused with the new ones. Use another --output_dir, or delete this one")
    task = load_task(tc)
    sampling = SamplingParams(gc.max_new_tokens, gc.temperature, gc.top_p)
    srt_model, sdzero_model = out / "srt" / "model", out / "distill" / "model"
    processes = _processes()
    configs["distill"].validate(processes.num_processes)  # e.g. questions_per_step vs processes: now, not hours later

    def run_stage(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        nonlocal state
        if name in state:
            if processes.is_main_process:
                print(f"[run] {name}: done before ({state[name]['seconds']:.0f} s), skipped", flush=True)
            return
        if processes.is_main_process:
            print(f"[run] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn() if name in DISTRIBUTED_STAGES or processes.is_main_process else None
        processes.wait_for_everyone()
        if processes.is_main_process:
            state[name] = {"seconds": round(time.perf_counter() - t0, 1), **(result or {})}
            atomic_write_json(out / "stages.json", state)
        processes.wait_for_everyone()
        state = {**_state(out), "settings": state["settings"]}

    def evaluation(model: str, target: str) -> Callable[[], dict[str, Any]]:
        def fn() -> dict[str, Any]:
            ec = EvalConfig(num_samples=cfg.eval_num_samples, revise=cfg.eval_revise, output=str(out / target))
            metrics = evaluate_model(model, task, splits[cfg.eval_split], mc, tc, gc, rc, ec, out / target)["metrics"]
            return {"generations": metrics["generations"], "sampled_tokens": metrics["sampled_tokens"]}
        return fn

    def phase1_collect() -> dict[str, Any]:
        m, tok = load_model_and_tokenizer(mc.model, mc.dtype, mc.device)
        generator = make_generator(gc.backend, m, tok, batch_size=gc.batch_size)
        summary = collect(generator, task, splits["phase1"], sampling, configs["collect"], rc.phrases(),
                          tc.system_prompt, gc.seed, meta={"model": mc.model, "task": tc.task,
                                                           "task_config": asdict(tc)})
        s = summary["stats"]
        return {"generations": s["generations"], "sampled_tokens": s["sampled_tokens"], "kept": s.get("kept")}

    def phase1_srt() -> dict[str, Any]:
        summary = run_srt(mc.model, configs["srt"])
        return {"generations": 0, "sampled_tokens": 0, "records": summary["revision_records"] +
                summary["generation_records"]}

    def phase2() -> dict[str, Any]:
        phrases = rc.phrases(read_meta(srt_model))
        run_distill(str(srt_model), task, splits["phase2"], configs["distill"], sampling, phrases, tc.system_prompt,
                    gc.backend, gc.batch_size, gc.seed)
        t = history_totals(read_history(out / "distill"))
        return {"generations": t["responses"], "sampled_tokens": t["sampled_tokens"]}

    stages: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("eval-base", evaluation(mc.model, "eval-base.json")),
        ("collect", phase1_collect),
        ("srt", phase1_srt),
        ("eval-srt", evaluation(str(srt_model), "eval-srt.json")),
        ("distill", phase2),
        ("eval-sdzero", evaluation(str(sdzero_model), "eval-sdzero.json")),
        ("report", lambda: write_run_report(out, state, task.name, mc.model)),
    ]
    try:
        splits = task.split(tc.split_sizes("phase2"))
        for name, fn in stages:
            run_stage(name, fn)
            if name == cfg.stop_after:
                break
    finally:
        task.close()
    return state


# --- the report ---------------------------------------------------------------------------------------------

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
    from sdzero.runfolder import format_history, read_history

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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[run] matplotlib is not installed: no plots (pip install 'sdzero[plots]')", flush=True)
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
