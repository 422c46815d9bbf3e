// cuda_emu stand-in for cuda_bf16.h: the bfloat16 storage type and the conversions the kernels use, with CUDA's
// semantics (float -> bfloat16 to nearest even; NaN stays NaN).
#pragma once

#include <cstdint>
#include <cstring>

struct alignas(2) __nv_bfloat16 {
  unsigned short __x;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 r;
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
    r.__x = static_cast<unsigned short>((u >> 16) | 0x0040u);  // NaN: keep it a (quiet) NaN
    return r;
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // to nearest, ties to even
  r.__x = static_cast<unsigned short>(u >> 16);
  return r;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = uint32_t(h.__x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)}; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
