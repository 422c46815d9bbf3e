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

namespace oneshot {
namespace render {

// EG3D's colour activation: sigmoid(x) * (1 + 2 * 0.001) - 0.001.
constexpr double kColorScale = 1.002;
constexpr double kColorShift = 0.001;
// The raw density of samples outside the box with clip_to_box (softplus(-1e4 + ...) == 0).
constexpr double kOutsideDensity = -1e4;

template <typename T>
ONESHOT_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

}  // namespace render
}  // namespace oneshot
