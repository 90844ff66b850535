"""`sdzero` with the test task registered, for `accelerate launch tests/sdzero_worker.py distill|run ...`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import parity_task  # noqa: E402,F401  (registers the parity: task)

from sdzero.cli import main  # noqa: E402

sys.exit(main())
