// Shared by the CPU (.cpp) and CUDA (.cu) translation units: the per-element math of every op lives in
// header-only functions marked ONESHOT_HD, so the CPU tests exercise the arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ONESHOT_HD __host__ __device__ __forceinline__
#else
#define ONESHOT_HD inline
#endif
