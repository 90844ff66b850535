"""One generation budget, counted the same way for every method (SD-Zero and the baselines).

A *generation* is one sampled response (a draft, a revision, a rollout); its *sampled tokens* are the
tokens the model produced for it, the stop token excluded. Held-out evaluation is not charged: it is the
measurement, the same for every method. A method asks `take(n)` before sampling n responses and gets how
many it may still sample (so it stops at its budget, never past it), then `spend(completions)` records what
was actually sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from sdzero.errors import SDZeroError


@dataclass
class GenerationBudget:
    max_generations: int | None = None  # None: unlimited (only counted)
    generations: int = 0
    sampled_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_generations is not None and self.max_generations < 1:
            raise SDZeroError(f"the generation budget must be at least 1, not {self.max_generations}")

    @property
    def remaining(self) -> int | None:
        return None if self.max_generations is None else max(0, self.max_generations - self.generations)

    def take(self, wanted: int) -> int:
        """How many of `wanted` generations fit in what is left (all of them when unlimited)."""
        left = self.remaining
        return wanted if left is None else min(wanted, left)

    def spend(self, completions: Iterable[Any], what: str = "") -> None:
        """Record sampled completions (anything with `num_tokens`, or a list of token ids)."""
        n = tokens = 0
        for c in completions:
            n += 1
            tokens += c.num_tokens if hasattr(c, "num_tokens") else len(c)
        self.charge(n, tokens, what)

    def charge(self, generations: int, sampled_tokens: int, what: str = "") -> None:
        if self.max_generations is not None and self.generations + generations > self.max_generations:
            raise SDZeroError(f"{what or 'a method'} sampled past its budget: {self.generations} + {generations} > "
                              f"{self.max_generations} generations (call take() before sampling)")
        self.generations += generations
        self.sampled_tokens += sampled_tokens
