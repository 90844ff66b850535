"""SRT training speed: padded batches vs padding-free batches, side by side in one run.

    python benchmarks/srt_step.py [--data OUTPUT_OF_COLLECT] [--steps 6] [--rounds 2]

Both variants train the embedded model with the Trainer loop `sdzero srt` uses (bf16 autocast where the CPU
has it, batch 8), on the same records in the same order, from the same weights; the rounds alternate the
two so that drift in the machine's speed hits both. Records come from a `sdzero collect` folder (kept.jsonl)
or, without --data, are synthetic with the lengths measured on the embedded default (prompt 56 tokens, draft
1-128, revision 1-107). Prints seconds per step, supervised and real tokens per second, the ratio, and the
losses of the two (they should agree to rounding).
"""

import argparse
import random
import shutil
import tempfile
import time

from sdzero.chat import ControlPhrases, turn_end_id
from sdzero.models import load_model, load_tokenizer
from sdzero.srt import SRTConfig, build_records
from sdzero.training import IGNORE, train_records


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


def run(records: list[dict], padding_free: bool, pad_id: int, workdir: str) -> tuple[float, float]:
    model = load_model("embedded", dtype="fp32")
    model.config.use_cache = False
    cfg = SRTConfig(output_dir=workdir, learning_rate=1e-5, num_train_epochs=1, per_device_train_batch_size=8,
                    padding_free=padding_free, save_steps=10**6, logging_steps=1, resume=False, warmup_steps=0)
    t0 = time.perf_counter()
    history = train_records(model, records, cfg, pad_id, "bench")
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in history if "loss" in h]
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds, sum(losses) / len(losses)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a `sdzero collect` output folder; default: synthetic records")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per measurement (batch 8)")
    ap.add_argument("--rounds", type=int, default=2)
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
    times = {True: [], False: []}
    loss = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for padding_free in ((False, True) if r % 2 == 0 else (True, False)):
                seconds, loss[padding_free] = run(records, padding_free, tok.pad_token_id, f"{tmp}/{padding_free}-{r}")
                times[padding_free].append(seconds)
    steps = len(records) // 8
    print(f"{'batches':<14} {'s/step':>7} {'real tok/s':>10} {'supervised tok/s':>17} {'mean loss':>9}")
    for padding_free in (False, True):
        t = min(times[padding_free])
        print(f"{'padding-free' if padding_free else 'padded':<14} {t / steps:>7.2f} {real / t:>10.0f} "
              f"{supervised / t:>17.0f} {loss[padding_free]:>9.4f}")
    print(f"padding-free vs padded: {min(times[False]) / min(times[True]):.2f}x (best of {args.rounds} each)")


if __name__ == "__main__":
    main()
