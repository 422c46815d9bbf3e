// Argument checks of oneshot::rasterize_points, shared by the CPU and CUDA entry points (which can be called
// directly, bypassing the Python checks in oneshot.ops).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/checks.h"

namespace oneshot {
namespace raster {

// Shapes, devices, axes, dtypes (`cuda`: the CUDA rule, 16-bit features with float32 points allowed), valid and
// max_distance. Returns valid made contiguous (undefined without a mask).
inline at::Tensor check_inputs(const at::Tensor& points, const at::Tensor& features, int64_t height, int64_t width,
                               double box_warp, at::IntArrayRef axes, const std::optional<at::Tensor>& valid,
                               std::optional<double> max_distance, bool cuda) {
  check_dim(points, 3, "points", "[B, N, 3]");
  TORCH_CHECK_VALUE(points.size(2) == 3, "points must be [B, N, 3], got ", shape_str(points));
  check_dim(features, 3, "features", "[B, N, C]");
  TORCH_CHECK_VALUE(features.size(0) == points.size(0) && features.size(1) == points.size(1),
                    "features must be [B, N, C] with B, N of points ", shape_str(points), ", got ",
                    shape_str(features));
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "resolution must be >= 1, got (", height, ", ", width, ")");
  TORCH_CHECK_VALUE(box_warp > 0, "box_warp must be > 0, got ", box_warp);
  if (cuda) {
    check_cuda_dtypes(features, "features", points, "points");
  } else {
    check_float(points, "points");
    check_same_dtype(points, features, "points", "features");
  }
  check_same_device(points, features, "points", "features");
  check_axes(axes);
  TORCH_CHECK_VALUE(points.size(1) < (int64_t(1) << 31), "rasterize_points supports N < 2^31 points, got ",
                    points.size(1));
  at::Tensor valid_c;
  if (valid.has_value() && valid->defined()) {
    TORCH_CHECK_TYPE(valid->scalar_type() == at::kBool, "valid must be a bool tensor, got ",
                     dtype_str(valid->scalar_type()));
    TORCH_CHECK_VALUE(valid->dim() == 2 && valid->size(0) == points.size(0) && valid->size(1) == points.size(1),
                      "valid must be [B, N] = [", points.size(0), ", ", points.size(1), "], got ", shape_str(*valid));
    check_same_device(points, *valid, "points", "valid");
    valid_c = valid->contiguous();
  }
  if (max_distance.has_value()) {
    TORCH_CHECK_VALUE(*max_distance >= 0, "max_distance must be >= 0, got ", *max_distance);
  }
  return valid_c;
}

// The backward's grad_planes [B, 3, C, H, W] (dtype by the backend's rule: `cuda` adds 16-bit), index
// [B, 3, H, W] int64 on the same device, num_points >= 0.
inline void check_backward_inputs(const at::Tensor& grad_planes, const at::Tensor& index, int64_t num_points,
                                  bool cuda) {
  check_dim(grad_planes, 5, "grad_planes", "[B, 3, C, H, W]");
  TORCH_CHECK_VALUE(grad_planes.size(1) == 3, "grad_planes must be [B, 3, C, H, W], got ", shape_str(grad_planes));
  check_dim(index, 4, "index", "[B, 3, H, W]");
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, "index must be int64, got ", dtype_str(index.scalar_type()));
  TORCH_CHECK_VALUE(index.size(0) == grad_planes.size(0) && index.size(1) == 3 &&
                        index.size(2) == grad_planes.size(3) && index.size(3) == grad_planes.size(4),
                    "index must be [B, 3, H, W] matching grad_planes ", shape_str(grad_planes), ", got ",
                    shape_str(index));
  if (cuda) {
    const auto dt = grad_planes.scalar_type();
    TORCH_CHECK_TYPE(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble,
                     "grad_planes must be float16, bfloat16, float32 or float64 for the native CUDA kernels, got ",
                     dtype_str(dt));
  } else {
    check_float(grad_planes, "grad_planes");
  }
  check_same_device(grad_planes, index, "grad_planes", "index");
  TORCH_CHECK_VALUE(num_points >= 0, "num_points must be >= 0, got ", num_points);
}

}  // namespace raster
}  // namespace oneshot
