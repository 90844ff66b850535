"""The `sdzero` command: `sdzero <command> [--config recipe.yaml] [--flag value ...]`.

Each command parses its dataclasses with TRL's parser (YAML file + flags, flags win). Bad input raises
SDZeroError, printed as one `error:` line with exit status 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Callable

from sdzero.errors import SDZeroError
from sdzero.files import check_output_dir, check_output_file


def _parse(types: tuple, argv: list[str], prog: str, defaults: dict | None = None):
    """Parse, then check every setting (finite numbers, ranges, each config's validate()) before any work."""
    import yaml
    from trl import TrlParser

    from sdzero.config import check_settings

    parser = TrlParser(types, prog=prog)
    if defaults:
        parser.set_defaults(**defaults)  # a command's own defaults; a YAML recipe and flags still win
    try:
        parsed = parser.parse_args_and_config(args=argv)
    except yaml.YAMLError as e:  # a syntax error in the --config file
        raise SDZeroError(f"the --config file is not valid YAML: {' '.join(str(e).split())}") from e
    except (ValueError, FileNotFoundError) as e:  # unknown keys in the config file, or no such file
        raise SDZeroError(f"bad configuration: {e}") from e
    check_settings(*parsed)
    return parsed


def cmd_eval(argv: list[str]) -> int:
    from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig
    from sdzero.evaluate import EvalConfig, check_eval_split, evaluate_model, format_table
    from sdzero.tasks import load_task

    mc, tc, gc, rc, ec = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, EvalConfig), argv,
                                "sdzero eval")
    check_eval_split(ec.split, tc)
    out = check_output_file(ec.output) if ec.output else None  # before the task loads (a download, a sandbox)
    task = load_task(tc)
    if out is None:  # the default name needs the task's name
        safe_task = task.name.replace("/", "_").replace(":", "-")
        out = check_output_file(f"outputs/eval-{safe_task}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    try:
        questions = task.split(tc.split_sizes(ec.split))[ec.split]
        print(f"[sdzero] eval {mc.model} on {task.name}: {len(questions)} {ec.split} questions, "
              f"k={ec.num_samples} at T={gc.temperature}", file=sys.stderr, flush=True)
        report = evaluate_model(mc.model, task, questions, mc, tc, gc, rc, ec, out)
    finally:
        task.close()
    print(format_table(report["metrics"], f"sdzero eval  model={mc.model}  task={task.name}"))
    print(f"report: {out}")
    return 0


def cmd_collect(argv: list[str]) -> int:
    from sdzero.collect import CollectConfig, collect
    from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig
    from sdzero.evaluate import format_table
    from sdzero.generation import SamplingParams, make_generator
    from sdzero.models import load_model_and_tokenizer
    from sdzero.tasks import load_task

    mc, tc, gc, rc, cc = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, CollectConfig), argv,
                                "sdzero collect")
    if tc.phase1_size < 1:
        raise SDZeroError("collect needs Phase-1 questions: set --phase1_size")
    check_output_dir(cc.output_dir)
    task = load_task(tc)
    try:
        questions = task.split(tc.split_sizes("phase1"))["phase1"]
        model, tokenizer = load_model_and_tokenizer(mc.model, mc.dtype, mc.device)
        generator = make_generator(gc.backend, model, tokenizer, batch_size=gc.batch_size)
        print(f"[sdzero] collect on {task.name}: {len(questions)} Phase-1 questions, "
              f"{cc.drafts_per_question} draft(s) x {cc.revisions_per_draft} revision(s) at T={gc.temperature}",
              file=sys.stderr, flush=True)
        summary = collect(generator, task, questions, SamplingParams(gc.max_new_tokens, gc.temperature, gc.top_p),
                          cc, rc.phrases(), tc.system_prompt, gc.seed,
                          meta={"model": mc.model, "task": tc.task, "task_config": asdict(tc)})
    finally:
        task.close()
    print(format_table(summary["stats"], f"sdzero collect  model={mc.model}  task={task.name}"))
    print(f"data: {cc.output_dir}/kept.jsonl")
    return 0


def cmd_srt(argv: list[str]) -> int:
    from sdzero.config import ModelConfig
    from sdzero.srt import SRTConfig, run_srt

    mc, sc = _parse((ModelConfig, SRTConfig), argv, "sdzero srt")
    check_output_dir(sc.output_dir)
    summary = run_srt(mc.model, sc)
    losses = [h["loss"] for hs in summary["loss_history"].values() for h in hs]
    print(f"sdzero srt: {summary['tuples']} tuples -> {summary['revision_records']} revision + "
          f"{summary['generation_records']} generation records ({summary['dropped_for_length']} dropped for length)")
    if losses:
        print(f"  loss {losses[0]:.4f} (first log) -> {losses[-1]:.4f} (last log)")
    print(f"model: {sc.output_dir}/model")
    return 0


def cmd_distill(argv: list[str]) -> int:
    from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig, read_meta
    from sdzero.distill import DistillConfig, run_distill
    from sdzero.runfolder import format_history
    from sdzero.generation import SamplingParams
    from sdzero.tasks import load_task

    mc, tc, gc, rc, dc = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, DistillConfig), argv,
                                "sdzero distill")
    if tc.phase2_size < 1:
        raise SDZeroError("distill needs Phase-2 questions: set --phase2_size")
    check_output_dir(dc.output_dir)
    task = load_task(tc)
    try:
        questions = task.split(tc.split_sizes("phase2"))["phase2"]
        # The phrases the SRT model learned (stored in its sdzero.json) unless flags say otherwise.
        phrases = rc.phrases(read_meta(mc.model))
        sampling = SamplingParams(gc.max_new_tokens, gc.temperature, gc.top_p, n=dc.samples_per_question)
        print(f"[sdzero] distill {mc.model} on {task.name}: {len(questions)} Phase-2 questions, "
              f"{dc.max_steps} steps x {dc.questions_per_step} questions, teacher={dc.teacher}, "
              f"divergence={dc.divergence}/{dc.divergence_kind}", file=sys.stderr, flush=True)
        summary = run_distill(mc.model, task, questions, dc, sampling, phrases, tc.system_prompt, gc.backend,
                              gc.batch_size, gc.seed)
    finally:
        task.close()
    history = summary.get("history") or []
    if history:
        print(format_history(history))
    if summary.get("stopped_early"):
        print(f"stopped after step {summary['steps']} (stop_after_steps); run again to resume")
    else:
        print(f"model: {dc.output_dir}/model   log: {dc.output_dir}/log.jsonl   heat-maps: {dc.output_dir}/selfloc/")
    return 0


def cmd_run(argv: list[str]) -> int:
    from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig
    from sdzero.pipeline import RUN_DEFAULTS, RunConfig, run_pipeline

    mc, tc, gc, rc, cfg = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, RunConfig), argv,
                                 "sdzero run", defaults=RUN_DEFAULTS)
    print(f"[sdzero] run {mc.model} on {tc.task}: held-out {tc.eval_size}, Phase 1 {tc.phase1_size}, "
          f"Phase 2 {tc.phase2_size} questions -> {cfg.output_dir}", file=sys.stderr, flush=True)
    run_pipeline(mc, tc, gc, rc, cfg)
    print(f"report: {cfg.output_dir}/report/results.md")
    return 0


def cmd_compare(argv: list[str]) -> int:
    from sdzero.compare import CompareConfig, run_compare
    from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig
    from sdzero.pipeline import RUN_DEFAULTS, RunConfig

    mc, tc, gc, rc, run_cfg, cfg = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, RunConfig,
                                           CompareConfig), argv, "sdzero compare",
                                          defaults={**RUN_DEFAULTS, "output_dir": "outputs/compare"})
    print(f"[sdzero] compare on {tc.task}: seeds {cfg.seeds}; base, SRT, SD-Zero and {cfg.methods} -> "
          f"{run_cfg.output_dir}", file=sys.stderr, flush=True)
    run_compare(mc, tc, gc, rc, run_cfg, cfg)
    print(f"report: {run_cfg.output_dir}/report/results.md")
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run": (cmd_run, "the whole pipeline: eval base, Phase 1, eval, Phase 2, eval, report (the main job)"),
    "compare": (cmd_compare, "base, RFT, GRPO, SDFT, SRT and SD-Zero at matched generation budgets, over seeds"),
    "eval": (cmd_eval, "evaluate a model: avg@k, pass@k, greedy accuracy, correction rate, response length"),
    "collect": (cmd_collect, "Phase 1a: drafts, verified revisions, kept self-revision tuples"),
    "srt": (cmd_srt, "Phase 1b: Self-Revision Training on the kept tuples (L_revision + L_generation)"),
    "distill": (cmd_distill, "Phase 2: on-policy self-distillation, the reviser as teacher (accelerate launch ok)"),
}


def usage() -> str:
    lines = ["usage: sdzero <command> [--config FILE.yaml] [options]   (sdzero <command> --help for options)", "",
             "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][0](rest)
    except SDZeroError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Under `accelerate launch` the commands share one process group; it ends with the command."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
