// What ecgkt's kernels use of libtorch, in one place: the stable ABI only (torch/csrc/stable,
// torch/headeronly and the AOTI C shims), never ATen or c10. The compiled library then depends on the
// stable C ABI alone, so one build loads into every torch from the version setup.py targets
// (TORCH_TARGET_VERSION) on; ecgkt/_extension.py checks that version before loading it.
#pragma once

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ecgkt {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}
}  // namespace detail

// A user-facing check: the message reaches Python as a RuntimeError, as written (no file or line).
#define ECGKT_CHECK(cond, ...)                                               \
  do {                                                                       \
    if (!(cond)) throw std::runtime_error(::ecgkt::detail::concat(__VA_ARGS__)); \
  } while (0)

// "[3, 4]", for error messages.
inline std::string shape(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

inline const char* dtype_name(ScalarType t) { return torch::headeronly::toString(t); }

// A boxed call of an ATen op through the dispatcher, for ops the stable headers do not wrap.
// Only ops whose arguments are tensors, ints and bools: the stable ABI has no Scalar conversion.
// `outputs` values come back at the start of the stack.
template <size_t Outputs = 1, typename... Args>
std::array<StableIValue, (sizeof...(Args) > Outputs ? sizeof...(Args) : Outputs)> call_aten(
    const char* name, const char* overload, const Args&... args) {
  std::array<StableIValue, (sizeof...(Args) > Outputs ? sizeof...(Args) : Outputs)> stack{
      torch::stable::detail::from(args)...};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION));
  return stack;
}

// In-place element-wise op of one tensor argument (exp_, log1p_, sigmoid_, abs_), vectorised by ATen.
inline void inplace(const char* name, const Tensor& t) {
  torch::stable::detail::to<Tensor>(call_aten(name, "", t)[0]);  // releases the returned reference
}

// A view that does not require grad: the kernels run below autograd, and out= ops refuse inputs that
// require it when grad mode is on in a worker thread.
inline Tensor detached(const Tensor& t) {
  return torch::stable::detail::to<Tensor>(call_aten("aten::detach", "", t)[0]);
}

}  // namespace ecgkt
