"""Task registry: a spec string ('rg:chain_sum', 'math:openai/gsm8k', 'path/to/test.jsonl') -> a Task.

New kinds (code tasks) register a factory under their prefix with `register_task_kind`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from sdzero.config import TaskConfig
from sdzero.errors import SDZeroError
from sdzero.tasks.base import Question, Task
from sdzero.tasks.data import FILE_FORMATS
from sdzero.tasks.math import MathTask
from sdzero.tasks.reasoning_gym import ReasoningGymTask

TaskFactory = Callable[[str, TaskConfig], Task]
_KINDS: dict[str, TaskFactory] = {}


def register_task_kind(prefix: str, factory: TaskFactory) -> None:
    _KINDS[prefix] = factory


def _inline_options(spec: str) -> tuple[str, dict[str, Any]]:
    """'chain_sum:min_terms=2,max_digits=1' -> ('chain_sum', {'min_terms': 2, 'max_digits': 1})."""
    name, _, rest = spec.partition(":")
    opts: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise SDZeroError(f"bad task option {part!r} in {spec!r}: expected key=value")
        opts[key.strip()] = yaml.safe_load(value)
    return name, opts


def _rg(body: str, cfg: TaskConfig) -> Task:
    name, opts = _inline_options(body)
    return ReasoningGymTask(name, {**cfg.options(), **opts}, seed=cfg.split_seed,
                            prompt_template=cfg.prompt_template, answer_fallback=cfg.answer_fallback)


def _math(body: str, cfg: TaskConfig) -> Task:
    return MathTask(body, cfg.question_column, cfg.answer_column, cfg.dataset_config, cfg.dataset_split,
                    seed=cfg.split_seed, prompt_template=cfg.prompt_template,
                    answer_fallback=cfg.answer_fallback, verify_timeout=cfg.verify_timeout)


def _code(body: str, cfg: TaskConfig) -> Task:
    from sdzero.tasks.code import CodeTask

    kind, _, source = body.partition(":")
    return CodeTask(kind, source or None, language=cfg.code_language, seed=cfg.split_seed,
                    prompt_template=cfg.prompt_template, dataset_config=cfg.dataset_config,
                    dataset_split=cfg.dataset_split)


register_task_kind("rg", _rg)
register_task_kind("code", _code)
register_task_kind("math", _math)


def load_task(cfg: TaskConfig) -> Task:
    spec = cfg.task.strip()
    if cfg.answer_fallback not in ("last_number", "last_line", "none"):
        raise SDZeroError(f"answer_fallback must be last_number, last_line or none, not {cfg.answer_fallback!r}")
    prefix, sep, body = spec.partition(":")
    if sep and prefix in _KINDS:
        return _KINDS[prefix](body, cfg)
    if Path(spec).suffix in FILE_FORMATS:  # a bare local data file is a math dataset
        return _math(spec, cfg)
    raise SDZeroError(
        f"unknown task {spec!r}: use one of {sorted(k + ':...' for k in _KINDS)} or a local "
        f"{'/'.join(FILE_FORMATS)} file"
    )


__all__ = ["MathTask", "Question", "ReasoningGymTask", "Task", "load_task", "register_task_kind"]
