"""Math datasets (GSM8K, MATH, OpenR1-Math, ...) from the hub or a local file, verified with math-verify."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sdzero.errors import SDZeroError
from sdzero.tasks.base import Question, Task, template_placeholders
from sdzero.tasks.data import load_rows
from sdzero.verifiers.answers import extract_answer, gold_from_solution
from sdzero.verifiers.math import MathVerifier

QUESTION_COLUMNS = ("question", "problem", "prompt")
ANSWER_COLUMNS = ("answer", "final_answer", "solution")
def _find(columns: list[str], name: str) -> str | None:
    """A column by name: exact, else the one equal to it ignoring case."""
    if name in columns:
        return name
    return next((c for c in columns if c.lower() == name.lower()), None)


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str,
          required: bool = True) -> str | None:
    if wanted is not None:
        found = _find(columns, wanted)
        if found is None:
            raise SDZeroError(f"dataset {source!r} has no {what} column {wanted!r}; its columns are {columns}")
        return found
    for c in candidates:
        found = _find(columns, c)
        if found is not None:
            return found
    if not required:
        return None
    raise SDZeroError(
        f"dataset {source!r} has no {what} column (looked for {list(candidates)}, any case); its columns are "
        f"{columns}; name it with --{what}_column"
    )


def _last_turn(messages: Any, role: str) -> str | None:
    """The content of the last message of `role` in a conversation ([{"role", "content"}, ...])."""
    for m in reversed(list(messages or [])):
        if isinstance(m, dict) and m.get("role") == role and m.get("content"):
            return str(m["content"])
    return None


class MathTask(Task):
    """A math dataset from a file or the hub. The question is a column (question / problem / prompt, any case,
    or --question_column), or the last user turn of a conversational `messages` column; the prompt template may
    also name other columns ({Body} {Question}). The gold answer is a column (answer / final_answer / solution),
    else a conversation's last assistant turn; GSM8K '#### 18' and \\boxed{} are reduced to the final answer."""

    default_template = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."

    def __init__(
        self,
        source: str,
        question_column: str | None = None,
        answer_column: str | None = None,
        dataset_config: str | None = None,
        dataset_split: str = "train",
        seed: int = 0,
        prompt_template: str | None = None,
        answer_fallback: str = "last_number",
        verify_timeout: float = 5.0,
    ):
        self.name = f"math:{source}"
        self.seed = seed
        self.answer_fallback = answer_fallback
        rows = load_rows(source, dataset_config, dataset_split)
        if len(rows) == 0:
            raise SDZeroError(f"dataset {source!r} is empty")
        columns = list(rows.column_names)
        super().__init__(prompt_template, columns)
        conversation = question_column is None and _find(columns, "messages") is not None and \
            _pick(columns, None, QUESTION_COLUMNS, "question", source, required=False) is None
        self.messages = _find(columns, "messages") if conversation else None
        needs_question = "question" in template_placeholders(self.prompt_template) and not self.messages
        self.qcol = _pick(columns, question_column, QUESTION_COLUMNS, "question", source, required=needs_question)
        self.acol = _pick(columns, answer_column, ANSWER_COLUMNS, "answer", source, required=not self.messages)
        self.rows = rows
        self.stem = Path(source).stem if Path(source).suffix else source.replace("/", "_")
        self.verifier = MathVerifier(timeout_s=verify_timeout)

    def pool(self, n: int) -> list[Question]:
        def candidates():
            for i in np.random.default_rng(self.seed).permutation(len(self.rows)).tolist():
                row = self.rows[i]
                if self.messages:
                    text = (_last_turn(row[self.messages], "user") or "").strip()
                    raw_answer = row[self.acol] if self.acol else _last_turn(row[self.messages], "assistant")
                else:
                    text, raw_answer = str(row[self.qcol] or "").strip() if self.qcol else "", row[self.acol]
                prompt = self.format_prompt(text, row)
                has_question = bool(text) if (self.messages or self.qcol) else bool(prompt.strip())
                if has_question and raw_answer is not None:
                    solution = str(raw_answer)
                    yield Question(id=f"{self.stem}-{i}", prompt=prompt, answer=gold_from_solution(solution),
                                   solution=solution)

        return self.first_distinct(candidates(), n)

    def answer_text(self, question: Question, response: str) -> str | None:
        return extract_answer(response, self.answer_fallback)  # type: ignore[arg-type]

    def reward(self, question: Question, response: str) -> float:
        return 1.0 if self.verifier(self.answer_text(question, response), question.answer) else 0.0

    def close(self) -> None:
        self.verifier.close()
