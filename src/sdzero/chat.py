"""Prompts as token ids: the generator's chat prompt and the reviser's context.

The reviser context is the generator's turn continued (../shared/SDZERO.md, "Reviser context layout"):

    ids(chat(x) + <assistant start>) + ids(y) + ids(sep + P_r + sep)

It is built by concatenating token ids, never by decoding y and tokenizing again: re-tokenizing can
merge tokens across the boundary (SmolLM2 encodes "\\n\\n" at the end of a text as one token and at its
start as two), which would make the teacher score a different sequence than the student produced.
When the context is too long, y is truncated from its end; the question is never cut.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from sdzero.errors import SDZeroError

PAPER_CORRECT_PHRASE = "Let me rephrase the above solution."
PAPER_WRONG_PHRASE = "Wait, this response is not correct, let me start over."
OFFICIAL_QWEN_WRONG_PHRASE = "Wait, this response is wrong. Let me correct it."  # the official code's
OFFICIAL_OLMO_WRONG_PHRASE = "Wrong. I need to redo all."
DEFAULT_SEPARATOR = "\n\n"


SUFFIX_TOKENIZATIONS = ("running", "standalone")


@dataclass(frozen=True)
class ControlPhrases:
    """The only way the reward enters the reviser's context. Phase 1, Phase 2 and eval must share them.

    `suffix_tokenization` says which ids stand for sep + P_r + sep. "standalone": the text tokenized on its
    own. "running": the ids it has when text follows it, as in the revision the model goes on to write
    (`running_text_ids`). They differ where a tokenizer merges a trailing separator: SmolLM2 encodes a final
    "\n\n" as one token `ĊĊ` that it practically never sees before a word, while "over.\n\nThe" is
    `. Ċ Ċ The`.
    """

    correct: str = PAPER_CORRECT_PHRASE
    wrong: str = PAPER_WRONG_PHRASE
    separator: str = DEFAULT_SEPARATOR
    suffix_tokenization: str = "running"

    def __post_init__(self) -> None:
        if self.suffix_tokenization not in SUFFIX_TOKENIZATIONS:
            raise SDZeroError(f"suffix_tokenization must be running or standalone, not {self.suffix_tokenization!r}")

    def phrase(self, reward: float) -> str:
        return self.correct if reward >= 1.0 else self.wrong

    def suffix_text(self, reward: float) -> str:
        """The text appended after the draft: sep + P_r + sep."""
        return self.separator + self.phrase(reward) + self.separator

    def suffix_ids(self, tokenizer: Any) -> dict[float, list[int]]:
        """ids of sep + P_r + sep for reward 0.0 and 1.0, tokenized as `suffix_tokenization` says."""
        ids = running_text_ids if self.suffix_tokenization == "running" else text_ids
        return {r: ids(tokenizer, self.suffix_text(r)) for r in (0.0, 1.0)}

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ControlPhrases":
        d = dict(d or {})
        if d:  # stored before suffix_tokenization existed: those models were trained on standalone ids
            d.setdefault("suffix_tokenization", "standalone")
        return cls(**d)


def _as_id_list(encoded: Any) -> list[int]:
    """transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); 4.x a list."""
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):  # a batch of one
        encoded = encoded[0]
    return [int(t) for t in encoded]


def check_chat_template(tokenizer: Any, model_name: str = "the model") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise SDZeroError(
            f"the tokenizer of {model_name} has no chat template; SD-Zero prompts the model through its chat "
            "template (generator turn, then the reviser continuing that turn). Use an instruct/chat model, or "
            "set tokenizer.chat_template before passing it in."
        )


def chat_prompt_ids(tokenizer: Any, user_message: str, system_prompt: str | None = None) -> list[int]:
    """ids of chat(x) + <assistant start>: the generator's prompt."""
    check_chat_template(tokenizer)
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_message})
    return _as_id_list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def turn_end_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn in the chat template (ChatML's <|im_end|>, Llama 3's <|eot_id|>),
    which is not always the tokenizer's eos: read it off a rendered conversation, the first special token
    after the assistant's text. Falls back to eos when the template shows none."""
    check_chat_template(tokenizer)
    mark = "sdzero-turn-end-probe"
    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": mark}]
    rendered = tokenizer.apply_chat_template(turn, tokenize=False)
    rest = rendered[rendered.find(mark) + len(mark):].lstrip(" ") if mark in rendered else ""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials = set(tokenizer.all_special_tokens) | {t.content for t in added.values() if getattr(t, "special", False)}
    for special in sorted(specials, key=len, reverse=True):
        if special and rest.startswith(special):
            return int(tokenizer.convert_tokens_to_ids(special))
    if tokenizer.eos_token_id is None:
        raise SDZeroError("the chat template shows no end-of-turn token and the tokenizer has no eos token")
    return int(tokenizer.eos_token_id)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """ids of a piece of text inside a turn: no BOS or other special tokens added."""
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


# Text that a revision typically starts with; `running_text_ids` checks each by a round trip.
_CONTINUATIONS = ("The", "1", "To", "x")


def running_text_ids(tokenizer: Any, text: str) -> list[int]:
    """ids of `text` as they come out when more text follows it: ids(text + c) minus the ids of c, for the
    first continuation c whose ids split cleanly (the prefix decodes to exactly `text`). Falls back to
    `text_ids` when no continuation splits cleanly (a tokenizer that merges across the boundary)."""
    for c in _CONTINUATIONS:
        ids = text_ids(tokenizer, text + c)
        tail = text_ids(tokenizer, c)
        if tail and ids[-len(tail):] == tail:
            head = ids[: -len(tail)]
            if tokenizer.decode(head, clean_up_tokenization_spaces=False) == text:
                return head
    return text_ids(tokenizer, text)


def reviser_context_ids(
    prompt_ids: list[int],
    response_ids: list[int],
    suffix_ids: list[int],
    max_length: int | None = None,
) -> list[int]:
    """prompt_ids + response_ids + suffix_ids, truncating the response (never the prompt) to max_length.

    prompt_ids: the generator's prompt, chat(x) + <assistant start>.
    response_ids: the draft y, without its end-of-turn token.
    suffix_ids: ids of sep + P_r + sep (see ControlPhrases.suffix_text).
    """
    if max_length is not None:
        room = max_length - len(prompt_ids) - len(suffix_ids)
        if room < 0:
            raise SDZeroError(
                f"the reviser context does not fit: the question's prompt ({len(prompt_ids)} tokens) plus the "
                f"control phrase ({len(suffix_ids)} tokens) exceed the limit of {max_length} tokens; raise the "
                "limit or shorten the prompt template (the question itself is never truncated)"
            )
        response_ids = response_ids[:room]
    return list(prompt_ids) + list(response_ids) + list(suffix_ids)


def build_prompts(tokenizer: Any, questions: Sequence[Any], system_prompt: str | None,
                  max_prompt_tokens: int | None) -> list[list[int]]:
    """Chat prompt ids per question (objects with .id and .prompt), none longer than max_prompt_tokens."""
    prompts = [chat_prompt_ids(tokenizer, q.prompt, system_prompt) for q in questions]
    if max_prompt_tokens is not None:
        for q, p in zip(questions, prompts):
            if len(p) > max_prompt_tokens:
                raise SDZeroError(
                    f"question {q.id} has a {len(p)}-token prompt, over the limit of {max_prompt_tokens}; raise "
                    "max_prompt_tokens or filter long questions out (questions are never truncated)"
                )
    return prompts
