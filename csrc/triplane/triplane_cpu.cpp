// CPU kernels of oneshot::triplane_sample and its backward.
//
// Layout: the planes are copied once to channels-last [B, 3, H, W, C], so the C channels of one tap are
// contiguous and the inner loops are unit-stride over channels.
// Forward: parallel over points. Backward w.r.t. planes: parallel over (batch, plane, channel block), each
// block walks all points in order, so there are no data races and the result is bitwise reproducible for
// any thread count. Backward w.r.t. points: parallel over points.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/checks.h"
#include "triplane/triplane.h"

namespace oneshot {
namespace {

using triplane::Taps;

triplane::Reduce parse_reduce(const std::string& reduce) {
  if (reduce == "mean") return triplane::kMean;
  if (reduce == "sum") return triplane::kSum;
  TORCH_CHECK_VALUE(reduce == "none", "reduce must be 'mean', 'sum' or 'none', got '", reduce, "'");
  return triplane::kNone;
}

void check_inputs(const at::Tensor& planes, const at::Tensor& points, at::IntArrayRef axes) {
  check_dim(planes, 5, "planes", "[B, 3, C, H, W]");
  TORCH_CHECK_VALUE(planes.size(1) == 3, "planes must be [B, 3, C, H, W], got ", shape_str(planes));
  check_dim(points, 3, "points", "[B, M, 3]");
  TORCH_CHECK_VALUE(points.size(2) == 3, "points must be [B, M, 3], got ", shape_str(points));
  TORCH_CHECK_VALUE(points.size(0) == planes.size(0), "points must have the batch size of planes (",
                    planes.size(0), "), got ", points.size(0));
  check_float(planes, "planes");
  check_same_dtype(planes, points, "planes", "points");
  check_same_device(planes, points, "planes", "points");
  check_axes(axes);
}

template <typename T>
struct Geometry {
  int64_t B, M, C, H, W;
  T scale;          // 2 / box_warp, rounded to T
  int64_t ax[3][2];
};

template <typename T>
Geometry<T> geometry(const at::Tensor& planes, const at::Tensor& points, double box_warp, at::IntArrayRef axes) {
  Geometry<T> g;
  g.B = planes.size(0);
  g.C = planes.size(2);
  g.H = planes.size(3);
  g.W = planes.size(4);
  g.M = points.size(1);
  g.scale = static_cast<T>(2.0 / box_warp);
  for (int p = 0; p < 3; ++p) {
    g.ax[p][0] = axes[2 * p];
    g.ax[p][1] = axes[2 * p + 1];
  }
  return g;
}

template <typename T>
void forward_kernel(const Geometry<T>& g, const T* planes_cl, const T* points, T* out, triplane::Reduce reduce) {
  const int64_t C = g.C, H = g.H, W = g.W, M = g.M;
  at::parallel_for(0, g.B * M, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M, m = bm % M;
      const T* pt = points + bm * 3;
      const T c[3] = {pt[0] * g.scale, pt[1] * g.scale, pt[2] * g.scale};
      T* acc_base = reduce == triplane::kNone ? nullptr : out + bm * C;
      if (acc_base) {
        for (int64_t ch = 0; ch < C; ++ch) acc_base[ch] = T(0);
      }
      for (int p = 0; p < 3; ++p) {
        T* acc = acc_base ? acc_base : out + ((b * 3 + p) * M + m) * C;
        if (!acc_base) {
          for (int64_t ch = 0; ch < C; ++ch) acc[ch] = T(0);
        }
        const Taps<T> t = triplane::taps<T>(c[g.ax[p][0]], c[g.ax[p][1]], W, H);
        if (!t.any) continue;
        const T* plane = planes_cl + (b * 3 + p) * H * W * C;
        for (int k = 0; k < 4; ++k) {
          int64_t x, y;
          if (!triplane::tap_inside(t, k, W, H, &x, &y)) continue;
          const T w = triplane::tap_weight(t, k);
          const T* v = plane + (y * W + x) * C;
          for (int64_t ch = 0; ch < C; ++ch) acc[ch] += w * v[ch];
        }
      }
      if (reduce == triplane::kMean) {
        for (int64_t ch = 0; ch < C; ++ch) acc_base[ch] /= T(3);
      }
    }
  });
}

// grad_out for point (b, m) and plane p: a pointer to C values and the factor the reduction applies.
template <typename T>
inline const T* grad_row(const T* grad_out, int64_t b, int p, int64_t m, int64_t M, int64_t C,
                         triplane::Reduce reduce) {
  return reduce == triplane::kNone ? grad_out + ((b * 3 + p) * M + m) * C : grad_out + (b * M + m) * C;
}

template <typename T>
void backward_planes_kernel(const Geometry<T>& g, const T* grad_out, const T* points, T* grad_planes_cl,
                            triplane::Reduce reduce) {
  const int64_t C = g.C, H = g.H, W = g.W, M = g.M;
  const T factor = reduce == triplane::kMean ? T(1) / T(3) : T(1);
  // One work unit = (batch, plane, block of channels one cache line wide): units never share an output.
  const int64_t block = std::max<int64_t>(1, 64 / static_cast<int64_t>(sizeof(T)));
  const int64_t nblocks = (C + block - 1) / block;
  at::parallel_for(0, g.B * 3 * nblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t blk = unit % nblocks;
      const int p = static_cast<int>((unit / nblocks) % 3);
      const int64_t b = unit / (3 * nblocks);
      const int64_t c0 = blk * block, c1 = std::min(C, c0 + block);
      T* plane = grad_planes_cl + (b * 3 + p) * H * W * C;
      for (int64_t m = 0; m < M; ++m) {
        const T* pt = points + (b * M + m) * 3;
        const T cx = pt[g.ax[p][0]] * g.scale, cy = pt[g.ax[p][1]] * g.scale;
        const Taps<T> t = triplane::taps<T>(cx, cy, W, H);
        if (!t.any) continue;
        const T* go = grad_row(grad_out, b, p, m, M, C, reduce);
        for (int k = 0; k < 4; ++k) {
          int64_t x, y;
          if (!triplane::tap_inside(t, k, W, H, &x, &y)) continue;
          const T w = triplane::tap_weight(t, k) * factor;
          T* dst = plane + (y * W + x) * C;
          for (int64_t ch = c0; ch < c1; ++ch) dst[ch] += w * go[ch];
        }
      }
    }
  });
}

template <typename T>
void backward_points_kernel(const Geometry<T>& g, const T* grad_out, const T* planes_cl, const T* points,
                            T* grad_points, triplane::Reduce reduce) {
  const int64_t C = g.C, H = g.H, W = g.W, M = g.M;
  const T factor = reduce == triplane::kMean ? T(1) / T(3) : T(1);
  at::parallel_for(0, g.B * M, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M, m = bm % M;
      const T* pt = points + bm * 3;
      const T c[3] = {pt[0] * g.scale, pt[1] * g.scale, pt[2] * g.scale};
      T gc[3] = {T(0), T(0), T(0)};
      for (int p = 0; p < 3; ++p) {
        const Taps<T> t = triplane::taps<T>(c[g.ax[p][0]], c[g.ax[p][1]], W, H);
        if (!t.any) continue;
        const T* go = grad_row(grad_out, b, p, m, M, C, reduce);
        const T* plane = planes_cl + (b * 3 + p) * H * W * C;
        T gx = T(0), gy = T(0);
        for (int k = 0; k < 4; ++k) {
          int64_t x, y;
          if (!triplane::tap_inside(t, k, W, H, &x, &y)) continue;
          const T* v = plane + (y * W + x) * C;
          T dot = T(0);
          for (int64_t ch = 0; ch < C; ++ch) dot += go[ch] * v[ch];
          gx += triplane::tap_dweight_dx(t, k) * dot;
          gy += triplane::tap_dweight_dy(t, k) * dot;
        }
        // d(pixel)/d(c) = size / 2; d(c)/d(point) = scale.
        gc[g.ax[p][0]] += gx * factor * T(W) / T(2);
        gc[g.ax[p][1]] += gy * factor * T(H) / T(2);
      }
      for (int a = 0; a < 3; ++a) grad_points[bm * 3 + a] = gc[a] * g.scale;
    }
  });
}

at::Tensor triplane_sample_cpu(const at::Tensor& planes, const at::Tensor& points, double box_warp,
                               at::IntArrayRef axes, c10::string_view reduce_sv) {
  check_inputs(planes, points, axes);
  const auto reduce = parse_reduce(std::string(reduce_sv));
  const int64_t B = planes.size(0), C = planes.size(2), M = points.size(1);
  at::Tensor out = reduce == triplane::kNone ? at::empty({B, 3, M, C}, planes.options())
                                             : at::empty({B, M, C}, planes.options());
  if (out.numel() == 0) return out;
  const at::Tensor planes_cl = planes.permute({0, 1, 3, 4, 2}).contiguous();
  const at::Tensor pts = points.contiguous();
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_cpu", [&] {
    const auto g = geometry<scalar_t>(planes, points, box_warp, axes);
    forward_kernel<scalar_t>(g, planes_cl.const_data_ptr<scalar_t>(), pts.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>(), reduce);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_backward_cpu(const at::Tensor& grad_out, const at::Tensor& planes,
                                                                const at::Tensor& points, double box_warp,
                                                                at::IntArrayRef axes, c10::string_view reduce_sv,
                                                                bool planes_requires_grad,
                                                                bool points_requires_grad) {
  check_inputs(planes, points, axes);
  const auto reduce = parse_reduce(std::string(reduce_sv));
  check_same_dtype(planes, grad_out, "planes", "grad_out");
  const int64_t B = planes.size(0), C = planes.size(2), H = planes.size(3), W = planes.size(4);
  const int64_t M = points.size(1);
  const std::vector<int64_t> expected =
      reduce == triplane::kNone ? std::vector<int64_t>{B, 3, M, C} : std::vector<int64_t>{B, M, C};
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef(expected), "grad_out must be ", at::IntArrayRef(expected),
                    ", got ", shape_str(grad_out));
  at::Tensor grad_planes, grad_points;
  const at::Tensor go = grad_out.contiguous();
  const at::Tensor pts = points.contiguous();
  at::Tensor planes_cl;
  if (planes_requires_grad) {
    // Accumulate channels-last, then return in the layout of planes' logical shape.
    at::Tensor grad_cl = at::zeros({B, 3, H, W, C}, planes.options());
    if (grad_cl.numel() > 0 && M > 0) {
      AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_backward_planes_cpu", [&] {
        const auto g = geometry<scalar_t>(planes, points, box_warp, axes);
        backward_planes_kernel<scalar_t>(g, go.const_data_ptr<scalar_t>(), pts.const_data_ptr<scalar_t>(),
                                         grad_cl.mutable_data_ptr<scalar_t>(), reduce);
      });
    }
    grad_planes = grad_cl.permute({0, 1, 4, 2, 3}).contiguous();
  } else {
    grad_planes = at::zeros({0}, planes.options());
  }
  if (points_requires_grad) {
    grad_points = at::zeros({B, M, 3}, points.options());
    if (C > 0 && M > 0 && B > 0) {
      planes_cl = planes.permute({0, 1, 3, 4, 2}).contiguous();
      AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_backward_points_cpu", [&] {
        const auto g = geometry<scalar_t>(planes, points, box_warp, axes);
        backward_points_kernel<scalar_t>(g, go.const_data_ptr<scalar_t>(), planes_cl.const_data_ptr<scalar_t>(),
                                         pts.const_data_ptr<scalar_t>(), grad_points.mutable_data_ptr<scalar_t>(),
                                         reduce);
      });
    }
  } else {
    grad_points = at::zeros({0}, points.options());
  }
  return {grad_planes, grad_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) {
  m.impl("triplane_sample", &triplane_sample_cpu);
  m.impl("triplane_sample_backward", &triplane_sample_backward_cpu);
}

}  // namespace oneshot
