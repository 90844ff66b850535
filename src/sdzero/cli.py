"""The `sdzero` command: `sdzero <command> [--config recipe.yaml] [--flag value ...]`.

Each command parses its dataclasses with TRL's parser (YAML file + flags, flags win). Bad input raises
SDZeroError, printed as one `error:` line with exit status 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from dataclasses import asdict
from typing import Any, Callable

from sdzero.errors import SDZeroError
from sdzero.files import check_output_dir, check_output_file
from sdzero.logs import log_file


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
    from sdzero.config import ModelConfig
    from sdzero.models import set_loading_options

    for c in parsed:
        if isinstance(c, ModelConfig):
            set_loading_options(c.loading_options())
    return parsed


def _parse_command(stage_config: type, argv: list[str], command: str, split: str | None = None) -> tuple[Any, Any]:
    """(a Context over the shared settings, the command's own config). `split`: the question set the command
    works on (phase1 / phase2), which must not be empty."""
    from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig
    from sdzero.context import Context

    mc, tc, gc, rc, own = _parse((ModelConfig, TaskConfig, GenerationConfig, RevisionConfig, stage_config), argv,
                                 f"sdzero {command}")
    if split is not None and getattr(tc, f"{split}_size") < 1:
        raise SDZeroError(f"{command} needs {split.replace('phase', 'Phase-')} questions: set --{split}_size")
    return Context(mc, tc, gc, rc), own


def cmd_eval(argv: list[str]) -> int:
    from sdzero.evaluate import EvalConfig, check_eval_split, evaluate_model, format_table

    ctx, ec = _parse_command(EvalConfig, argv, "eval")
    mc, gc = ctx.model_config, ctx.generation
    if ec.suite:
        from sdzero.suites import SUITES, run_suite

        if ec.suite not in SUITES:  # before the output folder is made
            raise SDZeroError(f"unknown suite {ec.suite!r}; choose from {', '.join(SUITES)}")
        folder = check_output_dir(ec.output or f"outputs/suite-{ec.suite}-{time.strftime('%Y%m%d-%H%M%S')}",
                                  "--output")
        result = run_suite(ctx, ec, mc.model, Path(folder))
        print(result["table"])
        print(f"reports: {folder}")
        return 0
    check_eval_split(ec.split, ctx.task_config)
    out = check_output_file(ec.output) if ec.output else None  # before the task loads (a download, a sandbox)
    with ctx:
        if out is None:  # the default name needs the task's name
            safe_task = ctx.task.name.replace("/", "_").replace(":", "-")
            out = check_output_file(f"outputs/eval-{safe_task}-{time.strftime('%Y%m%d-%H%M%S')}.json")
        questions = ctx.questions(ec.split)
        print(f"[sdzero] eval {mc.model} on {ctx.task.name}: {len(questions)} {ec.split} questions, "
              f"k={ec.num_samples} at T={gc.temperature}", file=sys.stderr, flush=True)
        report = evaluate_model(ctx, mc.model, questions, ec, out)
        task_name = ctx.task.name
    print(format_table(report["metrics"], f"sdzero eval  model={mc.model}  task={task_name}"))
    print(f"report: {out}")
    return 0


def cmd_collect(argv: list[str]) -> int:
    from sdzero.collect import CollectConfig, collect
    from sdzero.evaluate import format_table

    ctx, cc = _parse_command(CollectConfig, argv, "collect", "phase1")
    mc, tc, gc = ctx.model_config, ctx.task_config, ctx.generation
    check_output_dir(cc.output_dir)
    with log_file(cc.output_dir), ctx:
        questions = ctx.questions("phase1")
        generator = ctx.generator()
        print(f"[sdzero] collect on {ctx.task.name}: {len(questions)} Phase-1 questions, "
              f"{cc.drafts_per_question} draft(s) x {cc.revisions_per_draft} revision(s) at T={gc.temperature}",
              file=sys.stderr, flush=True)
        summary = collect(generator, ctx.task, questions, ctx.sampling(), cc, ctx.phrases(), ctx.system_prompt,
                          ctx.seed, meta={"model": mc.model, "task": tc.task, "task_config": asdict(tc)})
        task_name = ctx.task.name
    print(format_table(summary["stats"], f"sdzero collect  model={mc.model}  task={task_name}"))
    print(f"data: {cc.output_dir}/kept.jsonl")
    return 0


def cmd_srt(argv: list[str]) -> int:
    from sdzero.config import ModelConfig
    from sdzero.srt import SRTConfig, run_srt

    mc, sc = _parse((ModelConfig, SRTConfig), argv, "sdzero srt")
    check_output_dir(sc.output_dir)
    with log_file(sc.output_dir):
        summary = run_srt(mc.model, sc)
    losses = [h["loss"] for hs in summary["loss_history"].values() for h in hs]
    print(f"sdzero srt: {summary['tuples']} tuples -> {summary['revision_records']} revision + "
          f"{summary['generation_records']} generation records ({summary['dropped_for_length']} dropped for length)")
    if losses:
        print(f"  loss {losses[0]:.4f} (first log) -> {losses[-1]:.4f} (last log)")
    print(f"model: {sc.output_dir}/model")
    return 0


def cmd_distill(argv: list[str]) -> int:
    from sdzero.distill import DistillConfig, run_distill
    from sdzero.runfolder import format_history

    ctx, dc = _parse_command(DistillConfig, argv, "distill", "phase2")
    mc, gc = ctx.model_config, ctx.generation
    check_output_dir(dc.output_dir)
    with log_file(dc.output_dir), ctx:
        questions = ctx.questions("phase2")
        print(f"[sdzero] distill {mc.model} on {ctx.task.name}: {len(questions)} Phase-2 questions, "
              f"{dc.max_steps} steps x {dc.questions_per_step} questions, teacher={dc.teacher}, "
              f"divergence={dc.divergence}/{dc.divergence_kind}", file=sys.stderr, flush=True)
        # The phrases the SRT model learned (stored in its sdzero.json) unless flags say otherwise.
        summary = run_distill(mc.model, ctx.task, questions, dc, ctx.sampling(dc.samples_per_question),
                              ctx.phrases(mc.model), ctx.system_prompt, gc.backend, gc.batch_size, ctx.seed)
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


def cmd_findings(argv: list[str]) -> int:
    from sdzero.findings import FindingsConfig, write_findings

    (cfg,) = _parse((FindingsConfig,), argv, "sdzero findings")
    path = write_findings(cfg)
    print(path.read_text())
    print(f"findings: {path} (and findings.json)")
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run": (cmd_run, "the whole pipeline: eval base, Phase 1, eval, Phase 2, eval, report (the main job)"),
    "compare": (cmd_compare, "base, RFT, GRPO, SDFT, SRT and SD-Zero at matched generation budgets, over seeds"),
    "findings": (cmd_findings, "the paper's findings as verdicts (holds, does not hold, inconclusive) from a compare"),
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
    from sdzero import logs

    logs.setup()
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
