// Runs the kernel of csrc/preprocess/cuda.cu on the CPU for tests on machines without a GPU
// (tests/test_preprocess_cuda_emulated.py compiles cuda.cu with -DECGKT_CUDA_EMULATION as plain C++).
// One std::thread per CUDA thread; __syncthreads is a block barrier, warp shuffles exchange through a
// per-warp buffer between two warp barriers, dynamic shared memory is a per-block byte array.
// Blocks run one after another. Not part of any build.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define ECGKT_DYNAMIC_SHARED(name) unsigned char* name = emu::current->smem.data()

namespace emu {
struct Dim {
  unsigned x = 0;
};
struct Block {
  explicit Block(unsigned threads, size_t smem_bytes)
      : barrier(threads), exchange(threads), smem(smem_bytes + 16) {
    for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.emplace_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
  std::vector<double> exchange;  // one slot per thread; int/float/double round-trip exactly
  std::vector<unsigned char> smem;
};
inline thread_local Block* current = nullptr;
}  // namespace emu

inline thread_local emu::Dim threadIdx, blockIdx, blockDim;

inline void __syncthreads() { emu::current->barrier.arrive_and_wait(); }

template <typename T>
T emu_exchange(T v, unsigned src_lane) {
  emu::Block* b = emu::current;
  const unsigned warp = threadIdx.x / 32;
  b->exchange[threadIdx.x] = static_cast<double>(v);
  b->warp_barriers[warp]->arrive_and_wait();
  const double r = b->exchange[warp * 32 + src_lane];
  b->warp_barriers[warp]->arrive_and_wait();
  return static_cast<T>(r);
}
template <typename T>
T __shfl_up_sync(unsigned, T v, int o) {
  const int lane = threadIdx.x % 32;
  return emu_exchange(v, lane >= o ? lane - o : lane);
}
template <typename T>
T __shfl_down_sync(unsigned, T v, int o) {
  const int lane = threadIdx.x % 32;
  return emu_exchange(v, lane + o < 32 ? lane + o : lane);
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int o) {
  return emu_exchange(v, (threadIdx.x % 32) ^ o);
}

using std::fma;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isnan;
using std::max;
using std::min;
using std::sqrt;

template <typename Kernel, typename... Args>
void emu_launch(Kernel kernel, unsigned grid, unsigned threads, size_t smem_bytes, const Args&... args) {
  for (unsigned b = 0; b < grid; ++b) {
    emu::Block block(threads, smem_bytes);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        emu::current = &block;
        threadIdx.x = t;
        blockIdx.x = b;
        blockDim.x = threads;
        kernel(args...);
      });
    for (auto& th : pool) th.join();
  }
}
