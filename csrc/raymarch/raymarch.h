// ray_march: EG3D's MipRayMarcher2 fused into one op with a depth output.
//
//   colors [R, S, C], densities [R, S] (raw), depths [R, S] (non-decreasing along each ray), S >= 2.
//   Over the S-1 intervals i:
//     delta_i = t_{i+1} - t_i,  cbar_i = (c_i + c_{i+1}) / 2,  tbar_i = (t_i + t_{i+1}) / 2
//     sigma_i = softplus((s_i + s_{i+1}) / 2 + density_bias)       (torch's softplus, threshold 20)
//     alpha_i = 1 - exp(-sigma_i delta_i);  T_0 = 1,  T_{i+1} = T_i (1 - alpha_i + 1e-10);  w_i = alpha_i T_i
//   opacity = sum w_i; features = sum w_i cbar_i (+ 1 - opacity if white_background)
//   depth = clamp(sum w_i tbar_i / opacity, t_0, t_{S-1}), t_{S-1} where opacity == 0.
//
// Per-sample math shared by the CPU and CUDA kernels.
#pragma once

#include <cmath>

#include "common/macros.h"

namespace oneshot {
namespace raymarch {

// torch.nn.functional.softplus(x) with beta = 1, threshold = 20.
template <typename T>
ONESHOT_HD T softplus(T x) {
  return x > T(20) ? x : log1p(exp(x));
}

// d softplus / dx, as torch's softplus_backward computes it.
template <typename T>
ONESHOT_HD T softplus_grad(T x) {
  if (x > T(20)) return T(1);
  const T z = exp(x);
  return z / (z + T(1));
}

// T_{i+1} from T_i.
template <typename T>
ONESHOT_HD T next_transmittance(T trans, T alpha) {
  return trans * ((T(1) - alpha) + T(1e-10));
}

// Whether depth = num / opacity passes its gradient: opacity > 0 and the clamp to [t_first, t_last] inactive
// (torch.clamp's rule: the gradient passes where t_first <= x <= t_last).
template <typename T>
ONESHOT_HD bool depth_passes_grad(T num, T opacity, T t_first, T t_last) {
  if (!(opacity > T(0))) return false;
  const T d = num / opacity;
  return d >= t_first && d <= t_last;
}

template <typename T>
ONESHOT_HD T composite_depth(T num, T opacity, T t_first, T t_last) {
  if (!(opacity > T(0))) return t_last;
  T d = num / opacity;
  d = d < t_first ? t_first : d;
  d = d > t_last ? t_last : d;
  return d;
}

}  // namespace raymarch
}  // namespace oneshot
