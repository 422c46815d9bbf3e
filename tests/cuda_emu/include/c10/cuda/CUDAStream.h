// cuda_emu stand-in for c10/cuda/CUDAStream.h: one (null) stream; kernels run synchronously at launch.
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime.h>

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace cuda
}  // namespace c10
