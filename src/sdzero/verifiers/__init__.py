"""Verifiers: a response in, a binary reward out. Math through math-verify; code tasks bring their own."""

from sdzero.verifiers.answers import extract_answer, gold_from_solution, last_boxed, last_number
from sdzero.verifiers.math import MathVerifier

__all__ = ["MathVerifier", "extract_answer", "gold_from_solution", "last_boxed", "last_number"]
