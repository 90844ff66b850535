"""Sampling throughput: sdzero's compact decoder against transformers' `generate`, side by side.

    python benchmarks/generation_throughput.py                      # embedded model, 64 prompts, 128-token cap
    python benchmarks/generation_throughput.py --model outputs/srt-embedded/model --prompts 96

Same model, prompts, batch size, cap and temperature for both; the two decoders alternate (compact,
generate, compact, generate, ...) so that machine noise hits both alike. Prints responses/s and
response tokens/s of each, and the ratio; then the cost of one decoding step at batch 1 and at the batch
size, which is why the compact decoder refills its batch instead of letting it shrink.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max_new_tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from sdzero.config import TaskConfig
    from sdzero.chat import build_prompts
    from sdzero.generation import HFGenerator, SamplingParams
    from sdzero.models import load_model_and_tokenizer
    from sdzero.tasks import load_task

    task = load_task(TaskConfig())
    questions = task.split({"eval": args.prompts})["eval"]
    model, tok = load_model_and_tokenizer(args.model, "auto", None)
    prompts = build_prompts(tok, questions, None, None)
    params = SamplingParams(args.max_new_tokens, args.temperature)
    totals = {d: {"s": 0.0, "seqs": 0, "tokens": 0, "capped": 0} for d in ("compact", "generate")}
    for r in range(args.rounds):
        for decode in ("compact", "generate"):
            gen = HFGenerator(model, tok, batch_size=args.batch_size, show_progress=False, decode=decode)
            t0 = time.perf_counter()
            out = gen.generate(prompts, params, seed=r)
            t = totals[decode]
            t["s"] += time.perf_counter() - t0
            t["seqs"] += len(out)
            t["tokens"] += sum(c.num_tokens for cs in out for c in cs)
            t["capped"] += sum(c.finish_reason == "length" for cs in out for c in cs)
    print(f"model={args.model} prompts={args.prompts} cap={args.max_new_tokens} T={args.temperature} "
          f"batch={args.batch_size} rounds={args.rounds}")
    for d, t in totals.items():
        print(f"  {d:<8} {t['seqs'] / t['s']:6.2f} responses/s  {t['tokens'] / t['s']:7.1f} tokens/s  "
              f"mean length {t['tokens'] / t['seqs']:.1f}  at the cap {t['capped'] / t['seqs']:.0%}")
    c, g = totals["compact"], totals["generate"]
    print(f"compact / generate: {(c['seqs'] / c['s']) / (g['seqs'] / g['s']):.2f}x responses/s")
    # Why a batch that shrinks is wasteful: one decoding step costs nearly as much for 1 row as for a full batch.
    one, full = step_ms(model, 1), step_ms(model, args.batch_size)
    print(f"one decoding step (60-token context): {one:.0f} ms at batch 1, {full:.0f} ms at batch "
          f"{args.batch_size} ({full / one:.1f}x the time for {args.batch_size}x the rows)")


def step_ms(model, batch: int, context: int = 60, steps: int = 20) -> float:
    """Mean milliseconds of one cached decoding step (no sampling) at this batch size."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.randint(0, 1000, (batch, context)), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        token = torch.randint(0, 1000, (batch, 1))
        t0 = time.perf_counter()
        for _ in range(steps):
            model(input_ids=token, past_key_values=cache, use_cache=True)
    return (time.perf_counter() - t0) / steps * 1000


if __name__ == "__main__":
    main()
