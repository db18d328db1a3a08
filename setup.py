"""Build of ecgkt and its compiled extension ``ecgkt._C``.

The C++/CUDA sources are listed in one place, ``csrc/sources.txt``; this file and
``CMakeLists.txt`` (the libtorch / C++ build) both read it, so the two builds compile
the same code.

Build knobs (environment variables):
  ECGKT_FORCE_CPU=1       build the CPU kernels only, even if CUDA is available
  ECGKT_FORCE_CUDA=1      fail unless the CUDA kernels can be built
  TORCH_CUDA_ARCH_LIST    CUDA architectures (torch's own knob); default "8.0;9.0+PTX": machine code
                          for A100 and H100/H200 and PTX of the highest, which newer GPUs JIT-compile
                          (without +PTX they get "no kernel image is available")
  MAX_JOBS                parallel compile jobs (torch's own knob; lower it when RAM is short)
  ECGKT_DEBUG=1           -O0 -g build

Always build with ``pip install --no-build-isolation .``: an isolated build would fetch
another torch and compile against the wrong ABI.
"""
import json
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
# The extension uses only the libtorch stable ABI (csrc/stable_api.h), compiled for this version of it:
# one build then loads into this torch and every later one. csrc/module.cpp reports it as _C.min_torch.
MIN_TORCH = (2, 10)
# and Python's limited API from this version on: one abi3 binary for every later CPython
MIN_PYTHON = (3, 10)


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sources():
    cpp, cu = [], []
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            (cu if line.endswith(".cu") else cpp).append(os.path.join("csrc", line))
    return cpp, cu


def _extension():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit(
            "ecgkt: torch must be installed before building ecgkt, and the build must not be "
            "isolated:\n  pip install torch && pip install --no-build-isolation ."
        )

    cpp, cu = _sources()
    cuda_home = cpp_extension.CUDA_HOME
    cuda_possible = torch.version.cuda is not None and cuda_home is not None
    if _flag("ECGKT_FORCE_CUDA") and not cuda_possible:
        sys.exit(
            "ecgkt: ECGKT_FORCE_CUDA=1 but CUDA kernels cannot be built: "
            f"torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={cuda_home}. "
            "Install a CUDA build of torch and set CUDA_HOME to the toolkit that matches it."
        )
    with_cuda = cuda_possible and not _flag("ECGKT_FORCE_CPU")

    debug = _flag("ECGKT_DEBUG")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    stable = [
        "-DTORCH_TARGET_VERSION=0x%02x%02x000000000000" % MIN_TORCH,
        "-DPy_LIMITED_API=0x%02x%02x0000" % MIN_PYTHON,
        "-DECGKT_TORCH_VERSION=\"%s\"" % torch.__version__,
    ]
    cxx += ["-fopenmp-simd"] + stable  # `omp simd` loops only: threads come from torch::stable::parallel_for
    nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "--use_fast_math"]
    nvcc += ["-lineinfo"] + stable  # the C++ standard comes from torch (C++17 or C++20 by version)
    kwargs = dict(
        name="ecgkt._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        py_limited_api=True,  # no libtorch_python, and an abi3 file name
    )
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        ext = cpp_extension.CUDAExtension(
            sources=cpp + cu,
            define_macros=[("ECGKT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx + ["-DECGKT_WITH_CUDA=1"], "nvcc": nvcc},
            **kwargs,
        )
    else:
        ext = cpp_extension.CppExtension(sources=cpp, extra_compile_args={"cxx": cxx}, **kwargs)

    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if with_cuda else None,
        "with_cuda": with_cuda,
        "min_torch": "%d.%d" % MIN_TORCH,
        "abi": "stable",
    }
    with open(os.path.join(ROOT, "ecgkt", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    archs = f", archs {os.environ['TORCH_CUDA_ARCH_LIST']}" if with_cuda else ""
    print(f"ecgkt: building extension (CUDA: {with_cuda}{archs}) against torch {torch.__version__}")
    return ext, cpp_extension.BuildExtension.with_options(use_ninja=True)


ext, build_ext = _extension()

setup(
    # every package under ecgkt/ (a hand-written list once left ecgkt.data.synth out of the wheel); the Triton
    # kernels live in the top-level kernels/ folder and ship as ecgkt.kernels through the link ecgkt/kernels
    packages=find_packages(include=["ecgkt", "ecgkt.*"]),
    # The root as the one package root: an editable install then puts this folder on sys.path (a .pth) instead
    # of an import hook, which Python, started beside a checkout named ecgkt, would bypass for that folder.
    package_dir={"": "."},
    package_data={"ecgkt": ["_build_info.json", "configs/*.yaml", "predict/*.csv"]},
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    options={"bdist_wheel": {"py_limited_api": "cp%d%d" % MIN_PYTHON}},
    zip_safe=False,
)
