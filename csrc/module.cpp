// The Python module ecgkt._C: loading it runs the TORCH_LIBRARY registrations.
// It also exposes what it was built against, so ecgkt/_extension.py can explain a mismatch.
#include <torch/extension.h>

#ifndef ECGKT_TORCH_VERSION
#define ECGKT_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.attr("built_torch_version") = ECGKT_TORCH_VERSION;
#ifdef ECGKT_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
