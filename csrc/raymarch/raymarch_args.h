// Argument checks of oneshot::ray_march(_backward), shared by the CPU and CUDA entry points (which can be called
// directly, bypassing the Python checks in oneshot.ops).
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <optional>
#include <vector>

#include "common/checks.h"

namespace oneshot {
namespace raymarch {

struct Dims {
  int64_t R, S, C;
  std::vector<int64_t> lead;  // leading dims
};

// Shapes, devices and dtypes (`cuda`: the CUDA rule, 16-bit colors with float32 densities and depths allowed).
inline Dims check_inputs(const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths,
                         bool cuda) {
  TORCH_CHECK_VALUE(colors.dim() >= 2, "colors must be [..., S, C], got ", shape_str(colors));
  TORCH_CHECK_VALUE(densities.dim() == colors.dim() - 1 && densities.sizes() == colors.sizes().slice(0, colors.dim() - 1),
                    "densities must be [..., S] with the leading dims and S of colors ", shape_str(colors), ", got ",
                    shape_str(densities));
  TORCH_CHECK_VALUE(depths.sizes() == densities.sizes(), "depths must have the shape of densities ",
                    shape_str(densities), ", got ", shape_str(depths));
  check_value_geometry_dtypes(colors, "colors", densities, "densities", cuda);
  check_value_geometry_dtypes(colors, "colors", depths, "depths", cuda);
  check_same_dtype(densities, depths, "densities", "depths");
  check_same_device(colors, densities, "colors", "densities");
  check_same_device(colors, depths, "colors", "depths");
  Dims d;
  d.S = densities.size(-1);
  TORCH_CHECK_VALUE(d.S >= 2, "ray_march needs S >= 2 samples per ray, got S = ", d.S);
  d.C = colors.size(-1);
  d.lead = densities.sizes().slice(0, densities.dim() - 1).vec();
  d.R = densities.numel() / d.S;
  return d;
}

// The leading dims followed by `tail`.
inline std::vector<int64_t> with(std::vector<int64_t> lead, std::initializer_list<int64_t> tail) {
  lead.insert(lead.end(), tail.begin(), tail.end());
  return lead;
}

// An optional incoming gradient, checked for shape, dtype (that of `like`) and device, made contiguous.
inline std::optional<at::Tensor> grad_arg(const std::optional<at::Tensor>& g, const std::vector<int64_t>& shape,
                                          const at::Tensor& like, const char* like_name, const char* name) {
  if (!g.has_value() || !g->defined()) return std::nullopt;
  TORCH_CHECK_VALUE(g->sizes() == at::IntArrayRef(shape), name, " must be ", at::IntArrayRef(shape), ", got ",
                    shape_str(*g));
  check_same_dtype(like, *g, like_name, name);
  check_same_device(like, *g, like_name, name);
  return g->contiguous();
}

}  // namespace raymarch
}  // namespace oneshot
