// The Python module ecgkt._C: importing it loads the library, whose static initialisers run the
// STABLE_TORCH_LIBRARY registrations. Written against Python's limited API (Py_LIMITED_API, set by
// setup.py) without pybind11, so one binary serves every CPython from 3.10 on (an abi3 wheel).
// It tells ecgkt/_extension.py what it was built against.
#include <Python.h>

#include <torch/csrc/stable/version.h>

#ifndef ECGKT_TORCH_VERSION
#define ECGKT_TORCH_VERSION "unknown"
#endif

namespace {

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C", "ecgkt's compiled kernels (registered as torch.ops.ecgkt.*).", -1, nullptr,
};

bool add(PyObject* m, const char* name, PyObject* value) {
  if (value == nullptr) return false;
  const int rc = PyModule_AddObject(m, name, value);  // steals the reference on success only
  if (rc < 0) Py_DECREF(value);
  return rc == 0;
}

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
#ifdef ECGKT_WITH_CUDA
  PyObject* with_cuda = Py_True;
#else
  PyObject* with_cuda = Py_False;
#endif
  Py_INCREF(with_cuda);
  // the oldest torch the library loads into: the stable-ABI version it was compiled for
  const unsigned long long target = TORCH_FEATURE_VERSION;
  const bool ok = add(m, "built_torch_version", PyUnicode_FromString(ECGKT_TORCH_VERSION)) &&
                  add(m, "with_cuda", with_cuda) &&
                  add(m, "min_torch", Py_BuildValue("(ii)", int((target >> 56) & 0xff), int((target >> 48) & 0xff)));
  if (!ok) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
