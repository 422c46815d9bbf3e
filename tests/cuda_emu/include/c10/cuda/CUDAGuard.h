// cuda_emu stand-in for c10/cuda/CUDAGuard.h: there is one (emulated) device, so the guard does nothing.
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime.h>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(c10::DeviceIndex) {}
};
}  // namespace cuda
}  // namespace c10
