import threading

import pytest

from sdzero.verifiers import MathVerifier, extract_answer, gold_from_solution, last_boxed, last_number


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout_s=10)
    yield v
    v.close()


# (model response, gold answer, expected verdict). Each goes through extraction, then math-verify.
MATH_CASES = [
    ("The answer is 18.", "18", True),  # integer
    ("So she pays \\boxed{18} dollars.", "18", True),  # boxed integer
    ("Answer: -4", "-4", True),  # negative
    ("Answer: −4", "-4", True),  # unicode minus
    ("Answer: 4", "-4", False),  # sign matters
    ("Answer: 3/4", "\\frac{3}{4}", True),  # fraction vs LaTeX fraction
    ("\\boxed{\\frac{3}{4}}", "0.75", True),  # LaTeX fraction vs decimal
    ("Answer: 0.75", "3/4", True),  # decimal vs fraction
    ("Answer: 2.5", "2.50", True),  # trailing zero
    ("Answer: 2.4", "2.50", False),  # wrong decimal
    ("The total is 1,234 apples.\nAnswer: 1,234", "1234", True),  # thousands separator
    ("Answer: 1,000 meters", "1000", True),  # separator and unit
    ("Answer: 18 dollars", "18", True),  # unit word
    ("Answer: $18", "18", True),  # currency sign
    ("Answer: 18.", "18", True),  # sentence period
    ("**Answer:** 42", "42", True),  # markdown bold
    ("Answer:\n42", "42", True),  # answer on the next line
    ("Answer: 5 - 3 = 2", "2", True),  # expression then value
    ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", True),  # LaTeX root
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),  # equivalent surd
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),  # wrong surd
    ("\\boxed{x+1}", "1+x", True),  # symbolic, commuted
    ("first I get 7 then 9", "9", True),  # no format: last number fallback
    ("first I get 9 then 7", "9", False),  # last number is wrong
    ("I don't know.", "9", False),  # nothing to extract
    ("\\boxed{\\frac{1}{2}}", "1/2", True),  # LaTeX vs slash fraction
    ("Answer: 19", "18", False),  # plain wrong integer
    ("The final answer is $\\frac{7}{2}$.", "3.5", True),  # inline LaTeX
]


@pytest.mark.parametrize("response,gold,expected", MATH_CASES)
def test_math_answer_forms(verifier, response, gold, expected):
    assert verifier(extract_answer(response), gold) is expected


def test_at_least_twenty_forms():
    assert len(MATH_CASES) >= 20
    assert sum(not e for _, _, e in MATH_CASES) >= 5  # wrong answers are covered too


def test_strict_extraction_needs_the_format():
    assert extract_answer("first I get 7 then 9", fallback="none") is None
    assert extract_answer("blah\nAnswer: 9", fallback="none") == "9"
    assert extract_answer("line one\nthe result: cat", fallback="last_line") == "the result: cat"


def test_extraction_priorities():
    assert extract_answer("Answer: 3\nActually \\boxed{4}") == "4"  # a box beats an Answer line
    assert extract_answer("Answer: 3\nno wait, Answer: 5") == "5"  # the last Answer line wins
    assert extract_answer("work... #### 12") == "12"


def test_last_boxed_handles_nesting_and_truncation():
    assert last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("cut off \\boxed{\\frac{1}{") is None
    assert last_boxed("no box") is None


def test_last_number():
    assert last_number("8 apples") == "8"
    assert last_number("1,234") == "1234"
    assert last_number("-3/4") == "-3/4"
    assert last_number("none") == "none"


def test_gold_from_solution():
    assert gold_from_solution("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert gold_from_solution("so the result is $\\boxed{\\frac{1}{3}}$.") == "\\frac{1}{3}"
    assert gold_from_solution("  7 ") == "7"


def test_verifier_works_off_the_main_thread(verifier):
    """math-verify's own timeout needs the main thread; ours must not."""
    results = []
    t = threading.Thread(target=lambda: results.append(verifier("\\frac{3}{4}", "0.75")))
    t.start()
    t.join(60)
    assert results == [True]


def slow_compare(candidate, gold):
    """Hangs on one input, like sympy on a pathological expression."""
    import time

    if candidate == "hang":
        time.sleep(60)
    return candidate == gold


def test_verifier_timeout_counts_wrong_and_recovers():
    v = MathVerifier(timeout_s=1.0, compare=slow_compare)
    try:
        assert v("7/2", "7/2") is True  # warms the worker (non-integers go to the worker)
        assert v("hang", "7/2") is False  # deadline passes: wrong, worker killed
        assert v.timeouts == 1
        assert v("7/3", "7/3") is True  # a fresh worker answers
    finally:
        v.close()


def test_a_script_without_a_main_guard_can_grade_math(tmp_path):
    """A user's script that calls the math verifier at module level, with no `if __name__ == "__main__":`
    guard: a spawned multiprocessing worker would re-run the script and fail; a fresh interpreter does not."""
    import subprocess
    import sys

    script = tmp_path / "grade.py"
    script.write_text("from sdzero.verifiers import MathVerifier\n"
                      "v = MathVerifier(timeout_s=20)\n"
                      "print('RESULT', v('1/2', '0.5'), v('\\\\frac{2}{4}', '1/2'), v('1/3', '0.5'))\n"
                      "v.close()\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT True True False" in done.stdout, (done.stdout, done.stderr[-2000:])
