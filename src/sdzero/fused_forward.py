"""The compact decoder's forward pass for Llama-family models (Llama, Qwen2, Qwen3), over the model's own weights.

Why: through transformers' modules a decoding step of the embedded model is ~210 small matmuls and ~1,500 other
ops, and on a CPU the per-call cost of so many small ops is a large share of the step
(benchmarks/generation_throughput.py prints a step both ways). Here, per layer:
- the query, key and value projections are one matmul, and so are the gate and up projections, from weights
  concatenated once per generation (on a CPU with oneDNN bf16 kernels, also laid out once in its blocked format,
  as `sdzero.generation.packed_linear_weights` does for plain layers);
- the rotary embedding turns queries and keys in one pass (they sit side by side in the fused projection);
- the attention mask is made once per pass as an additive float mask, not per layer.
The rest is the model's own code: its embedding, norms, rotary frequencies, activation, and the KV cache's
`update`, so rope scaling, biases and Qwen3's per-head norms come for free. Same arithmetic as transformers'
forward (bf16 products and fp32 sums where the model is bf16); the sums of a fused matmul may run in another
order than the three separate ones, so a near-tie in the logits can fall the other way.

Simplifications: inference only (gradients off, no dropout), attention through SDPA whatever attention the model
was loaded with (eager gives the same to rounding), no sliding windows, logits of the last position only, on a
CPU only (the fused weights are copies: on a GPU, memory is better spent on the batch; vLLM is the GPU path).
`fused_forward(model)` returns None for anything else: another architecture or remote code, a layer that is not a
plain `torch.nn.Linear` (a LoRA adapter), hooks (FSDP, accelerate's device maps), sharded or non-CPU weights.
The caller then runs the model through transformers as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def onednn_bf16_weight(weight: Any) -> bool:
    """Whether a matmul with this weight computes in bf16 on a CPU with oneDNN's bf16 kernels, gradients off:
    bf16 weights, or fp32 weights under bf16 autocast (Phase-2 rollouts). Only then is a laid-out copy used."""
    import torch

    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return (not torch.is_grad_enabled() and weight.device.type == "cpu"
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.ops.mkldnn._is_mkldnn_bf16_supported()
            and (weight.dtype == torch.bfloat16 or (weight.dtype == torch.float32 and autocast_bf16)))


def lay_out(weight: Any, bias: Any) -> tuple[Any, Any]:
    """A bf16 copy of `weight` in oneDNN's blocked layout, and the bias in bf16 (raises RuntimeError where this
    oneDNN build has no kernel for the shape). Only where `onednn_bf16_weight(weight)`."""
    import torch

    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16))
    return packed, None if bias is None else bias.detach().to(torch.bfloat16)


def laid_out_linear(x: Any, packed: Any, bias: Any) -> Any:
    """x W^T + b from `lay_out`'s copies: bf16 products, fp32 sums, a bf16 result (as under bf16 autocast)."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), packed, bias, "none", [], "")


@dataclass
class _Matmul:
    """y = x W^T + b for one or more `torch.nn.Linear` layers stacked along their outputs."""

    weight: Any
    bias: Any
    laid_out: bool  # `weight` is a bf16 copy in oneDNN's blocked layout

    @classmethod
    def of(cls, *layers: Any) -> "_Matmul":
        import torch

        weight = torch.cat([layer.weight.detach() for layer in layers]) if len(layers) > 1 else layers[0].weight
        biases = [layer.bias for layer in layers]
        if any(b is not None for b in biases):
            bias = torch.cat([b.detach() if b is not None else weight.new_zeros(layer.weight.shape[0])
                              for b, layer in zip(biases, layers)])
        else:
            bias = None
        if onednn_bf16_weight(weight):
            try:
                return cls(*lay_out(weight, bias), True)
            except RuntimeError:  # a oneDNN build without this shape's kernel: the plain matmul
                pass
        return cls(weight.detach(), None if bias is None else bias.detach(), False)

    def __call__(self, x: Any) -> Any:
        import torch.nn.functional as F

        if self.laid_out:
            return laid_out_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)  # under autocast, as the model's own layer would compute it


@dataclass
class _Layer:
    """One decoder layer: the model's own norms and activation, and its projections fused into four matmuls."""

    input_norm: Any
    qkv: _Matmul
    q_norm: Any  # Qwen3's per-head norms, None elsewhere
    k_norm: Any
    out: _Matmul
    post_norm: Any
    gate_up: _Matmul
    act: Any
    down: _Matmul
    intermediate: int  # the gate's share of `gate_up`'s outputs
    scaling: float


def fused_forward(model: Any) -> Callable[..., Any] | None:
    """forward(ids, mask, positions, cache) -> logits of each row's last position, for a model this file covers
    (see the module's docstring); None otherwise. Build it per generation, inside `torch.no_grad()`: it copies
    the weights as they are now."""
    import torch

    config = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if (torch.is_grad_enabled() or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES
            or not type(model).__module__.startswith("transformers.models.")  # remote code may differ
            or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb")
            or any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"])):
        return None
    # FSDP and accelerate's device maps gather or move weights in hooks; the pass reads the weights directly
    if any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") or "forward" in vars(m)
           for m in model.modules()):
        return None
    head = model.get_output_embeddings()
    parts = [head]
    for block in inner.layers:
        attn, mlp = block.self_attn, block.mlp
        parts += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if any(type(p) is not torch.nn.Linear or type(p.weight.data) is not torch.Tensor  # adapters, DTensors
           or p.weight.shape != (p.out_features, p.in_features) or p.weight.device.type != "cpu" for p in parts):
        return None
    layers = [_Layer(block.input_layernorm, _Matmul.of(block.self_attn.q_proj, block.self_attn.k_proj,
                                                       block.self_attn.v_proj),
                     getattr(block.self_attn, "q_norm", None), getattr(block.self_attn, "k_norm", None),
                     _Matmul.of(block.self_attn.o_proj), block.post_attention_layernorm,
                     _Matmul.of(block.mlp.gate_proj, block.mlp.up_proj), block.mlp.act_fn,
                     _Matmul.of(block.mlp.down_proj), block.mlp.gate_proj.out_features,
                     float(block.self_attn.scaling))
              for block in inner.layers]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    return FusedForward(model.get_input_embeddings(), inner.rotary_emb, layers, inner.norm, _Matmul.of(head),
                    heads, kv_heads, inner.layers[0].self_attn.head_dim)


class FusedForward:
    """The pass itself: the model's embedding, rotary frequencies, final norm, and per layer its norms and the
    fused matmuls (`_Layer`); called as forward(ids, mask, positions, cache)."""

    def __init__(self, embed: Any, rotary: Any, layers: list[_Layer], norm: Any, head: _Matmul, heads: int,
                 kv_heads: int, head_dim: int):
        self.embed, self.rotary, self.layers, self.norm, self.head = embed, rotary, layers, norm, head
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim

    def __call__(self, ids: Any, mask: Any, positions: Any, cache: Any) -> Any:
        """`ids` [batch, new] continue the rows of `cache` (a transformers Cache; may be empty); `mask`
        [batch, cached + new] is 1 on real tokens (left padding); `positions` [batch, new] their positions."""
        import torch
        import torch.nn.functional as F

        rows, new = ids.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        x = self.embed(ids)
        cos, sin = self.rotary(x, positions)  # [rows, new, dim]
        cos, sin = cos[:, :, None], sin[:, :, None]  # over the heads of [rows, new, heads, dim]
        width = mask.shape[1]
        allowed = mask[:, None, None, :].bool()  # [rows, 1, 1, width]: key columns each row may see
        if new > 1:  # a prefill: causal, and a padding query sees itself (kernels differ on a row with no key)
            query_col = torch.arange(width - new, width, device=ids.device)[:, None]
            keys = torch.arange(width, device=ids.device)[None, :]
            allowed = (allowed & (keys <= query_col)) | (keys == query_col)
        # additive, in the stream's dtype (autocast casts it with the queries): a bool mask is turned into
        # this inside SDPA again in every layer
        attn_mask = torch.zeros(allowed.shape, dtype=x.dtype, device=ids.device).masked_fill_(~allowed, float("-inf"))
        groups, half = heads // kv_heads, dim // 2
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.input_norm(x)).view(rows, new, heads + 2 * kv_heads, dim)
            if layer.q_norm is not None:  # Qwen3: norms per head, before the rotation
                qk = torch.cat([layer.q_norm(qkv[:, :, :heads]), layer.k_norm(qkv[:, :, heads:heads + kv_heads])], 2)
            else:
                qk = qkv[:, :, : heads + kv_heads]
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin  # transformers' rotate_half
            q = qk[:, :, :heads].transpose(1, 2)  # [rows, heads, new, dim]
            k, v = cache.update(qk[:, :, heads:].transpose(1, 2), qkv[:, :, heads + kv_heads:].transpose(1, 2), index)
            if new == 1 and groups > 1:  # one query: each key head's group of query heads as its "positions"
                o = F.scaled_dot_product_attention(q.reshape(rows, kv_heads, groups, dim), k, v,
                                                   attn_mask=attn_mask, scale=layer.scaling)
            else:  # a prefill: each key head repeated for its group (as transformers does on a CPU)
                if groups > 1:
                    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=layer.scaling)
            o = o.reshape(rows, heads, new, dim).transpose(1, 2).reshape(rows, new, heads * dim)
            x = x + layer.out(o)
            gate_up = layer.gate_up(layer.post_norm(x))
            x = x + layer.down(layer.act(gate_up[..., : layer.intermediate]) * gate_up[..., layer.intermediate:])
        return self.head(self.norm(x[:, -1]))
