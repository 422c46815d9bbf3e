// Argument checks of oneshot::triplane_sample(_backward), shared by the CPU and CUDA entry points (which can be
// called directly, bypassing the Python checks in oneshot.ops).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "common/checks.h"
#include "triplane/triplane.h"

namespace oneshot {
namespace triplane {

inline Reduce parse_reduce(const std::string& reduce) {
  if (reduce == "mean") return kMean;
  if (reduce == "sum") return kSum;
  TORCH_CHECK_VALUE(reduce == "none", "reduce must be 'mean', 'sum' or 'none', got '", reduce, "'");
  return kNone;
}

// Shapes, devices, axes and dtypes (`cuda`: the CUDA rule, 16-bit planes with float32 points allowed).
inline void check_inputs(const at::Tensor& planes, const at::Tensor& points, at::IntArrayRef axes, double box_warp,
                         bool cuda) {
  check_dim(planes, 5, "planes", "[B, 3, C, H, W]");
  TORCH_CHECK_VALUE(planes.size(1) == 3, "planes must be [B, 3, C, H, W], got ", shape_str(planes));
  check_dim(points, 3, "points", "[B, M, 3]");
  TORCH_CHECK_VALUE(points.size(2) == 3, "points must be [B, M, 3], got ", shape_str(points));
  TORCH_CHECK_VALUE(points.size(0) == planes.size(0), "points must have the batch size of planes (",
                    planes.size(0), "), got ", points.size(0));
  TORCH_CHECK_VALUE(box_warp > 0, "box_warp must be > 0, got ", box_warp);
  check_value_geometry_dtypes(planes, "planes", points, "points", cuda);
  check_same_device(planes, points, "planes", "points");
  check_axes(axes);
}

// grad_out of the backward: [B, 3, M, C] (reduce = "none") or [B, M, C], in the planes' dtype and device.
inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& planes, const at::Tensor& points,
                           Reduce reduce) {
  const int64_t B = planes.size(0), C = planes.size(2), M = points.size(1);
  check_same_dtype(planes, grad_out, "planes", "grad_out");
  check_same_device(planes, grad_out, "planes", "grad_out");
  const std::vector<int64_t> expected = reduce == kNone ? std::vector<int64_t>{B, 3, M, C} : std::vector<int64_t>{B, M, C};
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(expected), "grad_out must be ", at::IntArrayRef(expected),
                    ", got ", shape_str(grad_out));
}

}  // namespace triplane
}  // namespace oneshot
