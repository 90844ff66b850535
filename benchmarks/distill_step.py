"""One Phase-2 step: sdzero's trainer against TRL's experimental SDFT trainer, side by side in one run.

    python benchmarks/distill_step.py                  # embedded SmolLM2-135M, 8 responses x 128 tokens
    python benchmarks/distill_step.py --model PATH --batch 16 --length 256

Both sides get the same model, the same prompts and the same responses, and the same teacher sequence
(chat(x) + y + control phrase, then y again); each uses its own default optimizer (both a fused AdamW on
torch >= 2.8) and default settings otherwise. Each measurement runs in its own fresh process, one after
the other. Reported apart:
- generation excluded: fixed responses of exactly --length tokens; forward, backward, optimizer step.
  TRL: `SDFTTrainer.compute_loss` (its teacher and student passes and loss) + backward + step.
  sdzero: `DistillTrainer.train_step` with the rollouts replaced by the fixed responses.
- generation included: each trainer's own whole step, sampling up to --length tokens per prompt
  (TRL: `training_step`, whose `_prepare_inputs` generates; its teacher context is the phrase text, so
  its teacher sequence is shorter than sdzero's by one copy of y: a difference in TRL's favour).
Modes: top-k (k=64, 0.5 forward + 0.5 reverse, both sides) and full vocabulary (same mix); sdzero also
with activation checkpointing (`--gradient_checkpointing`), which trades compute for memory.
Then where each sdzero step's time goes: generation, teacher forward, student forward with the loss (and
the teacher's log-probs of the targets), backward, optimizer, and the rest.
Numbers: response tokens per second over --steps timed steps (after one warm-up step); the peak resident
memory of a step above the process's resident memory just before it, measured on the second step, once
the optimizer state exists (model, teacher copy and optimizer state are each side's baseline; workers run
with MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the resident set); model-FLOP utilisation of
the generation-excluded step against this CPU's own matmul rate
measured here (FLOPs = 6 N per student token + 2 N per teacher token, N = parameters; attention ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples resident memory every 2 ms while active."""

    def __enter__(self):
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def above_base_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def matmul_gflops(dtype_name: str, n: int = 2048, reps: int = 8) -> float:
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


# ------------------------------------------------------------------------------------------------ workers

def setup_sdzero(args, mode, checkpointing=False):
    import torch

    from sdzero.chat import ControlPhrases
    from sdzero.config import TaskConfig
    from sdzero.distill import DistillConfig, DistillTrainer
    from sdzero.generation import SamplingParams
    from sdzero.tasks import load_task

    task = load_task(TaskConfig())
    questions = task.split({"eval": 0, "phase1": 0, "phase2": args.batch})["phase2"]
    cfg = DistillConfig(output_dir=os.path.join(args.scratch, f"sdzero-{mode}"), max_steps=100,
                        questions_per_step=args.batch, micro_batch_size=args.batch, divergence=mode,
                        divergence_kind="mixed", warmup_steps=0, precision=args.precision, selfloc_samples=0,
                        gradient_checkpointing=checkpointing)
    trainer = DistillTrainer(args.model, task, questions, cfg, SamplingParams(args.length, 1.0), ControlPhrases(),
                             generation_batch_size=args.batch)
    return trainer, torch


def fixed_responses(tokenizer, batch, length, seed=0):
    import torch

    from sdzero.generation import Completion

    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    out = []
    for _ in range(batch):
        ids = [t for t in torch.randint(0, vocab, (length * 2,), generator=g).tolist() if t not in special][:length]
        out.append(Completion(ids, tokenizer.decode(ids), "length"))
    return out


def time_parts(trainer) -> dict[str, float]:
    """Wrap the step's parts so each adds its seconds to the returned dict: generation, the teacher's forward
    pass, the student's forward pass with the loss (and the teacher's log-probs of the targets), backward,
    and the optimizer step."""
    import contextlib

    parts = {"generation": 0.0, "teacher forward": 0.0, "student forward, loss, teacher log-probs": 0.0,
             "backward": 0.0, "optimizer": 0.0}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                parts[name] += time.perf_counter() - t0
        return wrapper

    weights = trainer.teacher.weights

    @contextlib.contextmanager
    def timed_weights(*a, **k):
        with weights(*a, **k) as teacher:
            yield timed("teacher forward", teacher)

    trainer.teacher.weights = timed_weights
    trainer.rollouts = timed("generation", trainer.rollouts)
    # divergence() holds the teacher's pass too: its share is taken off once the steps are done
    trainer.divergence = timed("student forward, loss, teacher log-probs", trainer.divergence)
    trainer.acc.backward = timed("backward", trainer.acc.backward)
    trainer.optimizer.step = timed("optimizer", trainer.optimizer.step)
    return parts


def run_sdzero(args, mode, with_generation, checkpointing=False):
    trainer, torch = setup_sdzero(args, mode, checkpointing)
    if not with_generation:
        responses = fixed_responses(trainer.tokenizer, args.batch, args.length)
        idx = list(range(args.batch))
        rewards = [float(i % 2) for i in idx]
        trainer.rollouts = lambda step: (idx, responses, rewards)
    n_params = sum(p.numel() for p in trainer.policy.parameters())
    trainer.train_step(0)  # warm-up: creates the optimizer state
    with PeakRSS() as mem:
        trainer.train_step(1)
    parts = time_parts(trainer)
    t0 = time.perf_counter()
    tokens = 0
    for s in range(2, 2 + args.steps):
        m = trainer.train_step(s)
        tokens += m["tokens"]
    wall = time.perf_counter() - t0
    student_tokens = sum(len(p) for p in trainer.prompt_ids[: args.batch]) + args.batch * args.length
    teacher_tokens = student_tokens + args.batch * (args.length + len(trainer.suffix[0.0]))
    parts["student forward, loss, teacher log-probs"] -= parts["teacher forward"]
    parts["other (pairs, logging, heat-maps, clipping)"] = wall - sum(parts.values())
    return {"tokens_per_s": tokens / wall, "step_s": wall / args.steps, "peak_mb": mem.above_base_mb,
            "flops": 6 * n_params * student_tokens + 2 * n_params * teacher_tokens,
            "parts": {k: v / args.steps for k, v in parts.items()}}


def run_trl(args, mode, with_generation):
    import torch
    from datasets import Dataset
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from sdzero.chat import ControlPhrases, chat_prompt_ids, text_ids
    from sdzero.config import TaskConfig
    from sdzero.models import load_model, load_tokenizer
    from sdzero.tasks import load_task

    task = load_task(TaskConfig())
    questions = task.split({"eval": 0, "phase1": 0, "phase2": args.batch})["phase2"]
    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype="fp32")
    phrase = ControlPhrases().suffix_text(0.0)
    rows = [{"prompt": [{"role": "user", "content": q.prompt}], "privileged_context": phrase} for q in questions]
    bf16 = args.precision == "bf16"
    config = SDFTConfig(output_dir=os.path.join(args.scratch, f"trl-{mode}"), per_device_train_batch_size=args.batch,
                        num_generations=1, max_completion_length=args.length, temperature=1.0,
                        distillation_mode="topk_logits" if mode == "topk" else "full_logits", distillation_topk=64,
                        distillation_alpha=0.5, teacher_model_kind="base", bf16=bf16, use_cpu=True,
                        report_to=[], logging_steps=1000, save_strategy="no", learning_rate=5e-6,
                        max_prompt_length=1024)
    trainer = SDFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1  # normally set by Trainer's own loop, which we bypass
    opt = trainer.create_optimizer()  # TRL's own default optimizer (transformers: fused AdamW on torch >= 2.8)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    prompts = [chat_prompt_ids(tok, q.prompt) for q in questions]
    responses = fixed_responses(tok, args.batch, args.length)
    suffix = text_ids(tok, phrase)
    pad = tok.pad_token_id

    def left_pad(seqs):
        width = max(len(s) for s in seqs)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        return ids, mask

    p_ids, p_mask = left_pad(prompts)
    c_ids = torch.tensor([r.ids for r in responses])
    c_mask = torch.ones_like(c_ids)
    # The same teacher sequence as sdzero's: chat(x) + y + phrase, then y (the completion) again.
    t_prompt, t_mask = left_pad([p + r.ids + suffix for p, r in zip(prompts, responses)])
    fixed = {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids, "completion_mask": c_mask,
             "teacher_input_ids": torch.cat([t_prompt, c_ids], 1), "teacher_attention_mask": torch.cat([t_mask, c_mask],
                                                                                                      1)}

    def step():
        trainer.model.train()
        if with_generation:
            loss = trainer.training_step(trainer.model, rows, None)  # generates, then forward + backward
            n = int(trainer._buffered_inputs[0]["completion_mask"].sum())
        else:
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(trainer.model, fixed)
            trainer.accelerator.backward(loss)
            n = int(c_mask.sum())
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return n

    step()  # warm-up: creates the optimizer state
    with PeakRSS() as mem:
        step()
    t0 = time.perf_counter()
    tokens = sum(step() for _ in range(args.steps))
    wall = time.perf_counter() - t0
    student_tokens = int(p_mask.sum()) + args.batch * args.length
    teacher_tokens = int(t_mask.sum()) + args.batch * args.length
    return {"tokens_per_s": tokens / wall, "step_s": wall / args.steps, "peak_mb": mem.above_base_mb,
            "flops": 6 * n_params * student_tokens + 2 * n_params * teacher_tokens}


# ------------------------------------------------------------------------------------------------ driver

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--batch", type=int, default=8, help="responses per step")
    ap.add_argument("--length", type=int, default=128, help="response tokens")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after the first (memory) step")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--modes", default="topk,full")
    ap.add_argument("--no_generation_included", action="store_true", help="skip the generation-included rows")
    ap.add_argument("--scratch", default="/tmp/sdzero-bench")
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "MODE", "GEN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, mode, gen = args.worker
        if impl == "trl":
            result = run_trl(args, mode, gen == "with")
        else:
            result = run_sdzero(args, mode, gen == "with", checkpointing=impl == "sdzero-ckpt")
        print("RESULT " + json.dumps(result), flush=True)
        return

    import torch

    peak = matmul_gflops(args.precision)
    print(f"model={args.model} batch={args.batch} length={args.length} precision={args.precision} "
          f"threads={torch.get_num_threads()}; this CPU's {args.precision} matmul: {peak:.0f} GFLOP/s", flush=True)
    results = {}
    gens = ["without"] + ([] if args.no_generation_included else ["with"])
    for gen in gens:
        for mode in args.modes.split(","):
            for impl in ("sdzero", "sdzero-ckpt", "trl") if gen == "without" else ("sdzero", "trl"):
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, mode, gen, "--model", args.model,
                       "--batch", str(args.batch), "--length", str(args.length), "--steps", str(args.steps),
                       "--precision", args.precision, "--scratch", args.scratch]
                t0 = time.perf_counter()
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors leave the resident set
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    print(f"{impl}/{mode}/{gen} generation failed:\n{proc.stderr[-3000:]}", flush=True)
                    continue
                results[(impl, mode, gen)] = r = json.loads(line[7:])
                print(f"  {impl:<11} {mode:<4} generation {gen:<7}: {r['tokens_per_s']:8.1f} tok/s  "
                      f"step {r['step_s']:6.2f} s  peak +{r['peak_mb']:7.0f} MB  ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    print("\nsdzero vs TRL SDFT (same model, batch, lengths; one run). sdzero-ckpt = activation checkpointing on:")
    print(f"{'sdzero':<12} {'mode':<6} {'generation':<11} {'tokens/s ratio':>15} {'peak memory ratio':>18} "
          f"{'MFU sdzero':>11} {'MFU TRL':>8}")
    for gen in gens:
        for mode in args.modes.split(","):
            for impl in ("sdzero", "sdzero-ckpt"):
                a, b = results.get((impl, mode, gen)), results.get(("trl", mode, gen))
                if not (a and b):
                    continue
                mfu = ""
                if gen == "without":
                    mfu_a = a["flops"] / a["step_s"] / 1e9 / peak
                    mfu_b = b["flops"] / b["step_s"] / 1e9 / peak
                    mfu = f"{mfu_a:11.1%} {mfu_b:8.1%}"
                print(f"{impl:<12} {mode:<6} {gen:<11} {a['tokens_per_s'] / b['tokens_per_s']:14.2f}x "
                      f"{a['peak_mb'] / max(b['peak_mb'], 1e-9):17.2f}x {mfu}")
    print("\nwhere an sdzero step goes (seconds per step, share of the step):")
    for (impl, mode, gen), r in results.items():
        if impl == "trl":
            continue
        shares = ", ".join(f"{name} {sec:.2f} ({sec / r['step_s']:.0%})" for name, sec in r["parts"].items()
                           if sec > 0.005)
        print(f"  {impl}/{mode}/generation {gen}: {shares}")


if __name__ == "__main__":
    main()
