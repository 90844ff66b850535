"""Benchmark suites: one model on each benchmark of a suite, one table in the paper's shape with the average.

    sdzero eval --suite paper-math --num_samples 8                     # the paper's math benchmarks, avg@8
    sdzero eval --suite offline --benchmark_paths GSM8K=../shared/data/gsm8k/test.jsonl

Each benchmark is a task (`--task` spec by hub name, with its split and answer columns) evaluated on its
first `size` questions of sdzero's deterministic order (all of a small benchmark); `--benchmark_paths
NAME=PATH,...` points a benchmark at a local file for machines without the hub, `--suite_size N` caps every
benchmark at N questions. The hub names and columns are the ones the datasets document; this project has no
hub access, so only the offline suite's files and local overrides have been read here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdzero.errors import SDZeroError
from sdzero.files import atomic_write_json, atomic_write_text
from sdzero.logs import info


@dataclass(frozen=True)
class Benchmark:
    name: str  # the paper's column name
    task: str  # a --task spec
    size: int  # questions evaluated (the benchmark's size, or the paper's held-out size)
    split: str = "test"
    question_column: str | None = None
    answer_column: str | None = None
    dataset_config: str | None = None
    code_language: str = "python"


SHARED_GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"

SUITES: dict[str, tuple[Benchmark, ...]] = {
    # The paper's math table: five competition/held-out sets and MATH (../shared/SDZERO.md), avg@8.
    "paper-math": (
        Benchmark("AIME24", "math:HuggingFaceH4/aime_2024", 30, split="train", question_column="problem",
                  answer_column="answer"),
        Benchmark("AIME25", "math:math-ai/aime25", 30, question_column="problem", answer_column="answer"),
        Benchmark("HMMT25", "math:MathArena/hmmt_feb_2025", 30, split="train", question_column="problem",
                  answer_column="answer"),
        Benchmark("AMO-Bench", "math:meituan-longcat/AMO-Bench", 50, question_column="prompt",
                  answer_column="answer"),
        Benchmark("OpenR1 held-out", "math:open-r1/OpenR1-Math-220k", 500, split="train", question_column="problem",
                  answer_column="answer", dataset_config="default"),
        Benchmark("MATH", "math:HuggingFaceH4/MATH-500", 500, question_column="problem", answer_column="solution"),
    ),
    # The paper's code table: Codeforces held-out and LiveCodeBench, stdin/stdout problems in the sandbox.
    "paper-code": (
        Benchmark("Codeforces held-out", "code:stdio:open-r1/codeforces", 500, split="train"),
        Benchmark("LiveCodeBench", "code:stdio:livecodebench/code_generation_lite", 500),
    ),
    # What ships with this repository and its packages: runs anywhere, offline.
    "offline": (
        Benchmark("GSM8K", f"math:{SHARED_GSM8K}", 1319),
        Benchmark("HumanEval", "code:humaneval", 164),
    ),
}


def parse_paths(spec: str | None, suite: tuple[Benchmark, ...]) -> dict[str, str]:
    """'NAME=PATH,NAME=PATH' -> {NAME: PATH}, every NAME one of the suite's benchmarks."""
    out: dict[str, str] = {}
    names = {b.name for b in suite}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, eq, path = part.partition("=")
        if not eq or name.strip() not in names:
            raise SDZeroError(f"benchmark_paths takes NAME=PATH with NAME one of {sorted(names)}; got {part!r}")
        out[name.strip()] = path.strip()
    return out


def benchmark_task(b: Benchmark, task_config: Any, path: str | None, suite_size: int | None) -> Any:
    """The TaskConfig that evaluates benchmark `b` (from `path` when given): its first questions, no others."""
    kind, _, _ = b.task.partition(":")
    spec = b.task if path is None else (f"math:{path}" if kind == "math" else
                                        f"code:{b.task.split(':')[1]}:{path}")
    size = min(b.size, suite_size) if suite_size else b.size
    return replace(task_config, task=spec, dataset_split=b.split, question_column=b.question_column,
                   answer_column=b.answer_column, dataset_config=b.dataset_config, code_language=b.code_language,
                   eval_size=size, validation_size=0, phase1_size=0, phase2_size=0)


def run_suite(ctx: Any, ec: Any, model: str, folder: Path) -> dict[str, Any]:
    """Evaluate `model` on every benchmark of ec.suite; write each report and table.md/.json to `folder`."""
    from sdzero.context import Context
    from sdzero.evaluate import evaluate_model

    suite = SUITES[ec.suite]  # the command checked the name
    paths = parse_paths(ec.benchmark_paths, suite)
    for name, path in paths.items():  # a wrong local path fails now, not after the first benchmarks ran
        if not Path(path).exists():
            raise SDZeroError(f"benchmark_paths: {name}'s file {path} does not exist")
    folder.mkdir(parents=True, exist_ok=True)
    k = ec.num_samples
    rows: dict[str, Any] = {}
    for b in suite:
        task_config = benchmark_task(b, ctx.task_config, paths.get(b.name), ec.suite_size)
        with Context(ctx.model_config, task_config, ctx.generation, ctx.revision) as bctx:
            questions = bctx.task.split({"eval": task_config.eval_size})["eval"] if task_config.eval_size else []
            info(f"[suite] {b.name}: {len(questions)} questions, k={k}")
            t0 = time.perf_counter()
            report = evaluate_model(bctx, model, questions, replace(ec, suite=None), folder / f"{_slug(b.name)}.json")
        m = report["metrics"]
        rows[b.name] = {"avg": m[f"avg@{k}"], "questions": m["questions"], "greedy": m.get("greedy_accuracy"),
                        "seconds": round(time.perf_counter() - t0, 1), "task": task_config.task}
    average = sum(r["avg"] for r in rows.values()) / len(rows)
    header = "| model | " + " | ".join(rows) + " | Avg. |"
    line = f"| {model} | " + " | ".join(f"{100 * r['avg']:.1f}" for r in rows.values()) + f" | {100 * average:.1f} |"
    table = "\n".join([f"# {ec.suite}: avg@{k} (points)", "", header, "|---|" + "---|" * (len(rows) + 1), line, "",
                       "Questions: " + ", ".join(f"{n} {r['questions']}" for n, r in rows.items()) + "."])
    atomic_write_text(folder / "table.md", table + "\n")
    atomic_write_json(folder / "table.json", {"suite": ec.suite, "model": model, "k": k, "benchmarks": rows,
                                              "average": average})
    return {"table": table, "benchmarks": rows, "average": average}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
