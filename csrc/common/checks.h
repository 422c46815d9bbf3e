// Input checks for the C++ entry points (torch.ops.oneshot.* can be called directly, bypassing the Python
// checks in oneshot.ops). Every message names the argument, what was expected and what arrived.
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace oneshot {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

// A dtype as Python users write it (float32, not Float): torch's own name for it.
inline std::string dtype_str(at::ScalarType t) { return std::string(c10::getDtypeNames(t).first); }

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* expected) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must be ", expected, ", got ", shape_str(t));
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   " must be float32 or float64 for the native CPU kernels, got ", dtype_str(t.scalar_type()));
}

// CUDA dtypes: the "value" tensor (planes, colors, features) is float16, bfloat16, float32 or float64; the
// "geometry" tensors (points, densities, depths) are float32, or float64 with float64 values.
inline void check_cuda_dtypes(const at::Tensor& value, const char* value_name, const at::Tensor& geom,
                              const char* geom_name) {
  const auto v = value.scalar_type(), g = geom.scalar_type();
  TORCH_CHECK_TYPE(v == at::kHalf || v == at::kBFloat16 || v == at::kFloat || v == at::kDouble, value_name,
                   " must be float16, bfloat16, float32 or float64 for the native CUDA kernels, got ", dtype_str(v));
  const auto want = v == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(g == want, geom_name, " must be ", dtype_str(want), " when ", value_name, " is ", dtype_str(v),
                   ", got ", dtype_str(g));
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), name_b, " must have the dtype of ", name_a, " (",
                   dtype_str(a.scalar_type()), "), got ", dtype_str(b.scalar_type()));
}

// The dtype rule of a backend: CPU kernels take float32 or float64 for every floating input of a call; CUDA
// kernels also take 16-bit values with float32 geometry (check_cuda_dtypes).
inline void check_value_geometry_dtypes(const at::Tensor& value, const char* value_name, const at::Tensor& geom,
                                        const char* geom_name, bool cuda) {
  if (cuda) {
    check_cuda_dtypes(value, value_name, geom, geom_name);
    return;
  }
  check_float(value, value_name);
  check_same_dtype(value, geom, value_name, geom_name);
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), name_b, " must be on the device of ", name_a, " (", a.device(),
                    "), got ", b.device());
}

inline void check_axes(at::IntArrayRef axes) {
  TORCH_CHECK_VALUE(axes.size() == 6, "axes must hold 6 ints (3 planes x 2 coordinates), got ", axes.size());
  for (size_t i = 0; i < axes.size(); ++i) {
    TORCH_CHECK_VALUE(axes[i] >= 0 && axes[i] <= 2, "axes entries must be 0, 1 or 2, got ", axes);
    TORCH_CHECK_VALUE(i % 2 == 0 || axes[i] != axes[i - 1], "axes must pair two distinct coordinates per plane, got ",
                      axes);
  }
}

}  // namespace oneshot
