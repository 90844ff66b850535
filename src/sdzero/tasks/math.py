"""Math datasets (GSM8K, MATH, OpenR1-Math, ...) from the hub or a local file, verified with math-verify."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdzero.errors import SDZeroError
from sdzero.tasks.base import Question, Task
from sdzero.tasks.data import load_rows
from sdzero.verifiers.answers import extract_answer, gold_from_solution
from sdzero.verifiers.math import MathVerifier

QUESTION_COLUMNS = ("question", "problem", "prompt")
ANSWER_COLUMNS = ("answer", "final_answer", "solution")
def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise SDZeroError(f"dataset {source!r} has no {what} column {wanted!r}; its columns are {columns}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise SDZeroError(
        f"dataset {source!r} has no {what} column (looked for {list(candidates)}); its columns are {columns}; "
        f"name it with --{what}_column"
    )


class MathTask(Task):
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
        super().__init__(prompt_template)
        self.name = f"math:{source}"
        self.seed = seed
        self.answer_fallback = answer_fallback
        rows = load_rows(source, dataset_config, dataset_split)
        if len(rows) == 0:
            raise SDZeroError(f"dataset {source!r} is empty")
        columns = list(rows.column_names)
        self.qcol = _pick(columns, question_column, QUESTION_COLUMNS, "question", source)
        self.acol = _pick(columns, answer_column, ANSWER_COLUMNS, "answer", source)
        self.rows = rows
        self.stem = Path(source).stem if Path(source).suffix else source.replace("/", "_")
        self.verifier = MathVerifier(timeout_s=verify_timeout)

    def pool(self, n: int) -> list[Question]:
        def candidates():
            for i in np.random.default_rng(self.seed).permutation(len(self.rows)).tolist():
                row = self.rows[i]
                text, raw_answer = str(row[self.qcol] or "").strip(), row[self.acol]
                if text and raw_answer is not None:
                    solution = str(raw_answer)
                    yield Question(id=f"{self.stem}-{i}", prompt=self.format_prompt(text),
                                   answer=gold_from_solution(solution), solution=solution)

        return self.first_distinct(candidates(), n)

    def answer_text(self, question: Question, response: str) -> str | None:
        return extract_answer(response, self.answer_fallback)  # type: ignore[arg-type]

    def reward(self, question: Question, response: str) -> float:
        return 1.0 if self.verifier(self.answer_text(question, response), question.answer) else 0.0

    def close(self) -> None:
        self.verifier.close()
