#!/usr/bin/env bash
# The device check in one command, on a machine with one NVIDIA GPU and only this
# repository: makes a virtualenv, installs the package with its CUDA extra (JAX's
# CUDA 12 plugin, pinned in requirements/constraints.txt) plus PyTorch, transformers
# and PEFT, then runs benchmarks/device_check.py (T5 1.1 base and large, our step vs
# PEFT's, JSON + markdown in benchmarks/results/device_check/).
#   benchmarks/device_check.sh               the GPU run
#   benchmarks/device_check.sh --dry-run     tiny shapes on CPU (what the tests run)
# Environment: PYTHON (default python3.11 or python3), VENV (.venv-device-check).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv-device-check}
if [[ " $* " != *" --dry-run "* ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "device_check.sh: no NVIDIA GPU found (nvidia-smi -L failed); run with" \
       "--dry-run for the CPU check." >&2
  exit 1
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
# The constraints pin the CPU build of torch (`+cpu`, for CI); the same version from
# PyPI is the CUDA build.
TORCH=$(sed -n 's/^torch==\([^+]*\).*/\1/p' requirements/constraints.txt)
grep -v '^torch==' requirements/constraints.txt > "$VENV/constraints-device-check.txt"
"$PY" -m pip install --quiet -c "$VENV/constraints-device-check.txt" -e ".[cuda]" \
  "torch==$TORCH" transformers peft accelerate
start=$(date +%s)
"$PY" -m benchmarks.device_check "$@"
echo "device check: $(( $(date +%s) - start )) s (install not included)" >&2
