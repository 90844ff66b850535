"""A task = a deterministic pool of questions + a verifier that gives a binary reward.

Splits are disjoint by question text and deterministic: the pool is built in a fixed order from the
task's seed, duplicates dropped, and named sets are taken from its front in the order given. `eval`
comes first by default, so the held-out set does not move when the training sets change size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from sdzero.errors import SDZeroError
from sdzero.verifiers.answers import KNOWN_CONTROL_PHRASES, final_attempt


@dataclass
class Question:
    id: str
    prompt: str  # the user message: the question inside the task's prompt template
    answer: str  # the gold final answer
    solution: str | None = None  # a reference solution when the data has one (SDFT's demonstration)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "answer": self.answer, "solution": self.solution}


def template_placeholders(template: str) -> list[str]:
    """The {name} placeholders of a prompt template, in order ("\\boxed{}" and "{ x }" are not placeholders)."""
    return list(dict.fromkeys(re.findall(r"\{([A-Za-z_][A-Za-z0-9_ ]*)\}", template)))


class Task:
    """Subclasses implement `pool(n)` and `reward(question, response)`.

    `rewards` and `verdicts` grade a response by its final attempt (`final_attempt`: the text after the last
    control phrase), so a self-revision trace "... Answer: 7 <start over> ... 8" is graded by its 8.
    `reward` grades exactly the text it is given.
    """

    name: str = "task"
    default_template: str = "{question}"
    control_phrases: tuple[str, ...] = KNOWN_CONTROL_PHRASES  # where a response's final attempt begins

    def __init__(self, prompt_template: str | None = None, columns: Sequence[str] = ()):
        """`columns`: the dataset's columns, which the template may name as placeholders ({Body} {Question})
        besides {question} (the question column); a task without columns takes {question} only."""
        template = prompt_template or self.default_template
        names = template_placeholders(template)
        by_lower = {c.lower(): c for c in columns}
        unknown = [n for n in names if n != "question" and n.lower() not in by_lower]
        if unknown:
            where = f"the dataset's columns are {list(columns)}" if columns else "this task takes {question} only"
            raise SDZeroError(f"the prompt template names {', '.join('{' + n + '}' for n in unknown)}, which is not a "
                              f"placeholder here: {where} (and {{question}}, the question column)")
        if not names:
            raise SDZeroError(f"the prompt template must contain a {{question}} placeholder: {template!r}")
        self.prompt_template = template
        self.template_columns = {n: by_lower[n.lower()] for n in names if n != "question"}

    def format_prompt(self, question_text: str, row: dict[str, Any] | None = None) -> str:
        text = self.prompt_template.replace("{question}", question_text)
        for name, column in self.template_columns.items():
            text = text.replace("{" + name + "}", str((row or {}).get(column, "")).strip())
        return text

    def pool(self, n: int) -> list[Question]:
        """At least n distinct questions in a fixed order (fewer only when the source has fewer)."""
        raise NotImplementedError

    @staticmethod
    def first_distinct(candidates: Iterable[Question], n: int) -> list[Question]:
        """The first n candidates with distinct prompts (candidates are produced lazily)."""
        seen: set[str] = set()
        out: list[Question] = []
        for q in candidates:
            if q.prompt in seen:
                continue
            seen.add(q.prompt)
            out.append(q)
            if len(out) == n:
                break
        return out

    def reward(self, question: Question, response: str) -> float:
        """1.0 when the response's final answer is right, else 0.0."""
        raise NotImplementedError

    def answer_text(self, question: Question, response: str) -> str | None:
        """The answer string that `reward` grades in this (final-attempt) text, when the task has one (math
        and reasoning-gym tasks; code tasks have none). Phase 2 logs the probabilities of its tokens."""
        return None

    def add_control_phrases(self, phrases: Any) -> None:
        """Also cut responses at these phrases (a ControlPhrases or strings) when finding the final attempt."""
        found = [phrases.correct, phrases.wrong] if hasattr(phrases, "wrong") else list(phrases)
        self.control_phrases = tuple(dict.fromkeys([*self.control_phrases, *found]))

    def final_attempt(self, response: str) -> str:
        return final_attempt(response, self.control_phrases)

    def rewards(self, pairs: Sequence[tuple[Question, str]]) -> list[float]:
        """Rewards of many (question, response) pairs; code tasks run them in parallel in the sandbox."""
        return [v["reward"] for v in self.verdicts(pairs)]

    def verdicts(self, pairs: Sequence[tuple[Question, str]]) -> list[dict[str, Any]]:
        """{"reward": 0/1, ...} of each response's final attempt: code tasks add status (pass/fail/timeout/
        error), reason and stderr tail."""
        return [{"reward": self.reward(q, self.final_attempt(r))} for q, r in pairs]

    def split(self, sizes: dict[str, int]) -> dict[str, list[Question]]:
        """Disjoint named question sets, taken in the order of `sizes` from the front of the pool."""
        if any(n < 0 for n in sizes.values()):
            raise SDZeroError(f"split sizes must be >= 0: {sizes}")
        total = sum(sizes.values())
        if total == 0:
            raise SDZeroError("all split sizes are 0: ask for at least one question")
        questions = self.pool(total)
        if len(questions) < total:
            raise SDZeroError(
                f"task {self.name} has only {len(questions)} distinct questions, but the splits ask for {total} "
                f"({sizes}); use smaller splits or a harder/larger task configuration"
            )
        out, start = {}, 0
        for name, n in sizes.items():
            out[name] = questions[start : start + n]
            start += n
        return out

    def close(self) -> None:
        """Release verifier resources (worker processes)."""
