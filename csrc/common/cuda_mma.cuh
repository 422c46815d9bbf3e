// Warp-level tensor-core instructions (mma.sync) and the conversions that feed them, for the CUDA kernels.
//
// The register layouts are the ones the PTX ISA documents ("Matrix Fragments for mma.m16n8k8" and "... for
// mma.m16n8k16 with floating point type", ISA 9.7.14.5): with groupID g = lane >> 2 and threadID_in_group
// t = lane & 3,
//
//   m16n8k16 .bf16   A (16x16, 4 x .b32 = 8 bf16): a0,a1 (g, 2t..2t+1)   a2,a3 (g+8, 2t..2t+1)
//                                                   a4,a5 (g, 2t+8..9)   a6,a7 (g+8, 2t+8..9)
//                    B (16x8, 2 x .b32 = 4 bf16):  b0,b1 (k 2t..2t+1, n g)   b2,b3 (k 2t+8..2t+9, n g)
//   m16n8k8 .tf32    A (16x8, 4 x .b32):  a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//                    B (8x8, 2 x .b32):   b0 (k t, n g)  b1 (k t+4, n g)
//   both, f32 C / D (16x8, 4 floats):     c0,c1 (g, 2t..2t+1)   c2,c3 (g+8, 2t..2t+1)
//
// and the lower-indexed element of a packed pair sits in the low 16 bits. Kernels that build fragments by hand
// depend on these positions, so they are written out once here (Frag) and nowhere else.
//
// The instructions need sm_80 or newer; the package's architecture list starts at 8.0 and the host code
// refuses older devices before launching. Under the CPU emulator of the tests (tests/cuda_emu: the .cu files
// compiled by g++, no __CUDACC__) the same functions call the emulator's implementation of each instruction,
// written from the same ISA text.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace oneshot {
namespace cuda {
namespace mma {

// Positions of a lane's fragment elements (see the table above).
struct Frag {
  int g, t;
  __device__ __forceinline__ explicit Frag(int lane) : g(lane >> 2), t(lane & 3) {}
};

// cvt.rna.tf32.f32: x rounded to TF32 (10 mantissa bits, to nearest, ties away from zero), as the bits of an
// f32 whose low 13 bits are zero.
__device__ __forceinline__ uint32_t tf32_rna(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#elif defined(__CUDA_ARCH__)
  __trap();
  return 0u;
#elif !defined(__CUDACC__)
  return ::oneshot_emu::cvt_rna_tf32_f32(x);
#else
  return 0u;
#endif
}

__device__ __forceinline__ float tf32_value(uint32_t bits) { return __uint_as_float(bits); }

// Two floats rounded to bfloat16 (to nearest even) and packed: lo in the low 16 bits.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Two bfloat16 packed: lo in the low 16 bits.
__device__ __forceinline__ uint32_t pack_bf16(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  __nv_bfloat162 v;
  v.x = lo;
  v.y = hi;
  return *reinterpret_cast<const uint32_t*>(&v);
}

// d += a b: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (every lane of the warp calls it together).
__device__ __forceinline__ void m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
  __trap();
#elif !defined(__CUDACC__)
  ::oneshot_emu::mma_m16n8k16_bf16(d, a, b);
#endif
}

// d += a b: mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32; the operands are tf32_rna() results.
__device__ __forceinline__ void m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
  __trap();
#elif !defined(__CUDACC__)
  ::oneshot_emu::mma_m16n8k8_tf32(d, a, b);
#endif
}

// x = big + small with both TF32 and |x - big - small| <= 2^-22 |x| (the "3xTF32" split): a product of two
// split values summed as big*big + big*small + small*big is float32-accurate (the dropped small*small term is
// below 2^-22 of it).
struct Tf32Split {
  uint32_t big, small;
};
__device__ __forceinline__ Tf32Split tf32_split(float x) {
  Tf32Split s;
  s.big = tf32_rna(x);
  s.small = tf32_rna(x - tf32_value(s.big));
  return s;
}

}  // namespace mma
}  // namespace cuda
}  // namespace oneshot
