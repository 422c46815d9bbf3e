// rasterize_points: nearest-point splatting of features onto the three tri-planes.
//
//   points [B, N, 3], features [B, N, C], valid [B, N] bool (optional), resolution (H, W)
//   Cell (i, j) of plane p has centre (u_j, v_i); it takes the valid point whose projection
//   (c[axes[p][0]], c[axes[p][1]]), c = points * scale, is nearest; ties go to the lowest point index; with
//   max_distance, a cell whose nearest d^2 exceeds max_distance^2 is empty. Outputs: planes [B, 3, C, H, W]
//   (0 where empty) and index [B, 3, H, W] int64 (-1 where empty).
//
// The arithmetic is pinned so that every backend selects the same point: the functions below ARE the
// contract. scale = 2 / box_warp computed in double and rounded to T; cell centres in T; d^2 = du*du + dv*dv
// with each product and the sum rounded separately (no fused multiply-add: the CPU build uses
// -ffp-contract=off, the CUDA build the explicitly rounded intrinsics below).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace oneshot {
namespace raster {

// Centre of cell j of n along one axis, in normalised coordinates.
//   align_corners=False: (2j + 1) / n - 1;  align_corners=True: -1 + 2j / (n - 1), and 0 when n == 1.
template <typename T>
ONESHOT_HD T cell_centre(int64_t j, int64_t n, bool align_corners) {
  if (align_corners) {
    if (n == 1) return T(0);
    return T(2 * j) / T(n - 1) - T(1);
  }
  return T(2 * j + 1) / T(n) - T(1);
}

template <typename T>
ONESHOT_HD T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) return __fmul_rn(a, b);
  else return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
ONESHOT_HD T add_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) return __fadd_rn(a, b);
  else return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// Squared component distance, rounded: fl(d * d).
template <typename T>
ONESHOT_HD T sq(T d) {
  return mul_rn(d, d);
}

// The pinned squared distance between cell centre (u, v) and projected point (a, b).
template <typename T>
ONESHOT_HD T dist2(T u, T v, T a, T b) {
  return add_rn(sq(u - a), sq(v - b));
}

// Whether a cell whose nearest squared distance is best_d2 stays empty.
// max_d2 is max_distance^2 computed in double and rounded to T (+inf without max_distance).
template <typename T>
ONESHOT_HD bool cell_is_empty(T best_d2, T max_d2) {
  return !(best_d2 <= max_d2) || !(best_d2 < T(INFINITY));
}

}  // namespace raster
}  // namespace oneshot
