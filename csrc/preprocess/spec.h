// The preprocessing spec's constants, once for every C++/CUDA kernel (the Python side's are in
// ecgkt/ops/preprocess/spec.py: INVALID_INT16, FLAT_PTP, ZERO_SCALE, MAD_TO_SIGMA, NEAR_Z1;
// tests/test_extension.py checks that the two agree). Plain C++ (also included by the CUDA kernel and its CPU emulation).
#pragma once

namespace ecgkt {
namespace spec {

constexpr int kInvalidInt16 = -32768;  // WFDB format 16: an invalid (missing) sample
constexpr double kFlatPtp = 1e-6;      // mV: a lead whose peak-to-peak is at most this is flat
constexpr double kZeroScale = 1e-8;    // a std or MAD at most this is zero
constexpr double kMadToSigma = 1.4826;  // robust scale = kMadToSigma * MAD
constexpr double kNearZ1 = 1e-2;        // a section with A(1) = 1 + a1 + a2 below this has poles near z = 1

}  // namespace spec
}  // namespace ecgkt
