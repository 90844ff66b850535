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
from typing import Any

from sdzero.errors import SDZeroError

PAPER_CORRECT_PHRASE = "Let me rephrase the above solution."
PAPER_WRONG_PHRASE = "Wait, this response is not correct, let me start over."
DEFAULT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ControlPhrases:
    """The only way the reward enters the reviser's context. Phase 1, Phase 2 and eval must share them."""

    correct: str = PAPER_CORRECT_PHRASE
    wrong: str = PAPER_WRONG_PHRASE
    separator: str = DEFAULT_SEPARATOR

    def phrase(self, reward: float) -> str:
        return self.correct if reward >= 1.0 else self.wrong

    def suffix_text(self, reward: float) -> str:
        """The text appended after the draft: sep + P_r + sep."""
        return self.separator + self.phrase(reward) + self.separator

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ControlPhrases":
        return cls(**(d or {}))


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


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """ids of a piece of text inside a turn: no BOS or other special tokens added."""
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


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
