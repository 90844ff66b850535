import json
import shutil

import pytest

from sdzero.cli import main
from sdzero.config import TaskConfig
from sdzero.errors import SDZeroError
from sdzero.tasks import load_task
from sdzero.tasks.code import extract_code


def test_extract_code():
    assert extract_code("Here:\n```python\nprint(1)\n```\nand\n```python\nprint(2)\n```") == "print(2)\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```cpp\nint main(){}\n```\n```python\nprint(3)\n```", "cpp") == "int main(){}\n"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("cut off:\n```python\ndef f():\n    return") == "def f():\n    return"


@pytest.fixture(scope="module")
def humaneval():
    task = load_task(TaskConfig(task="code:humaneval"))
    yield task
    task.close()


def test_every_canonical_humaneval_solution_passes_and_wrong_ones_do_not(humaneval):
    qs = humaneval.split({"eval": 164})["eval"]
    assert len(qs) == 164 and qs[0].id == "HumanEval/0"
    right = humaneval.verdicts([(q, f"```python\n{q.solution}\n```") for q in qs])
    assert [v["status"] for v in right] == ["pass"] * 164
    wrong = humaneval.verdicts([(qs[0], "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```"),
                                (qs[1], "I cannot do that."),
                                (qs[2], "```python\nwhile True:\n    pass\n```")])
    assert [v["status"] for v in wrong] == ["fail", "error", "timeout"]
    assert "AssertionError" in wrong[0]["stderr_tail"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_mbpp_style_tasks(tmp_path):
    row = {"task_id": 1, "text": "Write add(a, b).", "code": "def add(a, b): return a+b",
           "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
    f = write_jsonl(tmp_path / "mbpp.jsonl", [row])
    task = load_task(TaskConfig(task=f"code:mbpp:{f}"))
    q = task.split({"eval": 1})["eval"][0]
    assert "assert add(1, 2) == 3" in q.prompt and "assert add(-1, 1)" not in q.prompt  # one test shown
    assert task.rewards([(q, "```python\ndef add(a, b):\n    return a + b\n```"),
                         (q, "```python\ndef add(a, b):\n    return 3\n```")]) == [1.0, 0.0]
    task.close()


def test_stdio_tasks_need_every_case_to_pass(tmp_path):
    f = write_jsonl(tmp_path / "cf.jsonl", [{"id": "A", "question": "Print the sum of two integers.",
                                             "tests": [{"input": "1 2\n", "output": "3\n"},
                                                       {"input": "5 5\n", "output": "10\n"}]}])
    task = load_task(TaskConfig(task=f"code:stdio:{f}"))
    q = task.split({"eval": 1})["eval"][0]
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    only_first = "```python\ninput()\nprint(3)\n```"
    assert [v["status"] for v in task.verdicts([(q, good), (q, only_first)])] == ["pass", "fail"]
    task.close()


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler on this machine")
def test_stdio_cpp(tmp_path):
    f = write_jsonl(tmp_path / "cf.jsonl", [{"id": "A", "question": "Sum.", "inputs": ["1 2\n", "40 2\n"],
                                             "outputs": ["3", "42"]}])
    task = load_task(TaskConfig(task=f"code:stdio:{f}", code_language="cpp"))
    q = task.split({"eval": 1})["eval"][0]
    good = "```cpp\n#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<std::endl;}\n```"
    bad = "```cpp\nint main(){ return 1 }\n```"  # does not compile
    assert [v["status"] for v in task.verdicts([(q, good), (q, bad)])] == ["pass", "error"]
    task.close()


def test_bad_code_task_input(tmp_path):
    with pytest.raises(SDZeroError, match="unknown code task kind"):
        load_task(TaskConfig(task="code:nope"))
    with pytest.raises(SDZeroError, match="needs a dataset"):
        load_task(TaskConfig(task="code:mbpp"))
    f = write_jsonl(tmp_path / "bad.jsonl", [{"text": "no tests here"}])
    with pytest.raises(SDZeroError, match="test_list"):
        load_task(TaskConfig(task=f"code:mbpp:{f}")).split({"eval": 1})


def test_eval_on_humaneval_with_the_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "he.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--dtype", "fp32", "--task", "code:humaneval",
                 "--eval_size", "2", "--num_samples", "1", "--max_new_tokens", "8", "--no_greedy",
                 "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["avg@1"] == 0.0  # random bytes do not pass HumanEval
    assert sum(report["metrics"]["verdicts"].values()) == 2
    assert report["questions"][0]["verdicts"][0]["status"] in ("fail", "error", "timeout")


# Reward hacks a policy under RL finds first: each is a WRONG function that ends the process "cleanly".
HACKS = {
    "os._exit(0)": "import os\nos._exit(0)\n",
    "exit(0) before the tests": "import sys\nsys.exit(0)\n",
    "exit(256)": "exit(256)\n",  # 256 & 0xFF == 0
    "atexit exits 0": "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook exits 0": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
    "rebinds a builtin the tests use": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.all = lambda x: True\n",
    "rebinds exec, so the tests never run": "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "rebinds the harness's own helpers": "import __main__\n__main__.make_guard = lambda p: lambda n, v: v\n",
}
ALWAYS_EQUAL = "class Anything:\n    def __eq__(self, other):\n        return True\n    __ne__ = __eq__\n" \
               "    def __abs__(self):\n        return 0\n    def __lt__(self, other):\n        return True\n"


def test_reward_hacks_do_not_pass_function_tests(tmp_path):
    """Written after an attacker's report: every one of these was judged "pass" by exit code alone."""
    row = {"task_id": 1, "text": "Write add(a, b).", "code": "def add(a, b): return a+b",
           "test_list": ["assert add(1, 2) == 3", "assert abs(add(-1, 1)) == 0", "assert all([add(2, 2) == 4])"]}
    task = load_task(TaskConfig(task=f"code:mbpp:{write_jsonl(tmp_path / 'mbpp.jsonl', [row])}"))
    q = task.split({"eval": 1})["eval"][0]
    wrong = "def add(a, b):\n    return 7\n"
    responses = {name: f"```python\n{wrong}{hack}```" for name, hack in HACKS.items()}
    responses["object whose __eq__ says True"] = f"```python\n{ALWAYS_EQUAL}def add(a, b):\n    return Anything()\n```"
    responses["... from a cached function"] = (f"```python\nimport functools\n{ALWAYS_EQUAL}@functools.lru_cache\n"
                                               "def add(a, b):\n    return Anything()\n```")
    responses["int subclass whose __eq__ says True"] = (
        "```python\nclass I(int):\n    def __eq__(self, other):\n        return True\n    def __abs__(self):\n"
        "        return 0\ndef add(a, b):\n    return I(7)\n```")
    responses["tuple subclass hiding its items"] = (
        f"```python\n{ALWAYS_EQUAL}class T(tuple):\n    def __iter__(self):\n        return iter(())\n"
        "def add(a, b):\n    return T([Anything()])\n```")
    verdicts = task.verdicts([(q, r) for r in responses.values()])
    judged = {name: v["status"] for name, v in zip(responses, verdicts)}
    assert all(status != "pass" for status in judged.values()), judged
    honest = task.verdicts([(q, "```python\nimport atexit\natexit.register(print, 'bye')\ndef add(a, b):\n"
                                "    return a + b\nif __name__ == '__main__':\n    print(input())\n```")])
    assert honest[0]["status"] == "pass", honest  # an atexit of its own or a __main__ block is not punished
    task.close()


def test_right_answers_in_other_shapes_still_pass(tmp_path):
    """The plain-value rebuild must not fail correct code: generators, Counter, namedtuple, IntEnum, bytearray."""
    rows = [{"task_id": i, "text": "t", "test_list": [test]} for i, test in enumerate([
        "assert set(common([1, 2, 3], [2, 3])) == {2, 3}", "assert counts('aab') == {'a': 2, 'b': 1}",
        "assert point() == (1, 2) and point()[0] == 1", "assert color() == 1", "assert raw() == b'ab'"])]
    task = load_task(TaskConfig(task=f"code:mbpp:{write_jsonl(tmp_path / 'shapes.jsonl', rows)}"))
    qs = sorted(task.split({"eval": 5})["eval"], key=lambda q: q.id)
    code = ["def common(a, b):\n    return (x for x in a if x in b)",
            "import collections\ndef counts(s):\n    return collections.Counter(s)",
            "import collections\nP = collections.namedtuple('P', 'x y')\ndef point():\n    return P(1, 2)",
            "import enum\nclass C(enum.IntEnum):\n    RED = 1\ndef color():\n    return C.RED",
            "def raw():\n    return bytearray(b'ab')"]
    verdicts = task.verdicts([(q, f"```python\n{c}\n```") for q, c in zip(qs, code)])
    assert [v["status"] for v in verdicts] == ["pass"] * 5, verdicts
    task.close()


def test_humaneval_hacks_do_not_pass(humaneval):
    q = humaneval.split({"eval": 1})["eval"][0]  # has_close_elements
    wrong = "def has_close_elements(numbers, threshold):\n    return 'x'\n"
    verdicts = humaneval.verdicts([(q, f"```python\n{wrong}{hack}```") for hack in HACKS.values()])
    assert [v["status"] for v in verdicts].count("pass") == 0, verdicts
