"""sdzero: Self-Distillation Zero (SD-Zero) post-training. See README.md and ../shared/SDZERO.md.

The Python API, in TRL's shape (each method a Config and a Trainer):

    from sdzero import SRTConfig, SRTTrainer, DistillConfig, DistillTrainer
"""

__version__ = "0.1.0"

from sdzero.chat import ControlPhrases  # noqa: E402
from sdzero.errors import SDZeroError  # noqa: E402

# Imported on first use, so that `import sdzero` (and the CLI's start) does not load torch.
_LAZY = {
    "SRTConfig": "sdzero.srt", "SRTTrainer": "sdzero.phase1",
    "DistillConfig": "sdzero.distill", "DistillTrainer": "sdzero.distill",
    "CollectConfig": "sdzero.collect", "SamplingParams": "sdzero.generation",
    "Question": "sdzero.tasks.base", "Task": "sdzero.tasks.base", "FunctionTask": "sdzero.tasks.user",
}

__all__ = ["ControlPhrases", "SDZeroError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdzero' has no attribute {name!r}")
