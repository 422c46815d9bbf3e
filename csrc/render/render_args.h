// Argument checks of oneshot::render_triplane(_backward), for the kernels' entry points (which can be called
// directly, bypassing the Python checks in oneshot.ops).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"

namespace oneshot {
namespace render {

struct Dims {
  int64_t B, R, S, C, H, W, Hd, O;  // O = 1 + Co
};

inline Dims check_inputs(const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions,
                         const at::Tensor& depths, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                         const at::Tensor& b2, at::IntArrayRef axes) {
  TORCH_CHECK_VALUE(planes.dim() == 5 && planes.size(1) == 3, "planes must be [B, 3, C, H, W], got ", shape_str(planes));
  Dims d;
  d.B = planes.size(0);
  d.C = planes.size(2);
  d.H = planes.size(3);
  d.W = planes.size(4);
  TORCH_CHECK_VALUE(origins.dim() == 3 && origins.size(0) == d.B && origins.size(2) == 3,
                    "origins must be [B, R, 3] with B = ", d.B, " (the planes' batch), got ", shape_str(origins));
  d.R = origins.size(1);
  TORCH_CHECK_VALUE(directions.sizes() == origins.sizes(), "directions must have the shape of origins ",
                    shape_str(origins), ", got ", shape_str(directions));
  TORCH_CHECK_VALUE(depths.dim() == 3 && depths.size(0) == d.B && depths.size(1) == d.R,
                    "depths must be [B, R, S] with B, R = ", d.B, ", ", d.R, ", got ", shape_str(depths));
  d.S = depths.size(2);
  TORCH_CHECK_VALUE(d.S >= 2, "render_triplane needs S >= 2 samples per ray, got S = ", d.S);
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == d.C, "w1 must be [hidden, C] with C = ", d.C,
                    " (the planes' channels), got ", shape_str(w1));
  d.Hd = w1.size(0);
  TORCH_CHECK_VALUE(b1.dim() == 1 && b1.size(0) == d.Hd, "b1 must be [", d.Hd, "], got ", shape_str(b1));
  TORCH_CHECK_VALUE(w2.dim() == 2 && w2.size(1) == d.Hd && w2.size(0) >= 2,
                    "w2 must be [1 + out_channels, hidden] with hidden = ", d.Hd, " and out_channels >= 1, got ",
                    shape_str(w2));
  d.O = w2.size(0);
  TORCH_CHECK_VALUE(b2.dim() == 1 && b2.size(0) == d.O, "b2 must be [", d.O, "], got ", shape_str(b2));
  TORCH_CHECK_VALUE(axes.size() == 6, "axes must hold 3 pairs (6 ints), got ", axes.size());
  for (auto a : axes) TORCH_CHECK_VALUE(a >= 0 && a < 3, "axes must be in [0, 3), got ", axes);
  // dtypes: everything float32 or everything float64, or float16 / bfloat16 planes with float32 for the rest.
  const at::Tensor* all[] = {&origins, &directions, &depths, &w1, &b1, &w2, &b2};
  const char* names[] = {"origins", "directions", "depths", "w1", "b1", "w2", "b2"};
  const bool low = planes.scalar_type() == at::kHalf || planes.scalar_type() == at::kBFloat16;
  TORCH_CHECK_TYPE(low || planes.scalar_type() == at::kFloat || planes.scalar_type() == at::kDouble,
                   "render_triplane takes float32, float64, float16 or bfloat16 planes, got ",
                   dtype_str(planes.scalar_type()));
  for (int i = 0; i < 7; ++i) {
    if (low) {
      TORCH_CHECK_TYPE(all[i]->scalar_type() == at::kFloat, names[i], " must be float32 with ",
                       dtype_str(planes.scalar_type()), " planes, got ", dtype_str(all[i]->scalar_type()));
    } else {
      check_same_dtype(planes, *all[i], "planes", names[i]);
    }
    check_same_device(planes, *all[i], "planes", names[i]);
  }
  return d;
}

// An optional incoming gradient: checked for shape, the compute dtype (that of `origins`) and device, contiguous.
inline std::optional<at::Tensor> grad_arg(const std::optional<at::Tensor>& g, std::vector<int64_t> shape,
                                          const at::Tensor& origins, const char* name) {
  std::optional<at::Tensor> out;
  if (!g.has_value() || !g->defined()) return out;
  TORCH_CHECK_VALUE(g->sizes() == at::IntArrayRef(shape), name, " must be ", at::IntArrayRef(shape), ", got ",
                    shape_str(*g));
  check_same_dtype(origins, *g, "origins", name);
  check_same_device(origins, *g, "origins", name);
  out = g->contiguous();
  return out;
}

// The forward's outputs, allocated: features [B, R, Co], depth [B, R], opacity [B, R], weights [B, R, S - 1] in the
// compute dtype (that of `origins`).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_outputs(const Dims& d,
                                                                                const at::Tensor& origins) {
  auto opts = origins.options();
  return {at::empty({d.B, d.R, d.O - 1}, opts), at::empty({d.B, d.R}, opts), at::empty({d.B, d.R}, opts),
          at::empty({d.B, d.R, d.S - 1}, opts)};
}

// The four optional incoming gradients of render_triplane_backward, checked.
struct Grads {
  std::optional<at::Tensor> features, depth, opacity, weights;
};

inline Grads grad_args(const std::optional<at::Tensor>& gf, const std::optional<at::Tensor>& gd,
                       const std::optional<at::Tensor>& go, const std::optional<at::Tensor>& gw, const Dims& d,
                       const at::Tensor& origins) {
  return {grad_arg(gf, {d.B, d.R, d.O - 1}, origins, "grad_features"), grad_arg(gd, {d.B, d.R}, origins, "grad_depth"),
          grad_arg(go, {d.B, d.R}, origins, "grad_opacity"),
          grad_arg(gw, {d.B, d.R, d.S - 1}, origins, "grad_weights")};
}

}  // namespace render
}  // namespace oneshot
