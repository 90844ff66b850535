"""sdzero: Self-Distillation Zero (SD-Zero) post-training. See README.md and ../shared/SDZERO.md."""

__version__ = "0.1.0"

from sdzero.chat import ControlPhrases  # noqa: E402
from sdzero.errors import SDZeroError  # noqa: E402

__all__ = ["ControlPhrases", "SDZeroError", "__version__"]
