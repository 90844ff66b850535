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


# ---------------------------------------------------------------- the suffix's ids, as in running text

def test_running_text_suffix_ids_are_what_the_text_becomes_when_a_revision_follows():
    from conftest import make_tokenizer

    from sdzero.chat import running_text_ids

    tok = make_tokenizer(split_like_gpt2=True)
    suffix = ControlPhrases().suffix_text(0.0)
    standalone, running = text_ids(tok, suffix), running_text_ids(tok, suffix)
    assert tok.convert_ids_to_tokens(standalone[-1:]) == ["ĊĊ"]  # the merged token, never seen before a word
    assert tok.convert_ids_to_tokens(running[-2:]) == ["Ċ", "Ċ"]
    assert tok.decode(running) == suffix
    for revision in ("The sum is 7.", "8 - 0 = 8"):
        assert text_ids(tok, suffix + revision) == running + text_ids(tok, revision)
    assert ControlPhrases().suffix_ids(tok) == {r: running_text_ids(tok, ControlPhrases().suffix_text(r))
                                                 for r in (0.0, 1.0)}
    assert ControlPhrases(suffix_tokenization="standalone").suffix_ids(tok)[0.0] == standalone


def test_phrases_stored_before_the_option_keep_their_standalone_suffix():
    old = {"correct": "Let me rephrase the above solution.", "separator": "\n\n",
           "wrong": "Wait, this response is not correct, let me start over."}
    assert ControlPhrases.from_dict(old).suffix_tokenization == "standalone"
    assert ControlPhrases.from_dict(None).suffix_tokenization == "running"
    with pytest.raises(SDZeroError, match="suffix_tokenization"):
        ControlPhrases(suffix_tokenization="merged")


def test_turn_end_comes_from_the_chat_template_not_eos():
    from conftest import make_tokenizer

    from sdzero.chat import turn_end_id
    from sdzero.generation import stop_token_ids

    chatml = make_tokenizer()
    assert turn_end_id(chatml) == chatml.eos_token_id == chatml.convert_tokens_to_ids("<|im_end|>")
    # A tokenizer whose eos is <|endoftext|> while its template ends a turn with <|im_end|> (as some models do).
    other = make_tokenizer(eos_token="<|endoftext|>")
    assert other.eos_token_id == other.convert_tokens_to_ids("<|endoftext|>")
    assert turn_end_id(other) == other.convert_tokens_to_ids("<|im_end|>")
    assert turn_end_id(other) in stop_token_ids(other)  # generation stops there too
