// CPU kernels of oneshot::rasterize_points and its backward.
//
// Exact nearest point per cell without testing every point against every cell: a region of cells is
// split in two recursively, and at each level the candidate points are filtered by a conservative bound.
// For a region Q (the bounding box of its cell centres), no cell of Q can be closer to point s than
// mind(s, Q), and every cell of Q is within maxd(s', Q) of point s'. A point s with
//     mind(s, Q)^2 (1 - eps) - tiny > min_s' maxd(s', Q)^2 (1 + eps) + tiny
// is farther than s' from every cell of Q *in the pinned arithmetic too* (eps bounds the relative error of
// the rounded d^2 against the exact one, tiny its absolute error near underflow), so it can neither win nor
// tie. Small regions (or few candidates) are settled by brute force in the pinned arithmetic of raster.h,
// over candidates kept in ascending index order, so the lowest-index tie rule holds exactly.
// Empty space costs little: a far region keeps only the points near its nearest boundary of the cloud.
//
// Gather and backward run channel-major (features transposed to [B, C, N]) so each channel's source row
// stays in cache; the backward scatter-add is parallel over (batch, channel) and walks the cells in order,
// so it is race-free and bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "raster/raster.h"

namespace oneshot {
namespace {

constexpr int64_t kTile = 64;  // top-level work unit: a tile of kTile x kTile cells of one plane

template <typename T>
struct Slack;
template <>
struct Slack<float> {
  static constexpr double eps = 1.0 / (1 << 20);  // >= 8 ulp of float32: the pinned d^2 errs by < 5 ulp
  static constexpr double tiny = 1e-36;           // far above float32 underflow error (~1e-45)
};
template <>
struct Slack<double> {
  static constexpr double eps = 1.0 / (1LL << 48);
  static constexpr double tiny = 1e-290;
};

// One plane of one batch element: the valid points' projections, in ascending point index.
template <typename T>
struct PlanePoints {
  const T* a;          // [n] first coordinate (grid x, along W)
  const T* b;          // [n] second coordinate (grid y, along H)
  const int64_t* id;   // [n] original point index
  int64_t n;
};

template <typename T>
struct Solver {
  PlanePoints<T> pts;
  const T* U;  // [W] cell centres along x
  const T* V;  // [H] cell centres along y
  int64_t W;
  T max_d2;          // pinned max_distance^2 (+inf without)
  bool has_max;
  int64_t* index;    // [H, W] output for this plane
  std::vector<std::vector<int32_t>> bufs;  // candidate lists, one per recursion depth
  std::vector<T> dv2;                      // leaf scratch

  void fill_empty(int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = j0; j < j1; ++j) index[i * W + j] = -1;
  }

  void brute_force(int64_t i0, int64_t i1, int64_t j0, int64_t j1, const int32_t* cand, int64_t k) {
    dv2.resize(k);
    for (int64_t i = i0; i < i1; ++i) {
      const T v = V[i];
      for (int64_t c = 0; c < k; ++c) dv2[c] = raster::sq<T>(v - pts.b[cand[c]]);
      for (int64_t j = j0; j < j1; ++j) {
        const T u = U[j];
        T best = std::numeric_limits<T>::infinity();
        int64_t best_c = -1;
        for (int64_t c = 0; c < k; ++c) {
          const T d2 = raster::add_rn<T>(raster::sq<T>(u - pts.a[cand[c]]), dv2[c]);
          if (d2 < best) {  // strict: the earliest (lowest index) candidate keeps a tie
            best = d2;
            best_c = c;
          }
        }
        index[i * W + j] = (best_c < 0 || raster::cell_is_empty(best, max_d2)) ? -1 : pts.id[cand[best_c]];
      }
    }
  }

  void solve(int depth, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const int32_t* cand, int64_t k) {
    if (k == 0) {
      fill_empty(i0, i1, j0, j1);
      return;
    }
    const double ulo = U[j0], uhi = U[j1 - 1], vlo = V[i0], vhi = V[i1 - 1];
    // Upper bound on every cell's nearest squared distance: the best point's farthest corner.
    double bound = std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < k; ++c) {
      const double a = pts.a[cand[c]], b = pts.b[cand[c]];
      const double dx = std::max(std::abs(a - ulo), std::abs(a - uhi));
      const double dy = std::max(std::abs(b - vlo), std::abs(b - vhi));
      bound = std::min(bound, dx * dx + dy * dy);
    }
    double thr = bound * (1.0 + Slack<T>::eps) + Slack<T>::tiny;
    if (has_max) thr = std::min(thr, static_cast<double>(max_d2) * (1.0 + Slack<T>::eps) + Slack<T>::tiny);
    if (static_cast<int>(bufs.size()) <= depth + 1) bufs.resize(depth + 2);
    std::vector<int32_t>& next = bufs[depth + 1];
    next.resize(k);
    int64_t kk = 0;
    for (int64_t c = 0; c < k; ++c) {
      const double a = pts.a[cand[c]], b = pts.b[cand[c]];
      const double dx = a < ulo ? ulo - a : (a > uhi ? a - uhi : 0.0);
      const double dy = b < vlo ? vlo - b : (b > vhi ? b - vhi : 0.0);
      const double lower = (dx * dx + dy * dy) * (1.0 - Slack<T>::eps) - Slack<T>::tiny;
      if (!(lower > thr)) next[kk++] = cand[c];  // keeps NaN-free points that might win; order preserved
    }
    const int64_t rows = i1 - i0, cols = j1 - j0, ncell = rows * cols;
    if (kk == 0) {
      fill_empty(i0, i1, j0, j1);
    } else if (ncell <= 4 || kk * ncell <= 256) {
      brute_force(i0, i1, j0, j1, next.data(), kk);
    } else if (rows >= cols) {
      const int64_t im = i0 + rows / 2;
      // `next` may be reallocated by deeper levels only at other depths: bufs[depth + 1] is stable here,
      // but bufs itself may grow, so take the pointer again after each call.
      solve(depth + 1, i0, im, j0, j1, bufs[depth + 1].data(), kk);
      solve(depth + 1, im, i1, j0, j1, bufs[depth + 1].data(), kk);
    } else {
      const int64_t jm = j0 + cols / 2;
      solve(depth + 1, i0, i1, j0, jm, bufs[depth + 1].data(), kk);
      solve(depth + 1, i0, i1, jm, j1, bufs[depth + 1].data(), kk);
    }
  }
};

struct Args {
  int64_t B, N, C, H, W;
  int64_t ax[3][2];
};

template <typename T>
void nearest_kernel(const Args& g, const T* points, const bool* valid, T scale, bool align_corners,
                    std::optional<double> max_distance, int64_t* index) {
  const int64_t B = g.B, N = g.N, H = g.H, W = g.W;
  std::vector<T> U(W), V(H);
  for (int64_t j = 0; j < W; ++j) U[j] = raster::cell_centre<T>(j, W, align_corners);
  for (int64_t i = 0; i < H; ++i) V[i] = raster::cell_centre<T>(i, H, align_corners);
  const T max_d2 = max_distance ? static_cast<T>(*max_distance * *max_distance) : std::numeric_limits<T>::infinity();

  // Per (batch, plane): compacted projections of the valid points, in index order.
  std::vector<T> A(B * 3 * N), Bc(B * 3 * N);
  std::vector<int64_t> ids(B * 3 * N);
  std::vector<int64_t> counts(B * 3);
  at::parallel_for(0, B * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / 3, p = bp % 3;
      int64_t n = 0;
      for (int64_t s = 0; s < N; ++s) {
        if (valid && !valid[b * N + s]) continue;
        const T* pt = points + (b * N + s) * 3;
        A[bp * N + n] = pt[g.ax[p][0]] * scale;
        Bc[bp * N + n] = pt[g.ax[p][1]] * scale;
        ids[bp * N + n] = s;
        ++n;
      }
      counts[bp] = n;
    }
  });

  const int64_t tiles_y = (H + kTile - 1) / kTile, tiles_x = (W + kTile - 1) / kTile;
  const int64_t tiles = tiles_y * tiles_x;
  at::parallel_for(0, B * 3 * tiles, 1, [&](int64_t begin, int64_t end) {
    Solver<T> solver;
    solver.U = U.data();
    solver.V = V.data();
    solver.W = W;
    solver.max_d2 = max_d2;
    solver.has_max = max_distance.has_value();
    std::vector<int32_t> all;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bp = task / tiles, tile = task % tiles;
      const int64_t i0 = (tile / tiles_x) * kTile, j0 = (tile % tiles_x) * kTile;
      const int64_t i1 = std::min(H, i0 + kTile), j1 = std::min(W, j0 + kTile);
      solver.pts = PlanePoints<T>{A.data() + bp * N, Bc.data() + bp * N, ids.data() + bp * N, counts[bp]};
      solver.index = index + bp * H * W;
      all.resize(counts[bp]);
      for (int64_t s = 0; s < counts[bp]; ++s) all[s] = static_cast<int32_t>(s);
      solver.solve(0, i0, i1, j0, j1, all.data(), counts[bp]);
    }
  });
}

template <typename T>
void gather_kernel(int64_t B, int64_t N, int64_t C, int64_t HW, const T* feat_t, const int64_t* index, T* planes) {
  at::parallel_for(0, B * 3 * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t c = u % C, bp = u / C, b = bp / 3;
      const T* src = feat_t + (b * C + c) * N;
      const int64_t* idx = index + bp * HW;
      T* dst = planes + u * HW;
      for (int64_t cell = 0; cell < HW; ++cell) dst[cell] = idx[cell] >= 0 ? src[idx[cell]] : T(0);
    }
  });
}

template <typename T>
void scatter_kernel(int64_t B, int64_t N, int64_t C, int64_t HW, const T* grad_planes, const int64_t* index,
                    T* grad_t) {
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / C, c = u % C;
      T* dst = grad_t + u * N;
      for (int p = 0; p < 3; ++p) {
        const int64_t* idx = index + (b * 3 + p) * HW;
        const T* src = grad_planes + ((b * 3 + p) * C + c) * HW;
        for (int64_t cell = 0; cell < HW; ++cell) {
          if (idx[cell] >= 0) dst[idx[cell]] += src[cell];
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rasterize_points_cpu(const at::Tensor& points, const at::Tensor& features,
                                                        int64_t height, int64_t width, double box_warp,
                                                        at::IntArrayRef axes, const std::optional<at::Tensor>& valid,
                                                        std::optional<double> max_distance, bool align_corners) {
  check_dim(points, 3, "points", "[B, N, 3]");
  TORCH_CHECK_VALUE(points.size(2) == 3, "points must be [B, N, 3], got ", shape_str(points));
  check_dim(features, 3, "features", "[B, N, C]");
  TORCH_CHECK_VALUE(features.size(0) == points.size(0) && features.size(1) == points.size(1),
                    "features must be [B, N, C] with B, N of points ", shape_str(points), ", got ",
                    shape_str(features));
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "resolution must be >= 1, got (", height, ", ", width, ")");
  TORCH_CHECK_VALUE(box_warp > 0, "box_warp must be > 0, got ", box_warp);
  check_float(points, "points");
  check_same_dtype(points, features, "points", "features");
  check_same_device(points, features, "points", "features");
  check_axes(axes);
  TORCH_CHECK_VALUE(points.size(1) < (int64_t(1) << 31), "rasterize_points supports N < 2^31 points, got ",
                    points.size(1));
  at::Tensor valid_c;
  if (valid.has_value() && valid->defined()) {
    TORCH_CHECK_TYPE(valid->scalar_type() == at::kBool, "valid must be a bool tensor, got ", valid->scalar_type());
    TORCH_CHECK_VALUE(valid->dim() == 2 && valid->size(0) == points.size(0) && valid->size(1) == points.size(1),
                      "valid must be [B, N] = [", points.size(0), ", ", points.size(1), "], got ", shape_str(*valid));
    check_same_device(points, *valid, "points", "valid");
    valid_c = valid->contiguous();
  }
  if (max_distance.has_value()) {
    TORCH_CHECK_VALUE(*max_distance >= 0, "max_distance must be >= 0, got ", *max_distance);
  }
  Args g;
  g.B = points.size(0);
  g.N = points.size(1);
  g.C = features.size(2);
  g.H = height;
  g.W = width;
  for (int p = 0; p < 3; ++p) {
    g.ax[p][0] = axes[2 * p];
    g.ax[p][1] = axes[2 * p + 1];
  }
  at::Tensor index = at::empty({g.B, 3, g.H, g.W}, points.options().dtype(at::kLong));
  at::Tensor planes = at::empty({g.B, 3, g.C, g.H, g.W}, features.options());
  if (g.B == 0) return {planes, index};
  const at::Tensor pts = points.contiguous();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "rasterize_points_cpu", [&] {
    nearest_kernel<scalar_t>(g, pts.const_data_ptr<scalar_t>(), valid_c.defined() ? valid_c.const_data_ptr<bool>() : nullptr,
                             static_cast<scalar_t>(2.0 / box_warp), align_corners, max_distance,
                             index.mutable_data_ptr<int64_t>());
    if (g.C > 0) {
      const at::Tensor feat_t = features.transpose(1, 2).contiguous();  // [B, C, N]
      gather_kernel<scalar_t>(g.B, g.N, g.C, g.H * g.W, feat_t.const_data_ptr<scalar_t>(),
                              index.const_data_ptr<int64_t>(), planes.mutable_data_ptr<scalar_t>());
    }
  });
  return {planes, index};
}

at::Tensor rasterize_points_backward_cpu(const at::Tensor& grad_planes, const at::Tensor& index, int64_t num_points) {
  check_dim(grad_planes, 5, "grad_planes", "[B, 3, C, H, W]");
  check_dim(index, 4, "index", "[B, 3, H, W]");
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, "index must be int64, got ", index.scalar_type());
  const int64_t B = grad_planes.size(0), C = grad_planes.size(2), H = grad_planes.size(3), W = grad_planes.size(4);
  TORCH_CHECK_VALUE(index.size(0) == B && index.size(1) == 3 && index.size(2) == H && index.size(3) == W,
                    "index must be [B, 3, H, W] matching grad_planes ", shape_str(grad_planes), ", got ",
                    shape_str(index));
  check_float(grad_planes, "grad_planes");
  at::Tensor grad_t = at::zeros({B, C, num_points}, grad_planes.options());
  if (grad_t.numel() > 0) {
    const at::Tensor gp = grad_planes.contiguous(), idx = index.contiguous();
    AT_DISPATCH_FLOATING_TYPES(grad_planes.scalar_type(), "rasterize_points_backward_cpu", [&] {
      scatter_kernel<scalar_t>(B, num_points, C, H * W, gp.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                               grad_t.mutable_data_ptr<scalar_t>());
    });
  }
  return grad_t.transpose(1, 2).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) {
  m.impl("rasterize_points", &rasterize_points_cpu);
  m.impl("rasterize_points_backward", &rasterize_points_backward_cpu);
}

}  // namespace oneshot
