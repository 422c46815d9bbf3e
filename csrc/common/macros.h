// Shared by the CPU (.cpp) and CUDA (.cu) translation units: the per-element math of every op lives in
// header-only functions marked ONESHOT_HD, so the CPU tests exercise the arithmetic the GPU runs.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ONESHOT_HD __host__ __device__ __forceinline__
#else
#define ONESHOT_HD inline
#endif

// CPU hot loops are compiled twice, for AVX2 and for the x86-64 baseline, and picked at load time (GCC
// function multiversioning). No fast-math and no FMA contraction either way (-ffp-contract=off), so both
// clones give bitwise identical results.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && \
    !defined(ONESHOT_NO_MULTIVERSION)
#define ONESHOT_CPU_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define ONESHOT_CPU_MULTIVERSION
#endif
