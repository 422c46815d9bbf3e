// Helpers shared by the CUDA kernels (*_cuda.cu). Per-op ATen and c10/cuda headers only: the local toolkit
// has no cuSPARSE/cuBLAS headers, so ATen/cuda/CUDAContext.h (and torch/extension.h) cannot be used.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/macros.h"

// The most blocks a grid-stride launch puts along x, and along y. The kernels loop over whatever lies beyond,
// so any cap gives the same result; the tests' CPU emulator of CUDA (tests/cuda_emu) sets tiny caps at run time
// so that every grid-stride loop runs several rounds.
#ifndef ONESHOT_CUDA_MAX_BLOCKS
#define ONESHOT_CUDA_MAX_BLOCKS (int64_t(65535) * 16)
#endif
#ifndef ONESHOT_CUDA_MAX_BLOCKS_Y
#define ONESHOT_CUDA_MAX_BLOCKS_Y int64_t(65535)
#endif

namespace oneshot {
namespace cuda {

// Accumulation type: float for float16 / bfloat16 / float32, double for float64.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

// Load / store one element of a storage dtype as its accumulation type (c10::Half / c10::BFloat16 convert
// with round-to-nearest-even on the device).
template <typename T>
__device__ __forceinline__ acc_t<T> to_acc(T x) {
  return static_cast<acc_t<T>>(x);
}
template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> x) {
  return static_cast<T>(x);
}

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// dst[0 .. VW) += v[0 .. VW) for a float buffer in global memory: one vector atomic (red.global.add.v4.f32 /
// .v2.f32) on sm_90 and newer, where dst must be 16- / 8-byte aligned; VW scalar atomics before sm_90. The
// addition order (hence the rounding) of concurrent updates is not fixed either way.
template <int VW>
__device__ __forceinline__ void atomic_add_vec(float* dst, const float (&v)[VW]) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
  constexpr bool kVector = VW == 2 || VW == 4;
#else
  constexpr bool kVector = false;
#endif
  if constexpr (kVector && VW == 4) {
    atomicAdd(reinterpret_cast<float4*>(dst), make_float4(v[0], v[1], v[2], v[3]));
  } else if constexpr (kVector && VW == 2) {
    atomicAdd(reinterpret_cast<float2*>(dst), make_float2(v[0], v[1]));
  } else {
#pragma unroll
    for (int l = 0; l < VW; ++l) atomicAdd(dst + l, v[l]);
  }
}

// No vector atomics for double: VW scalar ones.
template <int VW>
__device__ __forceinline__ void atomic_add_vec(double* dst, const double (&v)[VW]) {
#pragma unroll
  for (int l = 0; l < VW; ++l) atomicAdd(dst + l, v[l]);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A device attribute of the current device (cudaDeviceGetAttribute, checked).
inline int device_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

// Blocks for a grid-stride loop over n work items (threads each): one per chunk up to ONESHOT_CUDA_MAX_BLOCKS.
inline unsigned int grid_for(int64_t n, int64_t threads) {
  const int64_t blocks = ceil_div(n, threads), cap = ONESHOT_CUDA_MAX_BLOCKS;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Calls fn(V{}, G{}) for the (value, geometry) dtype pair of a call: float16 / bfloat16 / float32 values with
// float32 geometry, or float64 with float64. A generic lambda, so only the valid pairs are instantiated.
template <typename F>
void dispatch_value_geometry(at::ScalarType value, const char* name, F&& fn) {
  switch (value) {
    case at::kHalf:
      fn(c10::Half{}, float{});
      break;
    case at::kBFloat16:
      fn(c10::BFloat16{}, float{});
      break;
    case at::kFloat:
      fn(float{}, float{});
      break;
    case at::kDouble:
      fn(double{}, double{});
      break;
    default:
      TORCH_CHECK_TYPE(false, name, ": unsupported dtype ", value);
  }
}

}  // namespace cuda
}  // namespace oneshot

// float32 / float64, plus float16 and bfloat16 for the "value" tensors (planes, colors, features).
#define ONESHOT_DISPATCH_VALUE_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, TYPE, NAME, __VA_ARGS__)
