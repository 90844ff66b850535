"""`sdzero eval --suite`: one model on each benchmark of a suite, a table in the paper's shape."""

import json

import pytest

from sdzero.cli import main
from sdzero.config import TaskConfig
from sdzero.suites import SUITES, benchmark_task
from sdzero.tasks import load_task

TINY = ["--dtype", "fp32", "--max_new_tokens", "8", "--num_samples", "2", "--batch_size", "8", "--temperature",
        "1.0", "--no_revise", "--suite_size", "3"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_offline_suite_gsm8k_and_humaneval(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["eval", "--model", str(tiny_model_dir), "--suite", "offline", "--output", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "| model | GSM8K | HumanEval | Avg. |" in printed
    table = json.loads((out / "table.json").read_text())
    assert {n: b["questions"] for n, b in table["benchmarks"].items()} == {"GSM8K": 3, "HumanEval": 3}
    assert table["average"] == pytest.approx(sum(b["avg"] for b in table["benchmarks"].values()) / 2)
    assert (out / "gsm8k.json").is_file() and (out / "humaneval.json").is_file()


def test_paper_math_suite_reads_each_benchmarks_format_from_local_files(tiny_model_dir, tmp_path):
    """Local files in each benchmark's published columns: AIME/HMMT integers, AMO-Bench prompts, MATH's boxed
    solutions, OpenR1's problem/answer."""
    files = {
        "AIME24": [{"problem": f"AIME problem {i}", "answer": str(100 + i)} for i in range(3)],
        "AIME25": [{"problem": f"AIME25 problem {i}", "answer": str(200 + i)} for i in range(3)],
        "HMMT25": [{"problem": f"HMMT problem {i}", "answer": str(i)} for i in range(3)],
        "AMO-Bench": [{"prompt": f"AMO problem {i}", "answer": f"{i}/7"} for i in range(3)],
        "OpenR1 held-out": [{"problem": f"OpenR1 problem {i}", "answer": str(i * 3)} for i in range(3)],
        "MATH": [{"problem": f"MATH problem {i}", "solution": f"So it is $\\boxed{{\\frac{{{i}}}{{2}}}}$."}
                 for i in range(1, 4)],
    }
    paths = {name: write_jsonl(tmp_path / f"{i}.jsonl", rows) for i, (name, rows) in enumerate(files.items())}
    spec = ",".join(f"{n}={p}" for n, p in paths.items())
    suite = {b.name: b for b in SUITES["paper-math"]}
    gold = {}
    for name, path in paths.items():
        task = load_task(benchmark_task(suite[name], TaskConfig(), str(path), 3))
        gold[name] = sorted(q.answer for q in task.split({"eval": 3})["eval"])
        task.close()
    assert gold["AIME24"] == ["100", "101", "102"] and gold["MATH"] == ["\\frac{1}{2}", "\\frac{2}{2}", "\\frac{3}{2}"]
    assert gold["AMO-Bench"] == ["0/7", "1/7", "2/7"]
    out = tmp_path / "suite"
    assert main(["eval", "--model", str(tiny_model_dir), "--suite", "paper-math", "--benchmark_paths", spec,
                 "--output", str(out), *TINY]) == 0
    table = json.loads((out / "table.json").read_text())
    assert list(table["benchmarks"]) == list(files) and table["k"] == 2
    assert "| AIME24 | AIME25 | HMMT25 | AMO-Bench | OpenR1 held-out | MATH | Avg. |" in (out / "table.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--suite", "paper-physics"], "unknown suite 'paper-physics'"),
    (["--suite", "offline", "--benchmark_paths", "GSM9K=x.jsonl"], "NAME one of"),
    (["--suite", "offline", "--benchmark_paths", "GSM8K=/nonexistent.jsonl"], "does not exist"),
    (["--benchmark_paths", "GSM8K=x.jsonl"], "benchmark_paths goes with --suite"),
])
def test_suite_bad_input_is_one_clear_error(tiny_model_dir, tmp_path, capsys, args, message):
    assert main(["eval", "--model", str(tiny_model_dir), "--output", str(tmp_path / "o"), *args, *TINY]) == 2
    assert message in capsys.readouterr().err
