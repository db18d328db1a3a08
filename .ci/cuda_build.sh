#!/usr/bin/env bash
# Compile and link the CUDA kernels against the CUDA 13.0 build of torch (on local disk),
# import the result without a GPU, and check each op has a CUDA kernel registered.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${ECGKT_CUDA_VENV:-$ROOT/.venv-cuda}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q torch==2.14.1 numpy setuptools wheel ninja pybind11
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export CPATH="$SITE/nvidia/cu13/include${CPATH:+:$CPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0+PTX"}  # setup.py's default
export ECGKT_FORCE_CUDA=1
export MAX_JOBS=${MAX_JOBS:-2}
# Build from a clean copy of the tracked files so nothing of the CPU build is reused.
SRC=$(mktemp -d)
git ls-files -z | xargs -0 -I{} cp -P --parents {} "$SRC"
START=$SECONDS
(cd "$SRC" && "$VENV/bin/pip" wheel -q --no-build-isolation --no-deps . -w "$SRC/dist")
echo "CUDA wheel built in $((SECONDS - START)) s (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$SRC"/dist/ecgkt-*.whl
# then ecgkt's runtime dependencies (scipy, pandas, ...), which `import ecgkt` needs; torch stays 2.14.1
"$VENV/bin/pip" install -q "$SRC"/dist/ecgkt-*.whl
(cd /tmp && "$VENV/bin/python" - <<'PY'
import torch, ecgkt
from ecgkt import _extension
assert _extension.available, _extension.reason
assert _extension.build_info["with_cuda"], _extension.build_info
for op in ("preprocess",):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ecgkt::{op}", "CUDA"), op
print("CUDA build OK: torch", torch.__version__, "CUDA", torch.version.cuda, "ops have CUDA kernels")
PY
)
"$VENV/bin/python" "$ROOT/.ci/check_stable_abi.py" "$(ls "$SITE"/ecgkt/_C*.so)"
# on this GPU-less machine the CUDA wheel runs its compiled CPU kernels, with reference results
(cd /tmp && "$VENV/bin/python" "$ROOT/.ci/check_wheel.py")
# machine code for each listed arch and PTX for the highest (newer GPUs JIT it instead of failing)
CUOBJDUMP=$(command -v cuobjdump || ls "$CUDA_HOME"/bin/cuobjdump "$SITE"/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -1 || true)
if [ -n "$CUOBJDUMP" ]; then
  SO=$(ls "$SITE"/ecgkt/_C*.so)
  ELF=$("$CUOBJDUMP" --list-elf "$SO")
  PTX=$("$CUOBJDUMP" --list-ptx "$SO")
  grep -q sm_80 <<<"$ELF" && grep -q sm_90 <<<"$ELF" && grep -q sm_90 <<<"$PTX" \
    || { echo "CUDA build: expected SASS sm_80/sm_90 and PTX sm_90, got:"; echo "$ELF"; echo "$PTX"; exit 1; }
  echo "CUDA build OK: SASS for sm_80 and sm_90, PTX for sm_90"
else
  echo "cuobjdump not found: the embedded architectures were not checked"
fi
rm -rf "$SRC"
