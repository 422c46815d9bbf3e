// Small CPU-only helpers shared by the *_cpu.cpp files.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace oneshot {
namespace cpu {

// Dot product with eight fixed partial sums (vectorisable, and the same summation order on every run and
// every machine, unlike an auto-vectorised reduction under fast-math).
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T acc[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[c + l] * b[c + l];
  }
  T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; c < n; ++c) s += a[c] * b[c];
  return s;
}

// Ask the kernel for transparent huge pages on a large, not yet touched output buffer. First-touch page faults
// of a fresh multi-hundred-MB tensor cost more than writing it (4 KiB at a time); 2 MiB pages cut that about
// in half. Advisory only: a no-op where unsupported, and the data is never affected.
inline void advise_huge_pages(void* ptr, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (nbytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + nbytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)nbytes;
#endif
}

// Software prefetch of `bytes` bytes at `base`, spread over `steps` iterations of a latency-bound serial loop
// (call at(k) in iteration k): the memory pipe is otherwise idle while a kernel scans scalars, so fetching the
// next work item's data there overlaps memory with compute. A null base does nothing; prefetches never fault.
class SpreadPrefetch {
 public:
  SpreadPrefetch(const void* base, int64_t bytes, int64_t steps)
      : base_(static_cast<const char*>(base)), bytes_(bytes), step_(steps > 0 ? ((bytes + steps - 1) / steps + 63) / 64 * 64 : 0) {}
  void at(int64_t k) const {
    if (base_ == nullptr) return;
    const int64_t end = std::min(bytes_, (k + 1) * step_);
    for (int64_t o = k * step_; o < end; o += 64) __builtin_prefetch(base_ + o, 0, 3);
  }

 private:
  const char* base_;
  int64_t bytes_, step_;
};

// dst[c] = scale * src[c] for c < n, with streaming (non-temporal) stores where dst is 16-byte aligned: for
// large outputs written once and not read back soon (a gradient), skipping the read-for-ownership of every
// line saves a third of the memory traffic. Call stream_fence() before other threads read the output.
inline void scale_stream(const float* src, float scale, int64_t n, float* dst) {
  int64_t c = 0;
#if defined(__SSE2__)
  if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    const __m128 s = _mm_set1_ps(scale);
    for (; c + 4 <= n; c += 4) _mm_stream_ps(dst + c, _mm_mul_ps(s, _mm_loadu_ps(src + c)));
  }
#endif
  for (; c < n; ++c) dst[c] = scale * src[c];
}

inline void scale_stream(const double* src, double scale, int64_t n, double* dst) {
  int64_t c = 0;
#if defined(__SSE2__)
  if ((reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    const __m128d s = _mm_set1_pd(scale);
    for (; c + 2 <= n; c += 2) _mm_stream_pd(dst + c, _mm_mul_pd(s, _mm_loadu_pd(src + c)));
  }
#endif
  for (; c < n; ++c) dst[c] = scale * src[c];
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Pieces of [0, n) for `parts` workers, as even as possible: piece k is [begin(k), begin(k + 1)).
inline int64_t split_begin(int64_t k, int64_t parts, int64_t n) { return (n * k) / parts; }

}  // namespace cpu
}  // namespace oneshot

namespace oneshot {
namespace cpu {

// Branch-free float exp and log1p that GCC vectorises (the AVX2 clone runs 8 lanes), for the per-sample
// transcendentals of the CPU kernels. Cephes-style range reduction and minimax polynomials: max error about
// 2 ulp (exp) and 3 ulp (log1p) against std:: over the float range; the ray_march float32 tests check the
// kernels that use them against the reference. double uses std::.
inline float fast_exp(float x) {
  // Below kLo the result is under 2.4e-38 and flushed to 0; above kHi it overflows to +inf.
  const float kLog2e = 1.44269504088896341f, kC1 = 0.693359375f, kC2 = -2.12194440e-4f;
  const float kLo = -86.6f, kHi = 88.7228393554688f;
  const float xc = x > kHi ? kHi : (x < kLo ? kLo : x);
  const float fx = xc * kLog2e;
  const float fn = std::floor(fx + 0.5f);  // in [-125, 128]
  const int n = static_cast<int>(fn);
  const float r = (xc - fn * kC1) - fn * kC2;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  union {
    int i;
    float f;
  } scale;
  scale.i = (n + 126) << 23;  // 2^(n - 1): a normal float for every n in range
  float out = (y * scale.f) * 2.0f;
  out = x > kHi ? std::numeric_limits<float>::infinity() : out;
  out = x < kLo ? 0.0f : out;
  return x != x ? x : out;  // NaN in, NaN out
}

// log(1 + y) for y >= 0 (what softplus needs): log(u) of u = fl(1 + y), corrected by y / (u - 1) for the
// rounding of 1 + y (Kahan), so small y keep full relative precision.
inline float fast_log1p_nonneg(float y) {
  const float u = 1.0f + y;
  union {
    float f;
    int i;
  } bits;
  bits.f = u;
  int e = ((bits.i >> 23) & 0xff) - 127;
  bits.i = (bits.i & 0x007fffff) | 0x3f800000;  // mantissa in [1, 2)
  float m = bits.f;
  const bool big = m > 1.41421356237f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float x = m - 1.0f;  // in [-0.293, 0.414]
  const float z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  float lg = x * z * p;
  lg += fe * -2.12194440e-4f;
  lg += -0.5f * z;
  lg = x + lg;
  lg += fe * 0.693359375f;
  const float d = u - 1.0f;
  const float out = d == 0.0f ? y : lg * (y / d);
  return y > 3.0e38f ? y : out;  // +inf stays +inf
}

}  // namespace cpu
}  // namespace oneshot
