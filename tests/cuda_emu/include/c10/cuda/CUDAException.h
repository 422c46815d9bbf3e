// cuda_emu stand-in for c10/cuda/CUDAException.h: launch errors surface as exceptions from the launch itself.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(EXPR)                                                           \
  do {                                                                                 \
    const cudaError_t oneshot_emu_err = (EXPR);                                        \
    TORCH_CHECK(oneshot_emu_err == cudaSuccess, "CUDA error ", int(oneshot_emu_err)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
