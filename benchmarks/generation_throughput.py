"""Sampling throughput: sdzero's compact decoder against transformers' `generate`, side by side.

    python benchmarks/generation_throughput.py                      # embedded model, 64 prompts, 128-token cap
    python benchmarks/generation_throughput.py --model outputs/srt-embedded/model --prompts 96

Same model, prompts, batch size, cap and temperature for both; the decoders alternate (compact, compact without the
fused pass, generate, compact, ...) so that machine noise hits both alike. Prints responses/s and response tokens/s
of each, and the ratio; how many greedy responses come out the same with and without the fused pass, and as
`generate`'s; then the cost of one decoding step at batch 1 and at the batch size, which is why the compact decoder
refills its batch instead of letting it shrink; then a step as transformers runs it, with the weights laid out once
for oneDNN, and also with a KV cache that appends in place (the compact decoder before the fused pass), and through
sdzero's fused pass (what the compact decoder does now, for Llama-family models; the end-to-end comparison also runs
the compact decoder without it); then the cost of drawing a token from the logits (sdzero's sampler against softmax
+ torch.multinomial, which `generate` uses); then the compact decoder at each of --batch_sizes on the same prompts,
and its distance to the machine's floor: a decoding step must read every weight and every row's cached keys and
values once (their bytes / the measured read bandwidth) and do 2 x parameters x batch multiply-adds (/ the measured
matmul rate in the model's dtype), so the larger of the two is the least a step can take, and batch / that time the
most tokens per second at that batch size.
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
    ap.add_argument("--batch_sizes", default="32,64,128", help="compact decoder batch sizes to compare")
    ap.add_argument("--generate_batch_sizes", default="",
                    help="also run `generate` at these batch sizes, and compare each decoder at its best")
    ap.add_argument("--profile", action="store_true",
                    help="only: where a fused decoding step's time goes at each of --batch_sizes (torch.profiler)")
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
    if args.profile:
        for b in map(int, args.batch_sizes.split(",")):
            print_step_profile(model, b)
        return
    import sdzero.generation as generation

    fused_forward = generation.fused_forward
    decoders = ("compact", "compact, transformers' forward", "generate")

    def run(decoder: str, sampling: SamplingParams, seed: int) -> list:
        """One decoder over the prompts; the middle one is the compact decoder as it was before the fused pass
        (the model through transformers' forward)."""
        generation.fused_forward = fused_forward if decoder == "compact" else (lambda m: None)
        try:
            gen = HFGenerator(model, tok, batch_size=args.batch_size, show_progress=False,
                              decode="generate" if decoder == "generate" else "compact")
            return gen.generate(prompts, sampling, seed=seed)
        finally:
            generation.fused_forward = fused_forward

    totals = {d: {"s": 0.0, "seqs": 0, "tokens": 0, "capped": 0} for d in decoders}
    for r in range(args.rounds):
        for decoder in decoders:
            t0 = time.perf_counter()
            out = run(decoder, params, r)
            t = totals[decoder]
            t["s"] += time.perf_counter() - t0
            t["seqs"] += len(out)
            t["tokens"] += sum(c.num_tokens for cs in out for c in cs)
            t["capped"] += sum(c.finish_reason == "length" for cs in out for c in cs)
    print(f"model={args.model} prompts={args.prompts} cap={args.max_new_tokens} T={args.temperature} "
          f"batch={args.batch_size} rounds={args.rounds}")
    for d, t in totals.items():
        print(f"  {d:<30} {t['seqs'] / t['s']:6.2f} responses/s  {t['tokens'] / t['s']:7.1f} tokens/s  "
              f"mean length {t['tokens'] / t['seqs']:.1f}  at the cap {t['capped'] / t['seqs']:.0%}")
    rate = {d: t["seqs"] / t["s"] for d, t in totals.items()}
    print(f"compact / generate: {rate['compact'] / rate['generate']:.2f}x responses/s (without the fused pass "
          f"{rate[decoders[1]] / rate['generate']:.2f}x; the fused pass {rate['compact'] / rate[decoders[1]]:.2f}x)")
    # Same distribution, other rounding: how often greedy decoding comes out the same with and without the fused
    # pass (in bf16 a fused matmul may sum in another order, so a near-tie can fall the other way).
    # And against `generate`: in bf16 the laid-out weights alone already sum in another order than its matmuls.
    greedy = {d: [c.ids for cs in run(d, SamplingParams(args.max_new_tokens, 0.0), 0) for c in cs] for d in decoders}
    for a, b in ((decoders[0], decoders[1]), (decoders[0], "generate"), (decoders[1], "generate")):
        same = sum(x == y for x, y in zip(greedy[a], greedy[b]))
        print(f"greedy, {a} and {b}: {same} of {len(prompts)} responses the same token for token")
    # Why a batch that shrinks is wasteful: one decoding step costs nearly as much for 1 row as for a full batch.
    one, full = step_ms(model, 1), step_ms(model, args.batch_size)
    print(f"one decoding step (60-token context): {one:.0f} ms at batch 1, {full:.0f} ms at batch "
          f"{args.batch_size} ({full / one:.1f}x the time for {args.batch_size}x the rows)")
    # The matmuls' weights: a plain bf16 matmul on the CPU lays its weight out for oneDNN on every call; the
    # compact decoder lays every weight out once per generation (sdzero.generation.packed_linear_weights).
    # The KV cache: transformers' DynamicCache copies every layer's cache to append a column; sdzero's appends
    # in place (sdzero.generation._roomy_cache).
    # The fused pass: one matmul for q, k, v and one for gate, up per layer, the rotation of q and k in one go,
    # the mask made once per step, outside transformers' modules (sdzero.fused_forward).
    for b in sorted({args.batch_size, *map(int, args.batch_sizes.split(","))}):
        plain = step_ms(model, b, packed=False, roomy=False, fused=False)
        packed = step_ms(model, b, roomy=False, fused=False)
        both = step_ms(model, b, fused=False)
        fused = step_ms(model, b)
        print(f"one decoding step at batch {b:>4}: plain {plain:.0f} ms; weights laid out once {packed:.0f} ms "
              f"({plain / packed:.2f}x); and the cache appended in place {both:.0f} ms ({plain / both:.2f}x); "
              f"the fused pass {fused:.0f} ms ({plain / fused:.2f}x, {both / fused:.2f}x the one before)")
    # Drawing the token: a decoding step's other half. torch.multinomial (what `generate` uses, and the compact
    # decoder before) draws one exponential per vocabulary entry; sdzero's draw inverts the cumulative sum.
    vocab = model.get_output_embeddings().weight.shape[0]
    for b in sorted({1, args.batch_size, *map(int, args.batch_sizes.split(","))}):
        ours, multinomial = draw_ms(vocab, b, args.temperature)
        print(f"drawing a token, batch {b:>4}: sdzero {ours:6.1f} ms, softmax + torch.multinomial "
              f"{multinomial:6.1f} ms ({multinomial / ours:.1f}x)")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    by_batch = {b: {"s": 0.0, "tokens": 0, "seqs": 0} for b in batch_sizes}
    for r in range(args.rounds):
        for b in batch_sizes if r % 2 == 0 else batch_sizes[::-1]:
            gen = HFGenerator(model, tok, batch_size=b, show_progress=False)
            t0 = time.perf_counter()
            out = gen.generate(prompts, params, seed=r)
            by_batch[b]["s"] += time.perf_counter() - t0
            by_batch[b]["tokens"] += sum(c.num_tokens for cs in out for c in cs)
            by_batch[b]["seqs"] += len(out)
    generate_sizes = [int(b) for b in args.generate_batch_sizes.split(",") if b]
    by_generate_batch = {b: {"s": 0.0, "seqs": 0} for b in generate_sizes}
    for r in range(args.rounds if generate_sizes else 0):
        for b in generate_sizes if r % 2 == 0 else generate_sizes[::-1]:
            gen = HFGenerator(model, tok, batch_size=b, show_progress=False, decode="generate")
            t0 = time.perf_counter()
            by_generate_batch[b]["seqs"] += len(gen.generate(prompts, params, seed=r))
            by_generate_batch[b]["s"] += time.perf_counter() - t0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    params_count = sum(p.numel() for p in model.parameters())
    bandwidth, flops = read_bandwidth(), matmul_rate(next(model.parameters()).dtype)
    # A step also reads every row's keys and values once: at batch 128 and ~70 columns, nearly the weights' bytes
    config = model.config
    kv_heads, layers = config.num_key_value_heads, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_row = 2 * layers * kv_heads * head_dim * (60 + 10) * next(model.parameters()).element_size()
    print(f"weights {weights / 1e6:.0f} MB, KV cache {kv_per_row / 1e6:.2f} MB per row (the steps' mean context, 70), "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s, matmul {flops / 1e9:.0f} GFLOP/s: a step takes at least "
          f"max({weights / bandwidth * 1000:.0f} ms + {kv_per_row / bandwidth * 1000:.2f} ms x batch, "
          f"{2 * params_count / flops * 1000:.2f} ms x batch)")
    base = by_batch[batch_sizes[0]]
    for b, t in by_batch.items():
        ms = step_ms(model, b)
        floor_ms = max((weights + kv_per_row * b) / bandwidth, 2 * params_count * b / flops) * 1000
        print(f"  compact, batch {b:>4}: {t['seqs'] / t['s']:6.2f} responses/s {t['tokens'] / t['s']:7.1f} tokens/s "
              f"({(t['seqs'] / t['s']) / (base['seqs'] / base['s']):.2f}x batch {batch_sizes[0]}); one step "
              f"{ms:.0f} ms = {ms / floor_ms:.1f}x the floor, {b * 1000 / ms:.0f} of at most "
              f"{b * 1000 / floor_ms:.0f} tokens/s")
    if generate_sizes:
        rates = {b: t["seqs"] / t["s"] for b, t in by_generate_batch.items()}
        print("  generate, " + ", ".join(f"batch {b}: {v:.2f}" for b, v in rates.items()) + " responses/s")
        best_c = max(by_batch, key=lambda b: by_batch[b]["seqs"] / by_batch[b]["s"])
        best_g = max(rates, key=rates.get)
        c = by_batch[best_c]["seqs"] / by_batch[best_c]["s"]
        print(f"each at its best batch size: compact (batch {best_c}) / generate (batch {best_g}): "
              f"{c / rates[best_g]:.2f}x responses/s")


def print_step_profile(model, batch: int, context: int = 60, steps: int = 10) -> None:
    """Where a fused decoding step's time goes (the compact decoder's step, as `step_ms` runs it): the matmuls
    (and the rate at which they read the weights), attention, and every other op (norms, rotation, residuals,
    cache writes), per step, from torch.profiler's self times."""
    import torch

    from sdzero.fused_forward import fused_forward
    from sdzero.generation import _roomy_cache

    cache, mask = _roomy_cache(), torch.ones(batch, context, dtype=torch.long)
    with torch.no_grad():
        forward = fused_forward(model)
        if forward is None:
            print("the fused pass does not cover this model: no profile")
            return
        forward(torch.randint(0, 1000, (batch, context)), mask, torch.arange(context).expand(batch, -1), cache)
        token = torch.randint(0, 1000, (batch, 1))

        def step(i: int) -> None:
            nonlocal mask
            mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
            forward(token, mask, torch.full((batch, 1), context + i), cache)

        step(0)
        with torch.profiler.profile() as prof:
            for i in range(1, steps + 1):
                step(i)
    groups = {"matmuls": 0.0, "attention": 0.0, "other": 0.0}
    other_calls = 0
    for event in prof.key_averages():
        name = event.key
        kind = "matmuls" if ("linear" in name or name in ("aten::mm", "aten::addmm")) else \
            "attention" if "scaled_dot_product" in name else "other"
        groups[kind] += event.self_cpu_time_total / 1000 / steps  # ms per step
        other_calls += event.count // steps if kind == "other" else 0
    total = sum(groups.values())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"fused decoding step at batch {batch:>4} ({context}-{context + steps} cached columns): {total:.0f} ms; "
          + ", ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in groups.items())
          + f"; the matmuls read the weights at {weights / (groups['matmuls'] / 1000) / 1e9:.1f} GB/s; "
          f"{other_calls} other op calls per step")


def matmul_rate(dtype, n: int = 2048, rounds: int = 5) -> float:
    """FLOP per second of the best of a few n x n x n matmuls in `dtype`: what the CPU's matrix units give."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def read_bandwidth(megabytes: int = 1024, rounds: int = 5) -> float:
    """Bytes per second the CPU reads from memory: the best of a few sums over a buffer far larger than
    any cache."""
    import torch

    buf = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        buf.sum()
        best = min(best, time.perf_counter() - t0)
    return buf.numel() * 4 / best


def draw_ms(vocab: int, batch: int, temperature: float, rounds: int = 10) -> tuple[float, float]:
    """Milliseconds to draw one token per row from bf16 logits: sdzero's sampler, then softmax + multinomial."""
    import torch

    from sdzero.generation import _sample

    logits = (torch.randn(batch, vocab) * 3).to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    ways = {"sdzero": lambda: _sample(logits, temperature, 1.0, g),
            "multinomial": lambda: torch.multinomial(torch.softmax(logits.float() / temperature, -1), 1, generator=g)}
    times = {}
    for name, draw in ways.items():
        draw()
        t0 = time.perf_counter()
        for _ in range(rounds):
            draw()
        times[name] = (time.perf_counter() - t0) / rounds * 1000
    return times["sdzero"], times["multinomial"]


def step_ms(model, batch: int, context: int = 60, steps: int = 20, packed: bool = True, roomy: bool = True,
            fused: bool = True) -> float:
    """Mean milliseconds of one cached decoding step (no sampling) at this batch size, called as the compact
    decoder calls it (attention mask and positions given). `fused`: sdzero's fused pass (sdzero.fused_forward;
    it lays its own weights out, so `packed` does not apply), which the compact decoder takes where it covers
    the model; else transformers' forward, with `packed`: the linear layers' weights laid out once for oneDNN;
    `roomy`: a KV cache that appends in place (else transformers' DynamicCache)."""
    from contextlib import nullcontext

    import torch
    from transformers import DynamicCache

    from sdzero.fused_forward import fused_forward
    from sdzero.generation import _roomy_cache, packed_linear_weights, transformers_forward

    cache = _roomy_cache() if roomy else DynamicCache()
    mask = torch.ones(batch, context, dtype=torch.long)
    with torch.no_grad():
        forward = fused_forward(model) if fused else None
        if fused and forward is None:
            return float("nan")  # a model the fused pass does not cover
        with packed_linear_weights(model) if packed and not fused else nullcontext():
            forward = forward or transformers_forward(model)
            forward(torch.randint(0, 1000, (batch, context)), mask, torch.arange(context).expand(batch, -1), cache)
            token = torch.randint(0, 1000, (batch, 1))
            t0 = time.perf_counter()
            for i in range(steps):
                mask = torch.cat([mask, mask.new_ones(batch, 1)], 1)
                forward(token, mask, torch.full((batch, 1), context + i), cache)
    return (time.perf_counter() - t0) / steps * 1000


if __name__ == "__main__":
    main()
