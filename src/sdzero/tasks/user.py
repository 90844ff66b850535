"""Tasks from Python objects, for the trainers' Python API: a reward function and a dataset of questions.

    def reward(question, response) -> float   # question: a `Question` (.prompt, .answer, .meta = the row)

A dataset is a list (or a `datasets.Dataset`) of strings, of dicts, or of `Question`s. A dict's prompt is
its first column among prompt / question / problem / input, its gold answer the `answer` column (may be
absent: the reward function decides), its id the `id` column (else a hash of its prompt, so that resumed
work never mistakes another dataset's question for this one); the whole row is kept
in `Question.meta`. Like every task, a response is graded by its final attempt (the text after its last
control phrase).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

from sdzero.errors import SDZeroError
from sdzero.tasks.base import Question, Task

PROMPT_COLUMNS = ("prompt", "question", "problem", "input")


class FunctionTask(Task):
    """A Task whose verifier is a Python function `reward(question, response) -> float`."""

    def __init__(self, reward: Callable[[Question, str], float], name: str | None = None):
        super().__init__()
        self.reward_function = reward
        self.name = name or getattr(reward, "__name__", "reward")

    def pool(self, n: int) -> list[Question]:
        raise SDZeroError(f"task {self.name} is a reward function: pass the questions as a dataset")

    def reward(self, question: Question, response: str) -> float:
        return float(self.reward_function(question, response))


def as_task(reward: Any) -> Task:
    """A Task as is, or a reward function wrapped as one."""
    if isinstance(reward, Task):
        return reward
    if callable(reward):
        return FunctionTask(reward)
    raise SDZeroError(f"reward_funcs must be a Task or a function (question, response) -> float, not "
                      f"{type(reward).__name__}")


def _default_id(prompt: str) -> str:
    return "q-" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def as_questions(dataset: Iterable[Any]) -> list[Question]:
    """Questions from a list or `datasets.Dataset` of strings, dicts or Questions (see the module's doc)."""
    out = []
    for i, row in enumerate(dataset):
        if isinstance(row, Question):
            out.append(row)
        elif isinstance(row, str):
            out.append(Question(id=_default_id(row), prompt=row, answer=""))
        elif isinstance(row, dict):
            column = next((c for c in PROMPT_COLUMNS if c in row), None)
            if column is None:
                raise SDZeroError(f"row {i} of the dataset has no prompt column (one of {', '.join(PROMPT_COLUMNS)}); "
                                  f"its columns: {', '.join(map(str, row))}")
            answer = row.get("answer")
            prompt = str(row[column])
            out.append(Question(id=str(row["id"]) if "id" in row else _default_id(prompt), prompt=prompt,
                                answer="" if answer is None else str(answer), solution=row.get("solution"),
                                meta=dict(row)))
        else:
            raise SDZeroError(f"row {i} of the dataset is a {type(row).__name__}; give strings, dicts or Questions")
    if not out:
        raise SDZeroError("the dataset has no questions")
    return out
