"""The compact decoder's fused forward pass computes what transformers' forward computes."""

import pytest
import torch

from sdzero.fused_forward import FusedForward, fused_forward
from sdzero.generation import HFGenerator, SamplingParams, _roomy_cache, packed_linear_weights, transformers_forward

from conftest import ONEDNN_BF16


def tiny(kind: str, vocab: int = 64, seed: int = 0):
    """A random 2-layer model of each covered family: Llama (GQA), Llama with every bias, tied embeddings and
    one key head per query head, Llama with llama3 rope scaling (the model's rotary module), Qwen2 (biases on
    q, k, v), Qwen3 (per-head norms, head_dim apart from hidden / heads)."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    config, cls = {"llama": (LlamaConfig(**common), LlamaForCausalLM),
                   "llama-biases-tied-mha": (LlamaConfig(**{**common, "num_key_value_heads": 4,
                                                            "tie_word_embeddings": True}, attention_bias=True,
                                                         mlp_bias=True), LlamaForCausalLM),
                   "llama-rope-llama3": (LlamaConfig(**common, rope_parameters={
                       "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 4}), LlamaForCausalLM),
                   "qwen2": (Qwen2Config(**common), Qwen2ForCausalLM),
                   "qwen3": (Qwen3Config(**common, head_dim=16), Qwen3ForCausalLM)}[kind]
    model = cls(config).eval()
    with torch.no_grad():  # larger than the init, so that every part of the pass moves the logits
        for w in model.parameters():
            w.normal_(0.0, 0.3) if w.dim() == 2 else w.add_(torch.randn_like(w) * 0.2)
    return model


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def transformers_logits(model, ids, mask, positions, cache):
    return transformers_forward(model)(ids, mask, positions, cache)


@pytest.mark.parametrize("kind", ["llama", "llama-biases-tied-mha", "llama-rope-llama3", "qwen2", "qwen3"])
def test_fused_pass_gives_transformers_logits_through_a_padded_prefill_and_steps(kind):
    model = tiny(kind)
    ids, mask, positions = left_padded([[5, 9, 2, 7, 1, 30], [3, 4], [11, 12, 13, 60]])
    with torch.no_grad():
        fused = fused_forward(model)
        assert isinstance(fused, FusedForward)
        ours, theirs = _roomy_cache(), _roomy_cache()
        a, b = fused(ids, mask, positions, ours), transformers_logits(model, ids, mask, positions, theirs)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        nxt = positions[:, -1:] + 1
        for _ in range(4):  # decoding steps, each fed the argmax
            token = a.argmax(-1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
            a, b = fused(token, mask, nxt, ours), transformers_logits(model, token, mask, nxt, theirs)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            nxt = nxt + 1
        real = mask[:, None, :, None].bool()  # the cache holds the same too, where a token is (not padding)
        torch.testing.assert_close(ours.layers[1].keys * real, theirs.layers[1].keys * real)
        torch.testing.assert_close(ours.layers[1].values * real, theirs.layers[1].values * real)


def test_fused_pass_covers_only_what_it_can():
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    model = tiny("llama")
    assert fused_forward(model) is None  # gradients on: it is for inference only
    with torch.no_grad():
        assert fused_forward(model) is not None
        assert fused_forward(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))) is None
        sliding = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                               sliding_window=8, max_window_layers=1))
        assert fused_forward(sliding) is None
        layer = model.model.layers[1].mlp.up_proj
        layer.forward = lambda x: torch.nn.Linear.forward(layer, x)  # e.g. an adapter replacing one forward
        assert fused_forward(model) is None
        del layer.forward
        hook = model.model.layers[0].register_forward_pre_hook(lambda m, a: None)  # FSDP gathers weights in one
        assert fused_forward(model) is None
        hook.remove()
        assert fused_forward(model) is not None


def test_compact_decoder_uses_the_fused_pass_and_still_matches_generate(monkeypatch):
    """The generator takes the fused pass for a covered model (and lays no second copy of the weights out),
    and its greedy tokens are `generate`'s; an uncovered model still decodes through transformers."""
    from conftest import make_tokenizer

    import sdzero.generation as generation

    tok = make_tokenizer()
    model = tiny("qwen2", vocab=len(tok), seed=3)
    model.generation_config.eos_token_id = tok.eos_token_id
    made, packed = [], []
    real_fused, real_packed = generation.fused_forward, generation.packed_linear_weights
    monkeypatch.setattr(generation, "fused_forward", lambda m: made.append(real_fused(m)) or made[-1])
    monkeypatch.setattr(generation, "packed_linear_weights", lambda m: packed.append(m) or real_packed(m))
    prompts = [tok.encode(t) for t in ("Hi there", "What is 2+3?", "abc", "A longer question here, is it?")]
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    compact = HFGenerator(model, tok, batch_size=3, show_progress=False).generate(prompts, params)
    assert isinstance(made[0], FusedForward) and packed == []
    plain = HFGenerator(model, tok, batch_size=4, show_progress=False, decode="generate").generate(prompts, params)
    assert [c.ids for cs in compact for c in cs] == [c.ids for cs in plain for c in cs]
    monkeypatch.setattr(generation, "fused_forward", lambda m: None)  # as for a model it does not cover
    again = HFGenerator(model, tok, batch_size=3, show_progress=False).generate(prompts, params)
    assert [c.ids for cs in again for c in cs] == [c.ids for cs in plain for c in cs] and packed == [model]


@pytest.mark.skipif(not ONEDNN_BF16, reason="this torch / CPU has no oneDNN bf16 kernels")
@pytest.mark.parametrize("weights", ["bf16", "fp32 under bf16 autocast"])
def test_fused_pass_lays_out_bf16_matmuls_and_matches_the_laid_out_layers(weights):
    """Where matmuls run in bf16 on oneDNN, the fused pass multiplies by laid-out copies like
    `packed_linear_weights` does; its logits stay those of transformers' forward over such layers, to bf16's
    rounding (a fused matmul may sum in another order)."""
    from contextlib import nullcontext

    model = tiny("llama")
    if weights == "bf16":
        model = model.to(torch.bfloat16)
    ids, mask, positions = left_padded([[5, 9, 2, 7, 1, 30], [3, 4], [11, 12, 13, 60]])
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if weights != "bf16" else nullcontext()
    with torch.no_grad(), ctx:
        fused = fused_forward(model)
        assert all(m.laid_out for layer in fused.layers for m in (layer.qkv, layer.out, layer.gate_up, layer.down))
        a = fused(ids, mask, positions, _roomy_cache())
        with packed_linear_weights(model):
            b = transformers_logits(model, ids, mask, positions, _roomy_cache())
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.1)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
