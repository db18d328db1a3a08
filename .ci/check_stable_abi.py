"""Assert that a compiled ecgkt library needs only the libtorch stable ABI: no undefined C++ symbol of
ATen, c10, torch, pybind11 or libtorch_python (what would tie it to the torch it was built against).

    python .ci/check_stable_abi.py path/to/_C.abi3.so
"""
import re
import shutil
import subprocess
import sys

UNSTABLE = re.compile(r"\b(c10|at|torch|pybind11)::|\bTHP")


def unstable_symbols(path: str) -> list[str]:
    if shutil.which("nm") is None:
        sys.exit("check_stable_abi: nm (binutils) is not installed")
    out = subprocess.run(["nm", "-D", "--undefined-only", "-C", path], capture_output=True, text=True, check=True)
    return [line.split(None, 1)[-1] for line in out.stdout.splitlines() if UNSTABLE.search(line)]


if __name__ == "__main__":
    bad = unstable_symbols(sys.argv[1])
    if bad:
        sys.exit(f"{sys.argv[1]} needs {len(bad)} symbols outside the stable ABI, e.g. " + "; ".join(bad[:5]))
    print(f"stable ABI OK: {sys.argv[1]} needs no ATen, c10, torch:: or libtorch_python symbol")
