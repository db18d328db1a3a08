#!/usr/bin/env bash
# The stable-ABI promise, measured: the one CPU wheel of stage 2, built against torch 2.13.0 under
# Python 3.11, runs its compiled kernels (not the fallback) with reference results
#   1. in the torch 2.14.1 (CUDA 13.0 build) venv of stage 4, Python 3.11;
#   2. in a fresh Python 3.12 venv with torch 2.14.1 (the abi3 module init), when pyenv has a 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEEL=$(ls "$ROOT"/dist/ecgkt-*.whl)
CUDA_VENV=${ECGKT_CUDA_VENV:-$ROOT/.venv-cuda}
"$CUDA_VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEEL"
(cd /tmp && "$CUDA_VENV/bin/python" "$ROOT/.ci/check_wheel.py" --other-torch)

# a pyenv shim on PATH may exist and still refuse to run: take the first candidate that runs
PY312=""
for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3 "$(command -v python3.12 || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then
    PY312=$candidate
    break
  fi
done
if [ -z "$PY312" ]; then
  echo "cross-torch: no Python 3.12 on this machine; the abi3 wheel was not loaded under a second Python"
  exit 0
fi
START=$SECONDS
rm -rf "$ROOT/.venv-py312"
"$PY312" -m venv "$ROOT/.venv-py312"
"$ROOT/.venv-py312/bin/pip" install -q torch==2.14.1 "$WHEEL"
echo "Python 3.12 venv with torch 2.14.1 and the wheel: $((SECONDS - START)) s"
(cd /tmp && "$ROOT/.venv-py312/bin/python" "$ROOT/.ci/check_wheel.py" --other-torch)
rm -rf "$ROOT/.venv-py312"  # about 5 GB
