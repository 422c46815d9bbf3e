// Small CPU-only helpers shared by the *_cpu.cpp files.
#pragma once

#include <cstdint>

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

// Pieces of [0, n) for `parts` workers, as even as possible: piece k is [begin(k), begin(k + 1)).
inline int64_t split_begin(int64_t k, int64_t parts, int64_t n) { return (n * k) / parts; }

}  // namespace cpu
}  // namespace oneshot
