"""Phase 1 from Python in one object: the model collects its own self-revision tuples (`sdzero.collect`), then
learns to revise on them (`sdzero.srt`). The commands run the two as `sdzero collect` and `sdzero srt`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdzero.errors import SDZeroError
from sdzero.srt import SRTConfig, train_srt


class SRTTrainer:
    """Phase 1 from Python: the model collects its own self-revision tuples on `train_dataset` (graded by
    `reward_funcs`), then trains on them.

        trainer = SRTTrainer(model="embedded", reward_funcs=my_reward, train_dataset=questions,
                             args=SRTConfig(output_dir="out/srt", data_dir="out/phase1"))
        trainer.train()          # collect into args.data_dir, then SRT; returns the summary
        trainer.save_model()     # args.output_dir/model (or a folder given here)

    `model`: a hub name, a local path or a model object (trained in place; pass its tokenizer as
    `processing_class`). `reward_funcs`: a function (question, response) -> float or a `Task`.
    `train_dataset`: a list or `datasets.Dataset` of strings, dicts or Questions (`sdzero.tasks.user`).
    `collect_args` (a CollectConfig) and `sampling` (SamplingParams) set Phase 1's sampling; its output
    folder is args.data_dir.
    """

    def __init__(self, model: Any, reward_funcs: Any, train_dataset: Any, args: SRTConfig | None = None,
                 processing_class: Any = None, collect_args: Any = None, sampling: Any = None, phrases: Any = None,
                 system_prompt: str | None = None, seed: int = 0):
        from dataclasses import replace

        from sdzero.chat import ControlPhrases
        from sdzero.collect import CollectConfig
        from sdzero.context import Context
        from sdzero.models import load_tokenizer
        from sdzero.tasks.user import as_questions, as_task

        self.args = args or SRTConfig()
        self.args.validate()
        self.collect_args = replace(collect_args or CollectConfig(), output_dir=self.args.data_dir)
        self.collect_args.validate()
        self.task, self.questions = as_task(reward_funcs), as_questions(train_dataset)
        if processing_class is None and not isinstance(model, (str, Path)):
            raise SDZeroError("a model object needs its tokenizer: pass processing_class=tokenizer")
        self.tokenizer = processing_class if processing_class is not None else load_tokenizer(str(model))
        self.model, self.sampling = model, sampling or Context().sampling()  # the commands' defaults
        self.phrases = phrases or ControlPhrases()
        self.system_prompt, self.seed = system_prompt, seed
        self.summary: dict[str, Any] = {}

    def train(self) -> dict[str, Any]:
        from sdzero.collect import collect
        from sdzero.generation import make_generator
        from sdzero.models import load_model
        from sdzero.runfolder import load_kept

        # Phase 1a generates with the model in its inference dtype (a name: loaded as `sdzero collect` loads
        # it, bf16 where the machine has it; an object: as it is), Phase 1b trains fp32 master weights.
        by_name = isinstance(self.model, (str, Path))
        sampler = load_model(str(self.model)) if by_name else self.model.eval()
        collect(make_generator("hf", sampler, self.tokenizer), self.task, self.questions, self.sampling,
                self.collect_args, self.phrases, self.system_prompt, self.seed)
        del sampler
        rows, _ = load_kept(self.collect_args.output_dir)
        self.model, self.summary = train_srt(self.model, self.tokenizer, rows, self.phrases, self.args)
        return self.summary

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        from sdzero.training import save_on_main_process

        target = Path(output_dir) if output_dir is not None else Path(self.args.output_dir) / "model"
        save_on_main_process(self.model, self.tokenizer, target, self.summary)
        return target
