// render_triplane: triplane_sample -> EG3D's decoder MLP -> ray_march, fused per ray, with a backward that
// recomputes every per-sample value instead of saving it.
//
//   planes [B, 3, C, H, W]; origins, directions [B, R, 3]; depths [B, R, S] (non-decreasing, S >= 2);
//   decoder (effective weights, the equalized-lr gains already applied):
//     w1 [Hd, C], b1 [Hd], w2 [1 + Co, Hd], b2 [1 + Co].
//   Per sample k of ray r:  p = o + t_k d;  f = triplane_sample(planes, p, box_warp, axes, "mean")  [C]
//     h = w1 f + b1;  a = softplus(h);  y = w2 a + b2
//     sigma_k = y_0 (-1e4 where clip_to_box and max_i |p_i| > box_warp / 2)
//     color_k = sigmoid(y_{1..Co}) * (1 + 2e-3) - 1e-3
//   then ray_march(color, sigma, t, density_bias) (raymarch/raymarch.h):
//   features [B, R, Co], depth [B, R], opacity [B, R], weights [B, R, S - 1].
//
// Gradients flow to planes and the four decoder tensors (origins, directions and depths are constants, as the
// renderer's rays are). Nothing of size [R, S, *] is saved for the backward.
#pragma once

#include <cmath>

#include "common/macros.h"
#include "raymarch/raymarch.h"

namespace oneshot {
namespace render {

// EG3D's colour activation: sigmoid(x) * (1 + 2 * 0.001) - 0.001.
constexpr double kColorScale = 1.002;
constexpr double kColorShift = 0.001;
// The raw density of samples outside the box with clip_to_box (softplus(-1e4 + ...) == 0).
constexpr double kOutsideDensity = -1e4;

// a / b. In float32 on the GPU as __fdividef (within 2 ulp of the quotient for |b| < 2^126): IEEE division's
// rare-case path is an out-of-line call, and in the fused kernels ptxas keeps registers on the stack around every
// such call site. float64 (and the CPU) divide exactly.
ONESHOT_HD float quotient(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdividef(a, b);
#else
  return a / b;
#endif
}
ONESHOT_HD double quotient(double a, double b) { return a / b; }

template <typename T>
ONESHOT_HD T sigmoid(T x) {
  return quotient(T(1), T(1) + exp(-x));
}

// raymarch::softplus_grad with quotient().
template <typename T>
ONESHOT_HD T softplus_grad(T x) {
  if (x > T(20)) return T(1);
  const T z = exp(x);
  return quotient(z, z + T(1));
}

// raymarch::composite_depth with quotient().
template <typename T>
ONESHOT_HD T composite_depth(T num, T opacity, T t_first, T t_last) {
  if (!(opacity > T(0))) return t_last;
  T d = quotient(num, opacity);
  d = d < t_first ? t_first : d;
  d = d > t_last ? t_last : d;
  return d;
}

// raymarch::depth_passes_grad with quotient().
template <typename T>
ONESHOT_HD bool depth_passes_grad(T num, T opacity, T t_first, T t_last) {
  if (!(opacity > T(0))) return false;
  const T d = quotient(num, opacity);
  return d >= t_first && d <= t_last;
}

template <typename T>
ONESHOT_HD T color(T y) {
  return sigmoid(y) * T(kColorScale) - T(kColorShift);
}

// d colour / dy, given s = sigmoid(y).
template <typename T>
ONESHOT_HD T color_grad(T s) {
  return T(kColorScale) * s * (T(1) - s);
}

// The interval between samples k and k + 1 (raw densities s0, s1 at depths t0, t1), as ray_march composites it:
// alpha = 1 - e, e = exp(-softplus(m) delta), m = (s0 + s1) / 2 + bias; keep = 1 - alpha + 1e-10 (the factor of the
// transmittance); slope = softplus'(m); tbar the midpoint depth. Every pass of a kernel computes alpha with this one
// function, so the passes agree bit for bit.
template <typename T>
struct Interval {
  T alpha, e, keep, slope, delta, tbar;
};

template <typename T>
ONESHOT_HD Interval<T> interval(T s0, T s1, T t0, T t1, T bias) {
  Interval<T> iv;
  const T m = (s0 + s1) / T(2) + bias;
  iv.delta = t1 - t0;
  iv.tbar = (t0 + t1) / T(2);
  iv.e = exp(-(raymarch::softplus(m) * iv.delta));
  iv.alpha = T(1) - iv.e;
  iv.keep = (T(1) - iv.alpha) + T(1e-10);
  iv.slope = softplus_grad(m);
  return iv;
}

}  // namespace render
}  // namespace oneshot
