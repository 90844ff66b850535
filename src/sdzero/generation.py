"""Batched sampling from token-id prompts.

Every caller (eval, Phase-1 collection, Phase-2 rollouts, baselines) speaks to a `Generator`: prompts go
in as token ids and completions come out as token ids + text + finish reason. Prompts are ids, not
messages, because the reviser continues an assistant turn that is already open (see `sdzero.chat`).
`VLLMGenerator` (GPUs, optional) fills the same interface, so callers never change.

Simplifications of `HFGenerator`, stated up front:
- Prompts are sorted by length and batched with left padding. The default decoder ("compact") samples
  token by token through one batch that drops a row (and its KV cache) when it finishes and refills the
  free slots with the next prompts, so neither a long response nor a half-empty batch holds up the rest;
  `decode="generate"` runs transformers' `generate` batch by batch instead (slower; kept as a reference).
- Seeding: the compact decoder draws from one generator seeded per call, the `generate` path seeds each
  batch (seed + batch index). Either way the same seed, prompts and batch size give the same samples; a
  different batch size gives different (equally valid) samples.
- Sampling is plain temperature sampling over the full vocabulary (top-k off, top-p 1.0 unless asked),
  because the methods assume samples from the policy itself.
- On a CPU with oneDNN bf16 kernels, the compact decoder runs the model's bf16 linear layers from weights
  laid out once per call in oneDNN's blocked format (`packed_linear_weights`): a plain bf16 matmul lays
  the weight out again every time, in every layer of every step. Same arithmetic (bf16 products, fp32
  sums), the sums possibly in another order; a copy of the weights for the length of the call. Its KV
  cache appends each step's column in place rather than copying the whole cache (`_roomy_cache`).
- For Llama-family models (Llama, Qwen2, Qwen3) the compact decoder runs its own forward pass over the model's
  weights, with fused projections (`sdzero.fused_forward`); other models go through transformers' forward.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence


from sdzero.errors import SDZeroError
from sdzero.fused_forward import FusedForward, fused_forward, laid_out_linear, lay_out, onednn_bf16_weight
from sdzero.logs import progress

# Sequences decoded together. On a CPU a decoding step is far from its floor at any batch size, and a larger
# batch shares a step's fixed cost among more rows: on the embedded model 128 gives 1.5x the responses per
# second of 32 (benchmarks/generation_throughput.py, RESULTS.md). Lower it where memory is short (a 4B model
# with long responses on one GPU); vLLM schedules its own batches.
DEFAULT_BATCH_SIZE = 128


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    n: int = 1  # completions per prompt

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.n < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise SDZeroError(f"invalid sampling parameters: {self}")


@dataclass
class Completion:
    ids: list[int]  # generated ids, the stop token excluded
    text: str
    finish_reason: Literal["stop", "length"]
    stop_id: int | None = None  # the stop token that ended it (not in `ids`), None when cut at the cap

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


class Generator:
    """Interface: `generate(prompts, params, seed)` -> for each prompt, `params.n` completions."""

    tokenizer: Any

    def generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, seed: int = 0, desc: str = "generating"
    ) -> list[list[Completion]]:
        raise NotImplementedError


def stop_token_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """End-of-turn ids: the tokenizer's eos, the chat template's end of turn, and whatever the model's
    generation config lists."""
    from sdzero.chat import turn_end_id

    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if getattr(tokenizer, "chat_template", None):
        ids.add(turn_end_id(tokenizer))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    if not ids:
        raise SDZeroError("the tokenizer has no end-of-sequence token; generation would never stop")
    return sorted(ids)


class HFGenerator(Generator):
    """A transformers model on its own device: the compact decoder below, or `generate`."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = DEFAULT_BATCH_SIZE, show_progress: bool = True,
                 decode: str = "compact"):
        if decode not in ("compact", "generate"):
            raise SDZeroError(f"decode must be compact or generate, not {decode!r}")
        self.decode = decode
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.stop_ids = stop_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_ids[0]

    def _decode_stream(self, prompts: Sequence[list[int]], items: list[tuple[int, int]], params: SamplingParams,
                       seed: int, bar: Any, forward: Any) -> dict[tuple[int, int], list[int]]:
        """Token-by-token decoding of every item through one batch that is refilled as rows finish.

        A row leaves the batch (and its KV cache) when it stops; once `refill` slots are free, the next
        prompts are prefilled together and joined to the running batch, right-aligned on the cache's last
        column (left padding, as for a fresh batch). So the batch stays near `batch_size` live rows until
        the queue runs dry, and a long response never holds up the prompts behind it. Same distribution as
        `generate` with do_sample, top_k=0 (temperature, then top-p); greedy when T = 0. `forward(ids, mask,
        positions, cache)` gives each row's next-token logits (`_forward_for`).
        """
        import torch

        device = next(self.model.parameters()).device
        rng = torch.Generator(device=device).manual_seed(seed)
        stops = torch.tensor(self.stop_ids, device=device)
        refill = max(1, self.batch_size // 8)  # prefill in groups: one prompt at a time would waste passes
        queue = list(items)
        out: dict[tuple[int, int], list[int]] = {}
        live: list[tuple[int, int]] = []  # the item each row of the batch is decoding
        cache = mask = next_pos = logits = None
        made = torch.zeros(0, dtype=torch.long, device=device)  # tokens generated so far, per live row

        def prefill(group: list[tuple[int, int]]) -> tuple[Any, Any, Any, Any]:
            ids, m = (t.to(device) for t in _left_pad([prompts[i] for i, _ in group], self.pad_id))
            pos = (m.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens only
            c = _roomy_cache()
            return c, m, pos[:, -1] + 1, forward(ids, m, pos, c)

        while queue or live:
            if queue and (not live or self.batch_size - len(live) >= min(refill, len(queue))):
                group, queue = queue[: self.batch_size - len(live)], queue[self.batch_size - len(live) :]
                c, m, pos, lg = prefill(group)
                if not live:
                    cache, mask, next_pos, logits = c, m, pos, lg
                else:
                    cache, mask = _join_caches(cache, mask, c, m)
                    next_pos, logits = torch.cat([next_pos, pos]), torch.cat([logits, lg])
                made = torch.cat([made[: len(live)], made.new_zeros(len(group))])
                live += group
                for it in group:
                    out[it] = []
            token = _sample(logits, params.temperature, params.top_p, rng)
            for it, t in zip(live, token.tolist()):
                out[it].append(t)
            made += 1
            done = torch.isin(token, stops) | (made >= params.max_new_tokens)
            if done.any():
                bar.update(int(done.sum()))
                keep = (~done).nonzero().squeeze(1)
                live = [live[r] for r in keep.tolist()]
                if not live:
                    continue
                cache.batch_select_indices(keep)
                token, mask, next_pos, made = token[keep], mask[keep], next_pos[keep], made[keep]
                lead = int(mask.any(0).nonzero()[0])  # columns no live row uses any more
                if lead:
                    mask = mask[:, lead:]
                    for layer in cache.layers:
                        layer.drop_leading(lead)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = forward(token[:, None], mask, next_pos[:, None], cache)
            next_pos = next_pos + 1
        return out

    def _forward_for(self) -> Any:
        """The model's next-token logits as the compact decoder calls them: sdzero's fused pass where it covers
        the model (`sdzero.fused_forward`), else transformers' forward (call it with gradients off)."""
        return fused_forward(self.model) or transformers_forward(self.model)

    def _finish(self, row: list[int]) -> Completion:
        return _trim_at_stop(row, self.stop_ids, self.tokenizer)

    def generate(self, prompts, params, seed=0, desc="generating"):
        import torch
        from transformers import GenerationConfig

        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise SDZeroError("an empty prompt was passed to the generator")
        # One work item per (prompt, sample); sort by prompt length to limit padding.
        items = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        items.sort(key=lambda it: len(prompts[it[0]]))
        greedy = params.temperature == 0
        config = None if self.decode == "compact" else GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None if greedy else 0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        bar = progress(len(items), desc, unit="seq", disable=not self.show_progress, leave=False)
        try:
            if self.decode == "compact":
                with torch.no_grad():
                    forward = self._forward_for()  # a fused pass makes its own copies: not the layers' too
                    with nullcontext() if isinstance(forward, FusedForward) else packed_linear_weights(self.model):
                        done = self._decode_stream(prompts, items, params, seed * 1_000_003, bar, forward)
                for (i, j), ids in done.items():
                    out[i][j] = self._finish(ids)
            else:
                for b, start in enumerate(range(0, len(items), self.batch_size)):
                    batch = items[start : start + self.batch_size]
                    input_ids, mask = _left_pad([prompts[i] for i, _ in batch], self.pad_id)
                    width = input_ids.shape[1]
                    torch.manual_seed(seed * 1_000_003 + b)
                    with torch.no_grad():
                        seqs = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                                   generation_config=config)
                    for r, (i, j) in enumerate(batch):
                        out[i][j] = self._finish(seqs[r, width:].tolist())
                    bar.update(len(batch))
        finally:
            bar.close()
            self.model.train(was_training)
        return out  # type: ignore[return-value]


def transformers_forward(model: Any) -> Any:
    """forward(ids, mask, positions, cache) -> each row's last logits, through the model's own forward."""
    import inspect

    # transformers renamed the cache argument (`past_key_values` warns from 5.2x on): pass what it takes
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                     **{name: cache}).logits[:, -1]

    return forward


def _left_pad(seqs: Sequence[list[int]], pad_id: int) -> tuple[Any, Any]:
    """Left-padded ids and attention mask: every prompt ends at the last column, where generation starts."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return ids, mask


def _sample(logits: Any, temperature: float, top_p: float, generator: Any = None) -> Any:
    """One token per row: argmax when temperature is 0, else temperature then nucleus (top-p) sampling."""
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    # softmax(logits / T) without its normalisation (the draw does not need it), in one fp32 copy: at batch 128
    # every temporary is 25 MB, and allocating it cost as much as computing it
    weights = logits.to(torch.float32, copy=True).div_(temperature)
    weights = weights.sub_(weights.amax(-1, keepdim=True)).exp_()
    if top_p < 1.0:
        probs = weights / weights.sum(-1, keepdim=True)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        weights = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return _draw(weights, generator)


def _draw(probs: Any, generator: Any = None, block: int = 256) -> Any:
    """One index per row with probability proportional to `probs` (rows of non-negative weights), by inverting
    the cumulative sum in two levels: a block of `block` entries by the blocks' masses, then an entry within it.

    Exact, like `torch.multinomial`, but it draws two uniforms per row where multinomial draws one exponential
    per vocabulary entry: over a 49K vocabulary at batch 128 that was 6M draws, 169 ms of a ~400 ms decoding step."""
    import torch
    import torch.nn.functional as F

    rows, width = probs.shape
    blocks = (F.pad(probs, (0, -width % block)) if width % block else probs.contiguous()).view(rows, -1, block)
    u = torch.rand(rows, 2, generator=generator, dtype=torch.float64, device=probs.device)
    outer = blocks.sum(-1).double().cumsum(-1)  # [rows, blocks]; a float64 sum of the entries was 25x slower
    total = outer[:, -1]
    if not bool(((total > 0) & torch.isfinite(total)).all()):  # multinomial raised here; searchsorted would not
        raise SDZeroError("cannot sample: the model's next-token probabilities hold NaN or inf, or are all zero "
                          "(a diverged model? try a lower learning rate)")
    # right=True: the first block whose cumulative mass exceeds the target, so never one with no mass
    b = torch.searchsorted(outer, u[:, :1] * outer[:, -1:], right=True).clamp(max=outer.shape[1] - 1)
    inner = blocks[torch.arange(rows, device=probs.device), b.squeeze(1)].double().cumsum(-1)  # [rows, block]
    i = torch.searchsorted(inner, u[:, 1:] * inner[:, -1:], right=True).clamp(max=block - 1)
    return (b * block + i).squeeze(1)


@contextmanager
def packed_linear_weights(model: Any) -> Iterator[int]:
    """Within the block, the model's `torch.nn.Linear` layers that compute in bf16 on the CPU (bf16 weights,
    or fp32 weights under bf16 autocast) multiply by a copy of their weight reordered once into oneDNN's
    blocked layout; yields how many layers were switched. None is switched where oneDNN has no bf16 kernels,
    on other devices and dtypes, with gradients on (the copies are detached), or where a layer's `forward`
    is already replaced on the instance (a hook's, or an outer use of this). On exit, even on an error,
    every switched layer is as it was.

    Why: a bf16 matmul on the CPU reorders its weight on every call, and a decoding step is ~120 small matmuls
    that each read their weight once (benchmarks/generation_throughput.py prints a step both ways). The
    weights are taken as they are at entry: enter it per generation, never across a training step. Memory:
    a bf16 copy of every switched weight for the length of the block."""
    import torch

    switched: list[Any] = []
    try:
        try:
            for layer in model.modules():
                w = getattr(layer, "weight", None)
                if type(layer) is not torch.nn.Linear or w is None or "forward" in vars(layer) \
                        or not onednn_bf16_weight(w):
                    continue
                layer.forward = _packed_forward(layer, *lay_out(w, layer.bias))  # shadows the class's forward
                switched.append(layer)
        except RuntimeError:  # a oneDNN build without these kernels for some shape: keep every layer plain
            for layer in switched:
                del layer.forward
            switched = []
        yield len(switched)
    finally:
        for layer in switched:
            vars(layer).pop("forward", None)


def _packed_forward(layer: Any, packed: Any, bias: Any) -> Any:
    import torch

    def forward(x: Any) -> Any:
        if x.dtype != torch.bfloat16 and not torch.is_autocast_enabled("cpu"):
            return type(layer).forward(layer, x)  # what the plain layer computes (or refuses) outside autocast
        return laid_out_linear(x, packed, bias)

    return forward


def _join_caches(cache: Any, mask: Any, new_cache: Any, new_mask: Any) -> tuple[Any, Any]:
    """Stack two left-padded batches (KV caches and attention masks) into one, right-aligned."""
    import torch
    import torch.nn.functional as F

    width = max(mask.shape[1], new_mask.shape[1])
    for a, b in zip(cache.layers, new_cache.layers):  # keys / values: [batch, heads, width, head_dim]
        a.keys = torch.cat([F.pad(a.keys, (0, 0, width - mask.shape[1], 0)),
                            F.pad(b.keys, (0, 0, width - new_mask.shape[1], 0))])
        a.values = torch.cat([F.pad(a.values, (0, 0, width - mask.shape[1], 0)),
                              F.pad(b.values, (0, 0, width - new_mask.shape[1], 0))])
    return cache, torch.cat([F.pad(mask, (width - mask.shape[1], 0)), F.pad(new_mask, (width - new_mask.shape[1], 0))])


def _roomy_cache() -> Any:
    """transformers' DynamicCache whose layers append in place (`_roomy_layer_class`) instead of concatenating."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _roomy_layer_class()  # layers are made on their first update
    return cache


@functools.cache
def _roomy_layer_class() -> Any:
    """A DynamicLayer that keeps its keys and values as views into buffers with spare columns at the end.

    DynamicLayer concatenates each step's column onto the whole cache, a copy of every layer's cache per
    decoding step; here a step writes its column into the room left. Dropping finished rows copies the rows
    kept (as DynamicLayer does) with their room; running out of room reallocates, with room for a quarter
    more columns (at least `room`). Keys or values set from outside (a batch joined, any inherited method
    that reassigns them) are taken as they are and moved into fresh buffers at the next update. For
    inference only: a step writes in place into tensors an earlier step returned. Tests: step by step
    against DynamicLayer, and greedy decoding against `generate`."""
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        room = 16  # the least spare room a (re)allocation leaves
        _buffers: Any = None  # (keys, values) buffers [batch, heads, width, head_dim], or None
        _start = 0  # the buffers' first column in use
        _keys_view: Any = None  # the `keys` this layer last set: anything else was set from outside

        def _owns(self) -> bool:
            return self._buffers is not None and self.keys is self._keys_view

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            used, new = self.get_seq_length(), key_states.shape[-2]
            if not self._owns() or self._start + used + new > self._buffers[0].shape[-2]:
                self._reallocate(key_states, value_states, used + new + max(self.room, used // 4))
            end = self._start + used + new
            for buffer, states in zip(self._buffers, (key_states, value_states)):
                buffer[:, :, end - new : end] = states
            self._view(self._start, end)
            return self.keys, self.values

        def _reallocate(self, key_states: Any, value_states: Any, width: int) -> None:
            """Fresh buffers `width` columns wide holding the cache so far at their start."""
            used = self.get_seq_length()
            buffers = []
            for old, states in ((self.keys, key_states), (self.values, value_states)):
                rows, heads, _, dim = states.shape
                buffer = states.new_empty((rows, heads, width, dim))
                if used:
                    buffer[:, :, :used] = old
                buffers.append(buffer)
            self._buffers, self._start = tuple(buffers), 0

        def _view(self, start: int, end: int) -> None:
            self._start = start
            self.keys, self.values = (buffer[:, :, start:end] for buffer in self._buffers)
            self._keys_view = self.keys

        def drop_leading(self, columns: int) -> None:
            """Forget the first `columns` columns (no live row attends to them any more): a view, no copy."""
            if self._owns():
                self._view(self._start + columns, self._start + self.get_seq_length())
            else:
                self.keys, self.values = self.keys[:, :, columns:], self.values[:, :, columns:]

        def batch_select_indices(self, indices: Any) -> None:
            if not self._owns():
                return super().batch_select_indices(indices)
            used = self.get_seq_length()
            self._buffers = tuple(buffer.narrow(2, self._start, buffer.shape[2] - self._start).index_select(0, indices)
                                  for buffer in self._buffers)  # the room is kept: no reallocation next step
            self._view(0, used)

        def reset(self) -> None:
            super().reset()
            self._buffers = self._keys_view = None

    return RoomyLayer


class VLLMGenerator(Generator):
    """vLLM on GPUs, through TRL's `VLLMGeneration` (colocate mode: vLLM shares the training process and
    GPU; TRL handles pushing the training weights in, under DDP, FSDP, DeepSpeed and PEFT).

    Each `generate` call first syncs the current weights of `model`, so Phase-2 rollouts are on-policy.
    Sampling is not seeded bit-for-bit the way `HFGenerator` is. Not exercised in this project's CI (no GPU):
    only the wrapping below is tested, with a stand-in engine.
    """

    def __init__(self, model: Any, tokenizer: Any, accelerator: Any = None, gpu_memory_utilization: float = 0.3,
                 max_model_length: int | None = None, engine: Any = None, **_: Any):
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(tokenizer, model)
        if engine is None:
            try:
                import vllm  # noqa: F401
            except ImportError as e:
                raise SDZeroError("generation backend 'vllm' needs vLLM, which is not installed (GPU machines: "
                                  "pip install 'sdzero[vllm]'); use --backend hf") from e
            from accelerate import Accelerator
            from trl.generation.vllm_generation import VLLMGeneration

            engine = VLLMGeneration(model, accelerator or Accelerator(), tokenizer, mode="colocate",
                                    gpu_memory_utilization=gpu_memory_utilization, max_model_length=max_model_length)
        self.engine = engine

    def generate(self, prompts, params, seed=0, desc="generating"):
        if not prompts:
            return []
        e = self.engine
        greedy = params.temperature == 0  # vLLM's greedy: sampling from the single best token
        e.temperature, e.top_p, e.top_k = (1.0, 1.0, 1) if greedy else (params.temperature, params.top_p, 0)
        e.max_completion_length = params.max_new_tokens
        e.sync_weights()
        _, completion_ids, *_ = e.generate(list(prompts), None, params.n)
        out: list[list[Completion]] = []
        for i in range(len(prompts)):  # TRL returns the n completions of a prompt next to each other
            out.append([_trim_at_stop(completion_ids[i * params.n + j], self.stop_ids, self.tokenizer)
                        for j in range(params.n)])
        return out


def _trim_at_stop(row: Sequence[int], stop_ids: Sequence[int], tokenizer: Any) -> Completion:
    stops = set(stop_ids)
    for i, t in enumerate(row):
        if t in stops:
            ids = list(row[:i])
            return Completion(ids, tokenizer.decode(ids, skip_special_tokens=True), "stop", int(t))
    return Completion(list(row), tokenizer.decode(list(row), skip_special_tokens=True), "length")


BACKENDS = ("hf", "vllm")


def make_generator(backend: str, model: Any, tokenizer: Any, batch_size: int = DEFAULT_BATCH_SIZE,
                   **kw: Any) -> Generator:
    if backend == "hf":
        kw = {k: v for k, v in kw.items() if k in ("show_progress", "decode")}
        return HFGenerator(model, tokenizer, batch_size=batch_size, **kw)
    if backend == "vllm":
        return VLLMGenerator(model, tokenizer, **kw)
    raise SDZeroError(f"unknown generation backend {backend!r}; available: {', '.join(BACKENDS)}")
