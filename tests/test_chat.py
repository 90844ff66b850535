import pytest

from sdzero.chat import ControlPhrases, chat_prompt_ids, reviser_context_ids, text_ids
from sdzero.errors import SDZeroError
from sdzero.generation import HFGenerator, SamplingParams


def rendered_reviser_text(tokenizer, question, draft, phrases, reward):
    """What the chat template renders for the same turn as text: the assistant message continued."""
    body = draft + phrases.separator + phrases.phrase(reward)
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": body}]
    text = tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    return text + phrases.separator


@pytest.mark.parametrize("reward", [0.0, 1.0])
def test_reviser_context_from_ids_equals_template_rendering(tokenizer, tiny_model, reward):
    phrases = ControlPhrases()
    question = "What is 2 + 3? Think, then answer."
    prompt = chat_prompt_ids(tokenizer, question)
    # A real draft from the model, ids as generated (never re-tokenized).
    draft = HFGenerator(tiny_model, tokenizer, show_progress=False).generate(
        [prompt], SamplingParams(max_new_tokens=40, temperature=1.0), seed=3)[0][0]
    suffix = text_ids(tokenizer, phrases.suffix_text(reward))
    ids = reviser_context_ids(prompt, draft.ids, suffix)
    assert ids[: len(prompt)] == prompt
    assert ids[len(prompt) : len(prompt) + len(draft.ids)] == draft.ids
    decoded = tokenizer.decode(ids, skip_special_tokens=False)
    draft_text = tokenizer.decode(draft.ids, skip_special_tokens=False)  # a random model emits specials too
    assert decoded == rendered_reviser_text(tokenizer, question, draft_text, phrases, reward)


def test_ids_concatenation_differs_from_retokenizing(tokenizer):
    """Why the context is built from ids: re-tokenizing the joined text merges across the boundary."""
    draft_ids = text_ids(tokenizer, "so it is 5\n")
    suffix_ids = text_ids(tokenizer, "\nLet me rephrase.")
    joined = text_ids(tokenizer, tokenizer.decode(draft_ids + suffix_ids))
    assert joined != draft_ids + suffix_ids  # "\n" + "\n" became the merged "\n\n" token
    assert tokenizer.decode(joined) == tokenizer.decode(draft_ids + suffix_ids)


def test_chat_prompt_ids_is_a_plain_list(tokenizer):
    ids = chat_prompt_ids(tokenizer, "hi")
    assert isinstance(ids, list) and all(isinstance(t, int) for t in ids)
    assert tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with_system = chat_prompt_ids(tokenizer, "hi", system_prompt="be brief")
    assert tokenizer.decode(with_system).startswith("<|im_start|>system\nbe brief<|im_end|>")


def test_truncation_cuts_the_draft_never_the_question():
    prompt, draft, suffix = [1, 2, 3, 4], list(range(10, 30)), [7, 8]
    assert reviser_context_ids(prompt, draft, suffix, max_length=100) == prompt + draft + suffix
    out = reviser_context_ids(prompt, draft, suffix, max_length=10)
    assert out == prompt + draft[:4] + suffix
    assert reviser_context_ids(prompt, draft, suffix, max_length=6) == prompt + suffix
    with pytest.raises(SDZeroError, match="never truncated"):
        reviser_context_ids(prompt, draft, suffix, max_length=5)


def test_control_phrases_defaults_and_choice():
    p = ControlPhrases()
    assert p.phrase(1.0) == "Let me rephrase the above solution."
    assert p.phrase(0.0) == "Wait, this response is not correct, let me start over."
    assert p.suffix_text(0.0) == "\n\nWait, this response is not correct, let me start over.\n\n"
    assert ControlPhrases.from_dict(p.to_dict()) == p


def test_tokenizer_without_chat_template_is_a_clear_error():
    from conftest import make_tokenizer

    with pytest.raises(SDZeroError, match="no chat template"):
        chat_prompt_ids(make_tokenizer(chat_template=None), "hi")
