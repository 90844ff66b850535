"""reasoning-gym generators as tasks: procedurally generated, seeded, scored by the generator's own scorer.

Notes:
- reasoning-gym seeds item i with Random(seed + i), so seed s+1 is seed s shifted by one item: different
  seeds do NOT give independent sets. Splits therefore come from one pool with duplicates removed.
- Several scorers give partial credit (e.g. 0.5 or 0.01) to wrong answers; a response counts as correct
  only at a score of 1.0.
- The answer is extracted from the response first (see `sdzero.verifiers.answers`); for tasks whose gold
  answers are numbers, the last number of the extracted answer is what the scorer sees.
- Generators that record the expression they ask about (basic_arithmetic, chain_sum, ...) give a worked
  solution, the expression and its value in the prompt's answer format: SDFT's demonstration.
"""

from __future__ import annotations

import re
from typing import Any

from sdzero.errors import SDZeroError
from sdzero.tasks.base import Question, Task
from sdzero.verifiers.answers import extract_answer, last_number

_NUMERIC = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


class ReasoningGymTask(Task):
    default_template = "{question}\nGive the final answer on the last line in the form 'Answer: <answer>'."

    def __init__(
        self,
        generator: str,
        options: dict[str, Any] | None = None,
        seed: int = 0,
        prompt_template: str | None = None,
        answer_fallback: str = "last_number",
    ):
        super().__init__(prompt_template)
        import reasoning_gym
        from reasoning_gym.factory import DATASETS

        if generator not in DATASETS:
            close = [n for n in sorted(DATASETS) if generator in n or n in generator][:8]
            raise SDZeroError(
                f"unknown reasoning-gym generator {generator!r}" + (f"; did you mean one of {close}?" if close else
                f"; {len(DATASETS)} exist, e.g. basic_arithmetic, chain_sum, gcd, gsm_symbolic")
            )
        self.generator, self.options, self.seed = generator, dict(options or {}), seed
        self.answer_fallback = answer_fallback
        self.name = f"rg:{generator}"
        self._max_index = 1_000_000
        try:
            self.dataset = reasoning_gym.create_dataset(generator, seed=seed, size=self._max_index, **self.options)
        except (TypeError, ValueError, AssertionError) as e:
            raise SDZeroError(f"bad options for reasoning-gym generator {generator!r} {self.options}: {e}") from e

    def pool(self, n: int) -> list[Question]:
        def candidates():
            # Small generators (one-digit sums) run out of distinct questions: give up after many repeats.
            for i in range(min(self._max_index, 50 * n + 1000)):
                entry = self.dataset[i]
                yield Question(id=f"{self.generator}-s{self.seed}-{i}", prompt=self.format_prompt(entry["question"]),
                               answer=str(entry["answer"]), solution=worked_solution(entry), meta={"entry": entry})

        return self.first_distinct(candidates(), n)

    def answer_text(self, question: Question, response: str) -> str | None:
        candidate = extract_answer(response, self.answer_fallback)  # type: ignore[arg-type]
        if candidate is not None and _NUMERIC.fullmatch(question.answer.strip()):
            candidate = last_number(candidate)
        return candidate

    def reward(self, question: Question, response: str) -> float:
        candidate = self.answer_text(question, response)
        if candidate is None:
            return 0.0
        try:
            score = self.dataset.score_answer(candidate, question.meta["entry"])
        except Exception:  # a scorer choking on odd model output is a wrong answer, not a crash
            return 0.0
        return 1.0 if score is not None and float(score) >= 1.0 else 0.0


def worked_solution(entry: dict[str, Any]) -> str | None:
    """The expression an arithmetic item asks about, with its value and the answer line the default prompt
    asks for; None for generators that record no expression."""
    expression = (entry.get("metadata") or {}).get("expression")
    if not isinstance(expression, str) or not expression.strip():
        return None
    answer = str(entry["answer"])
    return f"{expression.strip()} = {answer}\nAnswer: {answer}"

