// triplane_sample: bilinear sampling of three axis-aligned feature planes at 3D points.
//
//   planes [B, 3, C, H, W], points [B, M, 3] (world units), box_warp, axes[3][2], reduce
//   c = points * (2 / box_warp); plane p reads (c[axes[p][0]], c[axes[p][1]]) as the (x, y) of
//   grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False) on planes[:, p].
//   out: mean or sum over planes [B, M, C], or all three [B, 3, M, C] (reduce = "none").
//
// This header holds the per-point math shared by the CPU and CUDA kernels: the tap positions and weights of
// one bilinear lookup, and the derivative of the lookup with respect to the normalised coordinates.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace oneshot {
namespace triplane {

enum Reduce : int { kMean = 0, kSum = 1, kNone = 2 };

// One bilinear lookup at normalised (x, y) in [-1, 1] (align_corners=False, zero padding).
// x0, y0: the top-left tap (may lie outside the plane: out-of-bounds taps read 0); tx, ty: fractional parts.
template <typename T>
struct Taps {
  int64_t x0, y0;
  T tx, ty;
  bool any;  // false when no tap can be inside the plane (also for non-finite coordinates)
};

template <typename T>
ONESHOT_HD Taps<T> taps(T x, T y, int64_t W, int64_t H) {
  Taps<T> t;
  // grid_sample's unnormalisation for align_corners=False: pixel = ((c + 1) * size - 1) / 2
  const T ix = ((x + T(1)) * T(W) - T(1)) / T(2);
  const T iy = ((y + T(1)) * T(H) - T(1)) / T(2);
  // Taps x0 and x0 + 1 can only be inside [0, W - 1] when -1 <= ix < W (this also rejects NaN and keeps the
  // float -> int conversion in range for points far outside the box).
  t.any = (ix >= T(-1)) && (ix < T(W)) && (iy >= T(-1)) && (iy < T(H));
  if (!t.any) {
    t.x0 = t.y0 = 0;
    t.tx = t.ty = T(0);
    return t;
  }
  const T fx = floor(ix), fy = floor(iy);
  t.x0 = static_cast<int64_t>(fx);
  t.y0 = static_cast<int64_t>(fy);
  t.tx = ix - fx;
  t.ty = iy - fy;
  return t;
}

// Weight of tap k (0: (x0, y0), 1: (x0+1, y0), 2: (x0, y0+1), 3: (x0+1, y0+1)).
template <typename T>
ONESHOT_HD T tap_weight(const Taps<T>& t, int k) {
  const T wx = (k & 1) ? t.tx : T(1) - t.tx;
  const T wy = (k & 2) ? t.ty : T(1) - t.ty;
  return wx * wy;
}

// d(weight of tap k)/d(ix) and d/d(iy): ix, iy are pixel coordinates.
template <typename T>
ONESHOT_HD T tap_dweight_dx(const Taps<T>& t, int k) {
  const T wy = (k & 2) ? t.ty : T(1) - t.ty;
  return (k & 1) ? wy : -wy;
}

template <typename T>
ONESHOT_HD T tap_dweight_dy(const Taps<T>& t, int k) {
  const T wx = (k & 1) ? t.tx : T(1) - t.tx;
  return (k & 2) ? wx : -wx;
}

// Whether tap k lies inside the plane, and its (x, y).
template <typename T>
ONESHOT_HD bool tap_inside(const Taps<T>& t, int k, int64_t W, int64_t H, int64_t* x, int64_t* y) {
  *x = t.x0 + (k & 1);
  *y = t.y0 + ((k >> 1) & 1);
  return t.any && *x >= 0 && *x < W && *y >= 0 && *y < H;
}

}  // namespace triplane
}  // namespace oneshot
