"""Pulling the final answer out of a model's response.

A response can be a self-revision trace: a first attempt, a control phrase ("Wait, this response is not
correct, let me start over."), then a second attempt. Its answer is the *final* one, so grading starts
from `final_attempt`: the text after the last control phrase (the whole response when there is none).

Within that text, order of preference: the last \\boxed{...}; the last "Answer: ..." / "the answer is ..." /
"final answer: ..."; the last "#### ..."; then a fallback. Small models rarely follow the requested format
(8-30% of samples for SmolLM2-135M, ../shared/CPU-FACTS.md), so the default fallback is the last number in
the response, which is kinder than insisting on the format. `fallback="none"` is the strict variant.
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

from sdzero.chat import (OFFICIAL_OLMO_WRONG_PHRASE, OFFICIAL_QWEN_WRONG_PHRASE, PAPER_CORRECT_PHRASE,
                         PAPER_WRONG_PHRASE)

Fallback = Literal["last_number", "last_line", "none"]

NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")
ANSWER_RE = re.compile(r"(?:final\s+answer|answer)\s*(?:is\b|:)\s*:?(.*)", re.IGNORECASE)
HASHES_RE = re.compile(r"####\s*(.*)")
UNICODE_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})


# The control phrases of the paper and of the official code (../shared/SDZERO.md). A task also knows the
# phrases of the run it grades (`Task.add_control_phrases`).
KNOWN_CONTROL_PHRASES = (PAPER_CORRECT_PHRASE, PAPER_WRONG_PHRASE, OFFICIAL_QWEN_WRONG_PHRASE,
                         OFFICIAL_OLMO_WRONG_PHRASE)


def last_control_phrase_end(text: str, control_phrases: Sequence[str] = KNOWN_CONTROL_PHRASES) -> int:
    """Where the last control phrase in `text` ends (its final attempt begins after it); -1 when it has none."""
    return max((text.rfind(p) + len(p) for p in control_phrases if p and p in text), default=-1)


def final_attempt(text: str, control_phrases: Sequence[str] = KNOWN_CONTROL_PHRASES) -> str:
    """The text after the last control phrase: the final attempt of a self-revision trace (else all of it)."""
    cut = last_control_phrase_end(text, control_phrases)
    return text if cut < 0 else text[cut:].lstrip()


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced: the response was cut off inside the box


def _clean(candidate: str) -> str:
    c = candidate.translate(UNICODE_MINUS).replace("**", "").strip()
    c = c.strip("$ ").rstrip(".").strip()
    if c.startswith("\\(") and c.endswith("\\)"):
        c = c[2:-2].strip()
    return c


def extract_answer(text: str, fallback: Fallback = "last_number") -> str | None:
    """The response's final answer as a string, or None when nothing answer-like is found."""
    text = text.translate(UNICODE_MINUS)
    boxed = last_boxed(text)
    if boxed:
        return _clean(boxed)
    lines = text.replace("**", "").splitlines()
    for pattern in (ANSWER_RE, HASHES_RE):
        for k in range(len(lines) - 1, -1, -1):
            m = None
            for m in pattern.finditer(lines[k]):
                pass
            if m is None:
                continue
            rest = _clean(m.group(1))
            if not rest:  # "Answer:" alone on its line: the answer is on the next non-empty line
                rest = next((_clean(x) for x in lines[k + 1 :] if x.strip()), "")
            if rest:
                # "Answer: 5 - 3 = 2" -> "2": the value after the last equals sign.
                return rest.rsplit("=", 1)[-1].strip() or rest
    if fallback == "last_number":
        nums = NUMBER_RE.findall(text)
        return nums[-1].replace(" ", "") if nums else None
    if fallback == "last_line":
        nonempty = [x for x in lines if x.strip()]
        return _clean(nonempty[-1]) if nonempty else None
    return None


def last_number(candidate: str | None) -> str | None:
    """The last number inside an extracted answer ("8 apples" -> "8", "1,234" -> "1234"), else the input."""
    if candidate is None:
        return None
    nums = NUMBER_RE.findall(candidate.translate(UNICODE_MINUS))
    return nums[-1].replace(",", "").replace(" ", "") if nums else candidate


def gold_from_solution(solution: str) -> str:
    """Final answer of a reference solution: GSM8K's '... #### 18', a \\boxed{} (MATH/OpenR1), else as is."""
    if "####" in solution:
        return _clean(solution.rsplit("####", 1)[1])
    boxed = last_boxed(solution)
    if boxed:
        return boxed
    return solution.strip()
