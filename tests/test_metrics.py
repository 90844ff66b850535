import itertools
import math

import pytest

from sdzero.metrics import mean_pass_at_k, pass_at_k, report_ks


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) containing a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert math.isclose(pass_at_k(n, c, k), brute_force_pass_at_k(n, c, k), abs_tol=1e-12), (n, c, k)


def test_pass_at_1_is_accuracy():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_rejects_bad_input():
    for n, c, k in [(4, 5, 1), (4, 2, 0), (4, 2, 5), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_mean_pass_at_k_and_ks():
    assert mean_pass_at_k([[1, 0], [0, 0]], 2) == pytest.approx(0.5)
    assert mean_pass_at_k([[1, 0], [0, 0]], 1) == pytest.approx(0.25)
    assert report_ks(8) == [1, 2, 4, 8]
    assert report_ks(6) == [1, 2, 4, 6]
    assert report_ks(1) == [1]
