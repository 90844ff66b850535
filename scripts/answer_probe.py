"""The premise of Phase 2, measured on a trained SRT model before any distillation: on the student's own wrong
responses, does the teacher (the reviser, reading x, y, "start over", y) give y's final-answer tokens less
probability than the student (reading x) does? If it gives them more, Phase 2 pushes the student toward its
own wrong answers.

    python scripts/answer_probe.py outputs/ablate/pairs-seed0 --questions 96
    python scripts/answer_probe.py outputs/run --model outputs/run/srt/model --questions 96

It takes a `sdzero run` folder (for its task, split and settings), samples one response to each of the first
N Phase-2 questions with the model (default: the folder's SRT model), and runs one Phase-2 step at learning
rate 0 (so nothing changes) to read the answer-token log: per wrong / right responses, the mean log-probability
of the answer tokens under teacher and student and the share of responses where the teacher's is higher,
plus where the divergence sits. The Phase-2 questions are training questions, never the held-out set.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a `sdzero run` output folder")
    ap.add_argument("--model", default=None, help="default: RUN_DIR/srt/model")
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--output", default=None, help="default: RUN_DIR/answer-probe.json")
    args = ap.parse_args()

    from sdzero.config import GenerationConfig, RevisionConfig, TaskConfig, read_meta
    from sdzero.distill import DistillConfig, DistillTrainer
    from sdzero.generation import SamplingParams
    from sdzero.pipeline import RunConfig, stage_configs
    from sdzero.tasks import load_task

    run = Path(args.run_dir)
    settings = json.loads((run / "stages.json").read_text())["settings"]
    pick = lambda cls: cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})  # noqa: E731
    tc, gc, rc, cfg = pick(TaskConfig), pick(GenerationConfig), pick(RevisionConfig), pick(RunConfig)
    model = args.model or str(run / "srt" / "model")
    task = load_task(tc)
    questions = task.split(tc.split_sizes("phase2"))["phase2"][: args.questions]
    dc: DistillConfig = stage_configs(cfg, gc.seed)["distill"]
    dc.output_dir = str(run / "answer-probe")
    dc.questions_per_step, dc.max_steps, dc.learning_rate, dc.warmup_steps = len(questions), 1, 0.0, 0
    dc.selfloc_samples, dc.save_steps = 0, 1
    trainer = DistillTrainer(model, task, questions, dc, SamplingParams(gc.max_new_tokens, gc.temperature, gc.top_p),
                             rc.phrases(read_meta(model)), tc.system_prompt, gc.backend, gc.batch_size, gc.seed)
    try:
        m = trainer.train_step(0)
    finally:
        task.close()
    out = {k: v for k, v in m.items() if k.startswith(("answer_", "teacher_above", "kl_share", "kl_"))}
    out.update(model=model, questions=len(questions), reward=m["reward"])
    Path(args.output or run / "answer-probe.json").write_text(json.dumps(out, indent=1) + "\n")
    for k, v in out.items():
        print(f"{k:32} {v:.3f}" if isinstance(v, float) else f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
