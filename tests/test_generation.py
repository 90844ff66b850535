import pytest
import torch

from sdzero.chat import chat_prompt_ids
from sdzero.errors import SDZeroError
from sdzero.generation import HFGenerator, SamplingParams, make_generator

from conftest import ONEDNN_BF16


def manual_greedy(model, prompt, max_new_tokens, stop):
    """Reference: one sequence, no padding, argmax token by token."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt in stop:
                break
            out.append(nxt)
            ids.append(nxt)
    return out


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [chat_prompt_ids(tokenizer, q) for q in ("1+1?", "A much longer question about arithmetic: 7*6?", "x")]


def test_greedy_with_left_padding_matches_unpadded_argmax(tiny_model, tokenizer, prompts):
    gen = HFGenerator(tiny_model, tokenizer, batch_size=3, show_progress=False)
    outs = gen.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.0))
    for p, cs in zip(prompts, outs):
        assert cs[0].ids == manual_greedy(tiny_model, p, 12, set(gen.stop_ids))


def test_n_samples_lengths_text_and_finish(tiny_model, tokenizer, prompts):
    gen = HFGenerator(tiny_model, tokenizer, batch_size=4, show_progress=False)
    outs = gen.generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, n=3), seed=1)
    assert [len(cs) for cs in outs] == [3, 3, 3]
    for cs in outs:
        for c in cs:
            assert not set(c.ids) & set(gen.stop_ids)
            assert c.text == tokenizer.decode(c.ids, skip_special_tokens=True)
            assert (c.finish_reason == "length") == (c.num_tokens == 10)


def test_seeded_sampling_is_reproducible(tiny_model, tokenizer, prompts):
    gen = HFGenerator(tiny_model, tokenizer, batch_size=2, show_progress=False)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=2)
    ids = lambda outs: [[c.ids for c in cs] for cs in outs]  # noqa: E731
    a, b = gen.generate(prompts, params, seed=5), gen.generate(prompts, params, seed=5)
    c = gen.generate(prompts, params, seed=6)
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_stop_token_is_cut_and_reported(tiny_model, tokenizer):
    gen = HFGenerator(tiny_model, tokenizer, show_progress=False)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    done = gen._finish([65, 66, eos, pad, pad])
    assert done.ids == [65, 66] and done.finish_reason == "stop"
    cut = gen._finish([65, 66, 67])
    assert cut.ids == [65, 66, 67] and cut.finish_reason == "length"


def test_generator_leaves_training_mode_as_it_was(tiny_model, tokenizer, prompts):
    gen = HFGenerator(tiny_model, tokenizer, show_progress=False)
    tiny_model.train()
    gen.generate(prompts[:1], SamplingParams(max_new_tokens=2))
    assert tiny_model.training
    tiny_model.eval()


def test_bad_generation_input(tiny_model, tokenizer):
    gen = make_generator("hf", tiny_model, tokenizer, show_progress=False)
    assert gen.generate([], SamplingParams()) == []
    with pytest.raises(SDZeroError, match="empty prompt"):
        gen.generate([[]], SamplingParams())
    with pytest.raises(SDZeroError, match="invalid sampling"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(SDZeroError, match="unknown generation backend"):
        make_generator("nope", tiny_model, tokenizer)


class StandInEngine:
    """What VLLMGenerator needs of TRL's VLLMGeneration: settable sampling fields, sync_weights, generate."""

    def __init__(self, rows):
        self.rows, self.synced, self.calls = rows, 0, []

    def sync_weights(self):
        self.synced += 1

    def generate(self, prompts, images, n):
        self.calls.append((prompts, n, self.temperature, self.top_k, self.max_completion_length))
        return prompts, self.rows, None, None


def test_vllm_wrapper_syncs_weights_and_splits_completions(tokenizer, tiny_model):
    from sdzero.generation import VLLMGenerator

    eos = tokenizer.eos_token_id
    a, b = tokenizer("ab")["input_ids"], tokenizer("cd")["input_ids"]
    engine = StandInEngine([a + [eos, 5], b, b + [eos], a])
    gen = VLLMGenerator(tiny_model, tokenizer, engine=engine)
    out = gen.generate([[1, 2], [3]], SamplingParams(max_new_tokens=7, temperature=0.0, n=2))
    assert engine.synced == 1 and engine.calls[0][1:] == (2, 1.0, 1, 7)  # greedy = top-1 sampling
    assert [[c.finish_reason for c in cs] for cs in out] == [["stop", "length"], ["stop", "length"]]
    assert out[0][0].ids == a and out[0][0].text == "ab" and out[1][1].ids == a


def test_vllm_backend_without_vllm_is_a_clear_error(tokenizer, tiny_model):
    import importlib.util

    from sdzero.generation import make_generator

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(SDZeroError, match="needs vLLM"):
        make_generator("vllm", tiny_model, tokenizer)
    with pytest.raises(SDZeroError, match="available: hf, vllm"):
        make_generator("tgi", tiny_model, tokenizer)


@pytest.mark.parametrize("batch_size,room", [(2, 16), (3, 16), (16, 16), (3, 1), (16, 2)])
def test_compact_decoding_matches_transformers_generate_greedily(tokenizer, batch_size, room, monkeypatch):
    """Dropping finished rows and refilling the batch with waiting prompts (joined to a running KV cache of
    another width) changes nothing in what each row generates; nor does the cache's room to append in place
    (`room` 1: a reallocation every step)."""
    from conftest import make_model

    from sdzero.generation import _roomy_layer_class

    monkeypatch.setattr(_roomy_layer_class(), "room", room)

    tiny_model = make_model(tokenizer, seed=7)
    with torch.no_grad():  # larger random weights: greedy text that varies (a near-zero init copies its input)
        for w in tiny_model.parameters():
            if w.dim() == 2:
                w.normal_(0.0, 0.3)
    questions = ("Hi", "What is 2+3? Think.", "abc", "A longer question here?", "Why is the sky blue at noon?",
                 "7", "Name a prime.")
    prompts = [chat_prompt_ids(tokenizer, q) for q in questions]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    # A stop token the random model emits early in some rows, so rows do finish at different steps.
    probe = HFGenerator(tiny_model, tokenizer, batch_size=len(prompts), show_progress=False, decode="generate")
    rows = [c.ids for cs in probe.generate(prompts, params) for c in cs]
    stop = next(t for row in rows for t in row[1:] if not all(t in other for other in rows))
    results = {}
    for decode, size in (("compact", batch_size), ("generate", len(prompts))):
        gen = HFGenerator(tiny_model, tokenizer, batch_size=size, show_progress=False, decode=decode)
        gen.stop_ids = sorted(set(gen.stop_ids) | {stop})
        results[decode] = [(c.ids, c.finish_reason) for cs in gen.generate(prompts, params) for c in cs]
    assert results["compact"] == results["generate"]
    assert {r for _, r in results["compact"]} == {"stop", "length"}  # both kinds of ending were exercised


@pytest.mark.parametrize("room", [1, 3, 16])
def test_roomy_cache_layer_holds_what_transformers_dynamic_layer_holds(room):
    """The compact decoder's in-place cache layer against DynamicLayer through the decoder's operations: a
    prefill, a column per step, finished rows dropped, leading columns forgotten, another batch joined (then
    rows dropped and columns forgotten before the next update: at steps 32 and 43)."""
    from transformers.cache_utils import DynamicLayer

    from sdzero.generation import _roomy_layer_class

    g = torch.Generator().manual_seed(room)
    ours, ref = _roomy_layer_class()(), DynamicLayer()
    ours.room = room

    def states(rows, columns):
        return torch.randn(rows, 2, columns, 4, generator=g), torch.randn(rows, 2, columns, 4, generator=g)

    ref.update(*states(6, 7))  # the prefill
    ours.update(ref.keys.clone(), ref.values.clone())
    for step in range(60):
        rows, width = ref.keys.shape[0], ref.keys.shape[2]
        if step % 11 == 10:  # waiting prompts joined: keys and values set from outside, as _join_caches does
            joined = [torch.cat([t, torch.randn(2, *t.shape[1:], generator=g)]) for t in (ref.keys, ref.values)]
            ours.keys, ours.values = joined
            ref.keys, ref.values = joined
            rows = rows + 2
        if step % 3 == 2 and rows > 1:  # rows finished
            keep = torch.randperm(rows, generator=g)[: rows - 1].sort().values
            ours.batch_select_indices(keep)
            ref.batch_select_indices(keep)
        if step % 4 == 3 and width > 3:  # columns no live row uses
            ours.drop_leading(2)
            ref.keys, ref.values = ref.keys[:, :, 2:], ref.values[:, :, 2:]
        new = states(ref.keys.shape[0], 1)
        got = ours.update(*new)
        want = ref.update(*new)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), step
        assert ours.get_seq_length() == ref.get_seq_length()


def test_compact_decoder_refills_the_batch(tiny_model, tokenizer, prompts):
    """More work than slots: every (prompt, sample) is decoded once, with its own token budget."""
    gen = HFGenerator(tiny_model, tokenizer, batch_size=2, show_progress=False)
    outs = gen.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0, n=3), seed=3)
    assert [len(cs) for cs in outs] == [3, 3, 3]
    assert all(1 <= len(c.ids) + (c.finish_reason == "stop") <= 6 for cs in outs for c in cs)


def test_sampling_respects_temperature_and_top_p():
    from sdzero.generation import _sample

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = torch.stack([_sample(logits, 1.0, 0.7) for _ in range(2000)]).flatten()
    assert set(draws.tolist()) == {0, 1}  # the smallest set with mass >= 0.7
    assert abs((draws == 0).float().mean().item() - 0.5 / 0.8) < 0.05
    assert _sample(logits, 0.0, 1.0).item() == 0
    draws = torch.stack([_sample(logits, 1.0, 1.0) for _ in range(4000)]).flatten()
    assert abs((draws == 3).float().mean().item() - 0.05) < 0.015


def test_block_draw_follows_the_distribution_across_blocks_and_padding():
    """The two-level draw (a block by its mass, then an entry in it) samples exactly probs: a chi-square over 300
    entries (two full blocks of 128 and a padded one), and an entry of zero weight is never drawn."""
    from sdzero.generation import _draw, _sample

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, generator=g) * 2, -1)
    probs[[0, 127, 128, 299]] = 0.0  # the edges of every block
    n = 100_000
    counts = torch.bincount(_draw(probs.expand(n, -1).contiguous(), g, block=128), minlength=300).double()
    assert counts[[0, 127, 128, 299]].sum() == 0
    expected = probs.double() / probs.sum() * n
    seen = expected > 0
    chi2 = (((counts - expected)[seen] ** 2) / expected[seen]).sum().item()
    dof = int(seen.sum()) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5, chi2  # 5 standard deviations above the mean of chi2(dof)
    # Logits of a diverged model: one clear error, as multinomial gave, not a silent token.
    with pytest.raises(SDZeroError, match="NaN or inf"):
        _sample(torch.tensor([[0.0, float("nan"), 1.0]]), 1.0, 1.0)
    # Unnormalised weights, as the decoder passes them, give the same draws as the normalised ones.
    w = probs.expand(8, -1) * 37.0
    assert torch.equal(_draw(w, torch.Generator().manual_seed(1)), _draw(probs.expand(8, -1),
                                                                          torch.Generator().manual_seed(1)))


def test_every_entry_point_generates_with_the_commands_batch_size():
    """The Python API and the baselines default to the batch size the commands use (GenerationConfig), so a
    run from Python decodes as a run from the command line does."""
    import inspect

    from sdzero.baselines import grpo, rft, sdft
    from sdzero.config import GenerationConfig
    from sdzero.distill import DistillTrainer, run_distill
    from sdzero.generation import make_generator

    default = GenerationConfig().batch_size
    for fn, name in ((HFGenerator, "batch_size"), (make_generator, "batch_size"),
                     (DistillTrainer, "generation_batch_size"), (run_distill, "generation_batch_size"),
                     (rft.run_rft, "generation_batch_size"), (sdft.run_sdft, "generation_batch_size"),
                     (grpo.run_grpo, "generation_batch_size")):
        assert inspect.signature(fn).parameters[name].default == default, fn




@pytest.mark.skipif(not ONEDNN_BF16, reason="this torch / CPU has no oneDNN bf16 kernels")
@pytest.mark.parametrize("weights", ["bf16", "fp32 under bf16 autocast"])
def test_packed_linear_weights_compute_what_the_plain_layers_do(tokenizer, weights):
    """The compact decoder's weights laid out once for oneDNN: the logits of the plain bf16 layers (bf16
    products, fp32 sums, possibly summed in another order), and every layer as it was afterwards."""
    from conftest import make_model

    from sdzero.generation import packed_linear_weights

    model = make_model(tokenizer, seed=3, hidden=64)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.normal_(0.0, 0.3)
    autocast = weights != "bf16"
    model = model.to(torch.float32 if autocast else torch.bfloat16)
    ids = torch.randint(0, len(tokenizer), (3, 9), generator=torch.Generator().manual_seed(0))
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        plain = model(ids).logits.float()
        with packed_linear_weights(model) as switched:
            packed = model(ids).logits.float()
        again = model(ids).logits.float()
    assert switched == len(linears) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    assert plain.abs().max() > 1.0  # logits large enough for a wrong weight to show
    torch.testing.assert_close(packed, plain, atol=0.05, rtol=0.02)
    assert all("forward" not in vars(m) for m in linears)
    assert torch.equal(again, plain)


def test_packed_linear_weights_leave_fp32_layers_alone(tiny_model):
    from sdzero.generation import packed_linear_weights

    with packed_linear_weights(tiny_model) as switched:  # fp32, no autocast: plain matmuls are what it asked for
        assert switched == 0
        assert all("forward" not in vars(m) for m in tiny_model.modules())


def test_compact_decoder_runs_with_packed_weights(tiny_model, tokenizer, prompts, monkeypatch):
    import sdzero.generation as generation

    entered = []
    real = generation.packed_linear_weights

    def spy(model):
        entered.append(model)
        return real(model)

    monkeypatch.setattr(generation, "packed_linear_weights", spy)
    monkeypatch.setattr(generation, "fused_forward", lambda m: None)  # a model the fused pass does not cover
    HFGenerator(tiny_model, tokenizer, batch_size=2, show_progress=False).generate(prompts, SamplingParams(4))
    assert entered == [tiny_model]
    HFGenerator(tiny_model, tokenizer, batch_size=2, show_progress=False, decode="generate").generate(
        prompts, SamplingParams(4))
    assert entered == [tiny_model]  # transformers' generate stays the plain reference


@pytest.mark.skipif(not ONEDNN_BF16, reason="this torch / CPU has no oneDNN bf16 kernels")
@pytest.mark.parametrize("path", ["fused pass", "transformers' layers"])
def test_compact_decoding_under_bf16_autocast_matches_generate(tokenizer, monkeypatch, path):
    """Phase-2 rollouts: fp32 weights under bf16 autocast, every matmul from a laid-out copy (the fused pass's
    own, or every linear layer switched where the model goes through transformers), the same greedy tokens as
    transformers' `generate` under the same autocast."""
    from contextlib import contextmanager

    from conftest import make_model

    import sdzero.generation as generation

    model = make_model(tokenizer, seed=7)
    with torch.no_grad():
        for w in model.parameters():
            if w.dim() == 2:
                w.normal_(0.0, 0.3)
    switched, real = [], generation.packed_linear_weights

    @contextmanager
    def counting(m):
        with real(m) as n:
            switched.append(n)
            yield n

    monkeypatch.setattr(generation, "packed_linear_weights", counting)
    fused, real_fused = [], generation.fused_forward
    monkeypatch.setattr(generation, "fused_forward",
                        lambda m: (fused.append(real_fused(m)) or fused[-1]) if path == "fused pass" else None)
    prompts = [chat_prompt_ids(tokenizer, q) for q in ("Hi", "What is 2+3? Think.", "abc", "Name a prime.")]
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compact = HFGenerator(model, tokenizer, batch_size=3, show_progress=False).generate(prompts, params)
        plain = HFGenerator(model, tokenizer, batch_size=4, show_progress=False, decode="generate").generate(
            prompts, params)
    if path == "fused pass":
        assert switched == [] and all(m.laid_out for layer in fused[0].layers
                                      for m in (layer.qkv, layer.out, layer.gate_up, layer.down))
    else:
        assert switched == [2 * 7 + 1]
    assert [c.ids for cs in compact for c in cs] == [c.ids for cs in plain for c in cs]


def test_packed_linear_weights_restore_layers_after_an_error_and_keep_other_forwards(tokenizer):
    from conftest import make_model

    from sdzero.generation import packed_linear_weights

    model = make_model(tokenizer).to(torch.bfloat16)
    own = model.lm_head.forward
    model.lm_head.forward = lambda x: own(x)  # a forward set on the instance before (a hook's): left alone
    with pytest.raises(KeyError), torch.no_grad(), packed_linear_weights(model) as switched:
        assert switched == (2 * 7 if ONEDNN_BF16 else 0)
        with packed_linear_weights(model) as inner:  # nested: nothing more to switch
            assert inner == 0
        raise KeyError("an error inside the block")
    assert [n for n, m in model.named_modules() if "forward" in vars(m)] == ["lm_head"]
    with packed_linear_weights(model) as with_grad:  # gradients on: the detached copies would lose them
        assert with_grad == 0
