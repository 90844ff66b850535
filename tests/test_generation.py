import pytest
import torch

from sdzero.chat import chat_prompt_ids
from sdzero.errors import SDZeroError
from sdzero.generation import HFGenerator, SamplingParams, make_generator


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
