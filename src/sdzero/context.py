"""One object for what every command shares: the model, task, generation and revision settings, and what the
stages build from them (the task, its question sets, the sampling settings, the control phrases a model
folder learned, a generator). A context is a context manager: the task (a sandbox pool for code tasks, a
verifier worker for math) is opened on first use and closed on exit.

    with Context(model_cfg, task_cfg, generation_cfg, revision_cfg) as ctx:
        questions = ctx.questions("phase2")
        summary = run_distill(..., ctx.task, questions, cfg, ctx.sampling(), ctx.phrases(model_dir), ...)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sdzero.chat import ControlPhrases
from sdzero.config import GenerationConfig, ModelConfig, RevisionConfig, TaskConfig, read_meta


@dataclass
class Context:
    model_config: ModelConfig = field(default_factory=ModelConfig)
    task_config: TaskConfig = field(default_factory=TaskConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    revision: RevisionConfig = field(default_factory=RevisionConfig)
    _task: Any = field(default=None, repr=False, compare=False)
    _splits: dict[str, list] = field(default_factory=dict, repr=False, compare=False)

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._task is not None:
            self._task.close()
            self._task = None

    @property
    def task(self) -> Any:
        """The task, loaded on first use (`sdzero.tasks.load_task`)."""
        if self._task is None:
            from sdzero.tasks import load_task

            self._task = load_task(self.task_config)
        return self._task

    def questions(self, split: str) -> list:
        """One of the task's disjoint question sets: eval (held-out), validation, phase1, phase2. Sets are taken
        from the front of the task's pool in that order, so a set is the same whichever command asks."""
        if split not in self._splits:
            self._splits[split] = self.task.split(self.task_config.split_sizes(split))[split]
        return self._splits[split]

    def with_seed(self, seed: int) -> "Context":
        """The same settings and the same open task, another generation seed."""
        return replace(self, generation=replace(self.generation, seed=seed))

    @property
    def seed(self) -> int:
        return self.generation.seed

    @property
    def system_prompt(self) -> str | None:
        return self.task_config.system_prompt

    def sampling(self, n: int = 1) -> Any:
        from sdzero.generation import SamplingParams

        g = self.generation
        return SamplingParams(g.max_new_tokens, g.temperature, g.top_p, n=n)

    def phrases(self, model_or_data: str | Path | None = None) -> ControlPhrases:
        """Flags first, then the phrases stored with a model or data folder (its sdzero.json), then the paper's."""
        return self.revision.phrases(read_meta(model_or_data) if model_or_data is not None else None)

    def generator(self, model: str | Path | None = None) -> Any:
        """A generator over `model` (default: the configured model) with the configured backend and batch."""
        from sdzero.generation import make_generator
        from sdzero.models import load_model_and_tokenizer

        name = str(model) if model is not None else self.model_config.model
        lm, tokenizer = load_model_and_tokenizer(name, self.model_config.dtype, self.model_config.device)
        return make_generator(self.generation.backend, lm, tokenizer, batch_size=self.generation.batch_size)

    def settings(self) -> dict[str, Any]:
        """The four configs' fields, flat (as stored beside reports)."""
        return {**asdict(self.model_config), **asdict(self.task_config), **asdict(self.generation),
                **asdict(self.revision)}
