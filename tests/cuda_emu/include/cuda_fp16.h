// cuda_emu stand-in for cuda_fp16.h: the IEEE half storage type and its conversions with CUDA's semantics
// (float -> half to nearest even, subnormals kept, overflow to infinity, NaN stays NaN).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct alignas(2) __half {
  unsigned short __x;
};
struct alignas(4) __half2 {
  __half x, y;
};

inline __half __float2half_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t mag = u & 0x7fffffffu;
  __half r;
  if (mag >= 0x7f800000u) {  // inf or NaN
    r.__x = static_cast<unsigned short>(sign | 0x7c00u | (mag > 0x7f800000u ? 0x0200u : 0u));
    return r;
  }
  if (mag >= 0x477ff000u) {  // >= 65520: rounds to infinity
    r.__x = static_cast<unsigned short>(sign | 0x7c00u);
    return r;
  }
  if (mag < 0x38800000u) {  // below 2^-14: a half subnormal (or zero), a multiple of 2^-24
    const float a = std::fabs(f) * 16777216.0f;  // exact (a power of two); nearbyint rounds to nearest even
    r.__x = static_cast<unsigned short>(sign | static_cast<uint32_t>(std::nearbyint(a)));
    return r;
  }
  // normal: drop 13 mantissa bits to nearest even, rebias the exponent (127 -> 15)
  mag += 0x0fffu + ((mag >> 13) & 1u);
  r.__x = static_cast<unsigned short>(sign | ((mag - (112u << 23)) >> 13));
  return r;
}

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.__x & 0x8000u) << 16;
  const uint32_t exp = (h.__x >> 10) & 0x1fu, man = h.__x & 0x3ffu;
  float f;
  if (exp == 0) {
    f = std::ldexp(float(man), -24);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u |= sign;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const uint32_t u = sign | (exp == 31 ? (0xffu << 23) | (man << 13) : ((exp + 112u) << 23) | (man << 13));
  std::memcpy(&f, &u, 4);
  return f;
}

inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half_rn(lo), __float2half_rn(hi)}; }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }
