"""SRT training speed: padded batches vs padding-free batches (attention under one mask over the row, as
transformers does it, and record by record, as sdzero does), side by side in one run; then where a
padding-free step's time goes.

    python benchmarks/srt_step.py [--data OUTPUT_OF_COLLECT] [--steps 6] [--rounds 2]

The variants train the embedded model with the Trainer loop `sdzero srt` uses (bf16 autocast where the CPU
has it, batch 8), on the same records in the same order, from the same weights; the rounds rotate the
variants so that drift in the machine's speed hits each. Records come from a `sdzero collect` folder
(kept.jsonl) or, without --data, are synthetic with the lengths measured on the embedded default (prompt 56
tokens, draft 1-128, revision 1-107). Prints seconds per step, supervised and real tokens per second, the
ratios, and the losses (they should agree to rounding). The breakdown then times the parts of one step
(forward, backward, gradient clipping + fused AdamW) in a bare loop over the same padding-free batches, and
with --profile lists the operators that take the most time in one such step.
"""

import argparse
import contextlib
import random
import shutil
import tempfile
import time

from sdzero import training
from sdzero.chat import ControlPhrases, turn_end_id
from sdzero.models import load_model, load_tokenizer
from sdzero.packed_attention import packed_attention
from sdzero.srt import SRTConfig, build_records
from sdzero.training import IGNORE, PackCollator, supervised_nll, train_records

# name: (padding_free, attention record by record)
VARIANTS = {"padded": (False, False), "packed, row mask": (True, False), "packed": (True, True)}


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    def tokens(count: int) -> list[int]:
        return [rng.randrange(100, 40000) for _ in range(count)]

    for _ in range(n):
        rows.append({"prompt_ids": tokens(56), "y_init_ids": tokens(min(128, int(rng.expovariate(1 / 24)) + 1)),
                     "y_revised_ids": tokens(min(107, int(rng.expovariate(1 / 20)) + 1)),
                     "r_init": float(rng.random() < 0.5)})
    return rows


def run(records: list[dict], variant: str, pad_id: int, workdir: str) -> tuple[float, float]:
    padding_free, by_record = VARIANTS[variant]
    model = load_model("embedded", dtype="fp32")
    model.config.use_cache = False
    cfg = SRTConfig(output_dir=workdir, learning_rate=1e-5, num_train_epochs=1, per_device_train_batch_size=8,
                    padding_free=padding_free, save_steps=10**6, logging_steps=1, resume=False, warmup_steps=0)
    # train_records attends record by record on padding-free rows; the row-mask variant turns that off
    original = training.packed_attention
    training.packed_attention = original if by_record else (lambda m: contextlib.nullcontext(False))
    try:
        t0 = time.perf_counter()
        history = train_records(model, records, cfg, pad_id, "bench")
        seconds = time.perf_counter() - t0
    finally:
        training.packed_attention = original
    losses = [h["loss"] for h in history if "loss" in h]
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds, sum(losses) / len(losses)


def breakdown(records: list[dict], rounds: int, profile: bool) -> None:
    """Median seconds of forward, backward and optimizer over the padding-free batches; with `profile`, the
    operators that take the most time in one more step."""
    import torch

    model = load_model("embedded", dtype="fp32")
    model.config.use_cache = False
    model.train()
    optimizer = training.make_adamw(list(model.parameters()), 0.0, 0.0)  # lr 0: every pass sees the same weights
    batches = [PackCollator()(records[i:i + 8]) for i in range(0, len(records), 8)]

    def step(batch: dict) -> tuple[float, float, float]:
        batch = dict(batch)
        labels = batch.pop("labels")
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=training.use_bf16("auto")):
            loss = supervised_nll(model(**batch), labels)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    with packed_attention(model):  # as train_records runs padding-free batches
        parts = [step(batch) for _ in range(rounds) for batch in batches]
    med = [sorted(col)[len(col) // 2] for col in zip(*parts)]
    print(f"\nwhere a padding-free step goes (bare loop, median of {len(parts)} steps):")
    for name, seconds in zip(("forward", "backward", "clip + AdamW"), med):
        print(f"  {name:<13} {seconds:6.2f} s  {seconds / sum(med):4.0%}")
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof, packed_attention(model):
            step(batches[0])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a `sdzero collect` output folder; default: synthetic records")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per measurement (batch 8)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="also list the costliest operators of one step")
    args = ap.parse_args()
    tok = load_tokenizer("embedded")
    if args.data:
        from sdzero.runfolder import load_kept

        rows, meta = load_kept(args.data)
        phrases = ControlPhrases.from_dict(meta.get("control_phrases"))
    else:
        rows, phrases = synthetic_rows(4 * args.steps), ControlPhrases()
    rev, gen, _ = build_records(rows, phrases.suffix_ids(tok), turn_end_id(tok), 1024)
    records = (rev + gen)[: 8 * args.steps]
    random.Random(0).shuffle(records)
    supervised = sum(sum(x != IGNORE for x in r["labels"][1:]) for r in records)
    real = sum(len(r["input_ids"]) for r in records)
    padded = sum(8 * max(len(r["input_ids"]) for r in records[i:i + 8]) for i in range(0, len(records), 8))
    print(f"{len(records)} records, {real} tokens ({padded} with padding), {supervised} supervised")
    names = list(VARIANTS)
    times: dict[str, list[float]] = {n: [] for n in names}
    loss = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                seconds, loss[name] = run(records, name, tok.pad_token_id, f"{tmp}/{r}")
                times[name].append(seconds)
    steps = len(records) // 8
    print(f"{'batches':<17} {'s/step':>7} {'real tok/s':>10} {'supervised tok/s':>17} {'mean loss':>9} "
          f"{'vs padded':>9} {'vs row mask':>11}")
    for name in names:
        t = min(times[name])
        print(f"{name:<17} {t / steps:>7.2f} {real / t:>10.0f} {supervised / t:>17.0f} {loss[name]:>9.4f} "
              f"{min(times['padded']) / t:>8.2f}x {min(times['packed, row mask']) / t:>10.2f}x")
    print(f"(whole Trainer runs of {steps} steps, model load excluded, best of {args.rounds} each)")
    breakdown(records, args.rounds, args.profile)


if __name__ == "__main__":
    main()
