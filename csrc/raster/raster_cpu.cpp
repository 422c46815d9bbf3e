// CPU kernels of oneshot::rasterize_points and its backward.
//
// Exact nearest point per cell without testing every point against every cell. Per plane:
//  1. The valid points are projected and exact duplicates dropped (a duplicate can never beat the lowest index
//     at its position); the rest stay in ascending index order.
//  2. Regions of cells are split in two recursively; at each region Q the candidates are filtered against a
//     witness w (the candidate whose farthest corner of Q is nearest). A candidate s is dropped when
//         (1 - eps) |x - s|^2 - tiny > (1 + eps) |x - w|^2 + tiny   at the four corners x of Q.
//     The left side minus the right is concave in x, so it then holds at every cell of Q; eps bounds the
//     relative error of the pinned (rounded) d^2 against the exact one and tiny its absolute error near
//     underflow, so s is strictly farther than w *in the pinned arithmetic too*: it can neither win nor tie.
//     What survives is the points whose Voronoi cells (against w) reach Q: a handful, even for regions far from
//     every point, where a distance-band filter would keep a whole lens of the cloud's boundary.
//  3. Small regions are settled by brute force in the pinned arithmetic of raster.h over candidates in
//     ascending index order, so the smallest d^2 wins and ties go to the lowest index, exactly.
// Tiles of kTile x kTile cells (with their filtered candidates) are the parallel work units.
//
// The gather reads each cell's feature row once and streams it into the channel planes. The backward
// scatter-add runs channel-major (into [B, C, N], then transposed): parallel over (batch, channel), walking
// the cells in order, so it is race-free and bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/cpu_buffers.h"
#include "common/cpu_math.h"
#include "raster/raster.h"
#include "raster/raster_args.h"

namespace oneshot {
namespace {

constexpr int64_t kTile = 32;       // parallel work unit: a tile of kTile x kTile cells of one plane
constexpr int64_t kLeafWork = 16384;  // brute-force a region once candidates x cells is this small

template <typename T>
struct Slack;
// eps: relative slack of the filter. The pinned d^2 and the filter's own d^2 (both in T) each err by at most
// ~4 ulp relative, so eps >= 8 ulp keeps pruning sound; 16 ulp leaves a margin. tiny: far above the absolute
// error near underflow.
template <>
struct Slack<float> {
  static constexpr float eps = 1.0f / (1 << 20);
  static constexpr float tiny = 1e-36f;
};
template <>
struct Slack<double> {
  static constexpr double eps = 1.0 / (1LL << 48);
  static constexpr double tiny = 1e-290;
};

// Candidate points of a region, structure-of-arrays so the filter loops vectorise. `pos` indexes the plane's
// projected points and is ascending.
template <typename T>
struct Cands {
  std::vector<T> a, b;
  std::vector<int32_t> pos;
  int64_t size() const { return static_cast<int64_t>(pos.size()); }
  void resize(int64_t n) {
    a.resize(n);
    b.resize(n);
    pos.resize(n);
  }
};

// A tile of cells [i0, i1) x [j0, j1) of plane bp, with its filtered candidates.
template <typename T>
struct Tile {
  int64_t bp, i0, i1, j0, j1;
  Cands<T> cand;
};

// The filter's arithmetic, vectorised (T arithmetic; see Slack for why that is sound).
template <typename T>
ONESHOT_CPU_MULTIVERSION void farthest_corner(const T* __restrict__ a, const T* __restrict__ b, int64_t k, T x0, T x1,
                                              T y0, T y1, T* __restrict__ far) {
  for (int64_t c = 0; c < k; ++c) {
    const T dx0 = (x0 - a[c]) * (x0 - a[c]), dx1 = (x1 - a[c]) * (x1 - a[c]);
    const T dy0 = (y0 - b[c]) * (y0 - b[c]), dy1 = (y1 - b[c]) * (y1 - b[c]);
    far[c] = (dx0 > dx1 ? dx0 : dx1) + (dy0 > dy1 ? dy0 : dy1);
  }
}

template <typename T>
ONESHOT_CPU_MULTIVERSION void survivors(const T* __restrict__ a, const T* __restrict__ b, int64_t k, T x0, T x1, T y0,
                                        T y1, const T* wg, bool has_max, T max_bound, uint8_t* __restrict__ keep) {
  const T lo = T(1) - Slack<T>::eps;
  const T w00 = wg[0], w10 = wg[1], w01 = wg[2], w11 = wg[3];
  for (int64_t c = 0; c < k; ++c) {
    const T ex0 = x0 - a[c], ex1 = x1 - a[c], ey0 = y0 - b[c], ey1 = y1 - b[c];
    const T dx0 = ex0 * ex0, dx1 = ex1 * ex1, dy0 = ey0 * ey0, dy1 = ey1 * ey1;
    bool dominated = ((dx0 + dy0) * lo > w00) & ((dx1 + dy0) * lo > w10) & ((dx0 + dy1) * lo > w01) &
                     ((dx1 + dy1) * lo > w11);
    // Beyond max_distance of the whole region: can never fill a cell.
    const T mx = a[c] < x0 ? dx0 : (a[c] > x1 ? dx1 : T(0));
    const T my = b[c] < y0 ? dy0 : (b[c] > y1 ? dy1 : T(0));
    dominated = dominated | (has_max & ((mx + my) * lo > max_bound));
    keep[c] = static_cast<uint8_t>(!dominated);
  }
}

template <typename T>
struct Solver {
  const T* U;  // [W] cell centres along x
  const T* V;  // [H] cell centres along y
  int64_t W;
  T max_d2;  // pinned max_distance^2 (+inf without)
  bool has_max;
  const int64_t* ids;                     // [n] original point index of each projected point
  int64_t* index;                         // [H, W] output of this plane
  std::vector<Cands<T>> bufs;             // candidates, one list per recursion depth
  std::vector<T> far, best;               // scratch
  std::vector<uint8_t> keep;
  std::vector<int32_t> arg;

  // Keep the candidates of `in` that may be nearest to some cell of [i0, i1) x [j0, j1).
  void filter(int64_t i0, int64_t i1, int64_t j0, int64_t j1, const Cands<T>& in, Cands<T>& out) {
    const int64_t k = in.size();
    const T x0 = U[j0], x1 = U[j1 - 1], y0 = V[i0], y1 = V[i1 - 1];
    far.resize(k);
    keep.resize(k);
    farthest_corner<T>(in.a.data(), in.b.data(), k, x0, x1, y0, y1, far.data());
    const int64_t w = std::min_element(far.begin(), far.end()) - far.begin();  // the witness
    const T hi = T(1) + Slack<T>::eps, tiny2 = T(2) * Slack<T>::tiny;
    T wg[4];
    for (int q = 0; q < 4; ++q) {
      const T ex = ((q & 1) ? x1 : x0) - in.a[w], ey = ((q & 2) ? y1 : y0) - in.b[w];
      wg[q] = (ex * ex + ey * ey) * hi + tiny2;
    }
    survivors<T>(in.a.data(), in.b.data(), k, x0, x1, y0, y1, wg, has_max, max_d2 * hi + tiny2, keep.data());
    out.resize(k);
    int64_t n = 0;
    for (int64_t c = 0; c < k; ++c) {  // branch-free, order-preserving compaction
      out.a[n] = in.a[c];
      out.b[n] = in.b[c];
      out.pos[n] = in.pos[c];
      n += keep[c];
    }
    out.resize(n);
  }

  void fill_empty(int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t i = i0; i < i1; ++i) std::fill(index + i * W + j0, index + i * W + j1, int64_t(-1));
  }

  // Settle every cell of the region: per row, candidates in ascending index order update a running minimum
  // per cell (vectorised across the row); strict < keeps the earliest on ties.
  void brute_force(int64_t i0, int64_t i1, int64_t j0, int64_t j1, const Cands<T>& c) {
    const int64_t cols = j1 - j0;
    best.resize(cols);
    arg.resize(cols);
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(best.begin(), best.end(), std::numeric_limits<T>::infinity());
      std::fill(arg.begin(), arg.end(), int32_t(-1));
      row_min(V[i], U + j0, cols, c.a.data(), c.b.data(), c.pos.data(), c.size(), best.data(), arg.data());
      int64_t* out = index + i * W + j0;
      for (int64_t j = 0; j < cols; ++j) {
        out[j] = (arg[j] < 0 || raster::cell_is_empty(best[j], max_d2)) ? -1 : ids[arg[j]];
      }
    }
  }

  static ONESHOT_CPU_MULTIVERSION void row_min(T v, const T* __restrict__ u, int64_t cols, const T* A, const T* Bc,
                                               const int32_t* pos, int64_t k, T* __restrict__ best,
                                               int32_t* __restrict__ arg) {
    for (int64_t c = 0; c < k; ++c) {
      const T dv2 = raster::sq<T>(v - Bc[c]);
      const T a = A[c];
      const int32_t p = pos[c];
      for (int64_t j = 0; j < cols; ++j) {
        const T d2 = raster::add_rn<T>(raster::sq<T>(u[j] - a), dv2);
        const bool better = d2 < best[j];
        best[j] = better ? d2 : best[j];
        arg[j] = better ? p : arg[j];
      }
    }
  }

  // Solve region [i0, i1) x [j0, j1) whose candidates are bufs[depth].
  void solve(int depth, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    if (bufs[depth].size() == 0) {
      fill_empty(i0, i1, j0, j1);
      return;
    }
    if (static_cast<int>(bufs.size()) <= depth + 1) bufs.resize(depth + 2);
    filter(i0, i1, j0, j1, bufs[depth], bufs[depth + 1]);
    const int64_t kk = bufs[depth + 1].size();
    const int64_t rows = i1 - i0, cols = j1 - j0, ncell = rows * cols;
    if (kk == 0) {
      fill_empty(i0, i1, j0, j1);
    } else if (ncell <= 4 || kk * ncell <= kLeafWork) {
      brute_force(i0, i1, j0, j1, bufs[depth + 1]);
    } else if (rows >= cols) {
      const int64_t im = i0 + rows / 2;
      solve(depth + 1, i0, im, j0, j1);
      solve(depth + 1, im, i1, j0, j1);
    } else {
      const int64_t jm = j0 + cols / 2;
      solve(depth + 1, i0, i1, j0, jm);
      solve(depth + 1, i0, i1, jm, j1);
    }
  }

  // Split [i0, i1) x [j0, j1) (candidates `cand`) down to tiles, filtering on the way; append them to `out`.
  void split_tiles(int64_t bp, int64_t i0, int64_t i1, int64_t j0, int64_t j1, Cands<T> cand,
                   std::vector<Tile<T>>& out) {
    if (cand.size() > 0) {
      Cands<T> kept;
      filter(i0, i1, j0, j1, cand, kept);
      cand = std::move(kept);
    }
    const int64_t rows = i1 - i0, cols = j1 - j0;
    if ((rows <= kTile && cols <= kTile) || cand.size() == 0) {
      out.push_back(Tile<T>{bp, i0, i1, j0, j1, std::move(cand)});
    } else if (rows >= cols) {
      const int64_t im = i0 + rows / 2;
      split_tiles(bp, i0, im, j0, j1, cand, out);
      split_tiles(bp, im, i1, j0, j1, std::move(cand), out);
    } else {
      const int64_t jm = j0 + cols / 2;
      split_tiles(bp, i0, i1, j0, jm, cand, out);
      split_tiles(bp, i0, i1, jm, j1, std::move(cand), out);
    }
  }
};

struct Args {
  int64_t B, N, C, H, W;
  int64_t ax[3][2];
};

// Project the valid points of one plane, dropping NaNs and exact duplicates (keeping the lowest index):
// fills `cand` (positions 0..n-1 in index order) and ids[0..n).
template <typename T>
void project_plane(const Args& g, const T* points, const bool* valid, T scale, int64_t b, int p, Cands<T>& cand,
                   int64_t* ids) {
  const int64_t N = g.N;
  cand.resize(N);
  int64_t cap = 16;
  while (cap < 2 * N) cap <<= 1;
  std::vector<int32_t> slot(cap, -1);  // open addressing on the bit patterns of (a, b)
  int64_t n = 0;
  for (int64_t s = 0; s < N; ++s) {
    if (valid && !valid[b * N + s]) continue;
    const T* pt = points + (b * N + s) * 3;
    const T a = pt[g.ax[p][0]] * scale, c = pt[g.ax[p][1]] * scale;
    if (a != a || c != c) continue;  // NaN: never nearest
    const double da = a, dc = c;
    uint64_t ua, uc;
    std::memcpy(&ua, &da, 8);
    std::memcpy(&uc, &dc, 8);
    const uint64_t h = (ua * 0x9E3779B97F4A7C15ull) ^ (uc * 0xC2B2AE3D27D4EB4Full);
    bool dup = false;
    for (int64_t q = static_cast<int64_t>(h >> 33) & (cap - 1);; q = (q + 1) & (cap - 1)) {
      if (slot[q] < 0) {
        slot[q] = static_cast<int32_t>(n);
        break;
      }
      if (cand.a[slot[q]] == a && cand.b[slot[q]] == c) {
        dup = true;  // same position as an earlier, lower-index point: it can never be chosen
        break;
      }
    }
    if (dup) continue;
    cand.a[n] = a;
    cand.b[n] = c;
    cand.pos[n] = static_cast<int32_t>(n);
    ids[n] = s;
    ++n;
  }
  cand.resize(n);
}

template <typename T>
void nearest_kernel(const Args& g, const T* points, const bool* valid, T scale, bool align_corners,
                    std::optional<double> max_distance, int64_t* index) {
  const int64_t B = g.B, H = g.H, W = g.W, N = g.N;
  std::vector<T> U(W), V(H);
  for (int64_t j = 0; j < W; ++j) U[j] = raster::cell_centre<T>(j, W, align_corners);
  for (int64_t i = 0; i < H; ++i) V[i] = raster::cell_centre<T>(i, H, align_corners);
  const T max_d2 = max_distance ? static_cast<T>(*max_distance * *max_distance) : std::numeric_limits<T>::infinity();
  std::vector<int64_t> ids(B * 3 * N);

  auto make_solver = [&](int64_t bp) {
    Solver<T> s;
    s.U = U.data();
    s.V = V.data();
    s.W = W;
    s.max_d2 = max_d2;
    s.has_max = max_distance.has_value();
    s.ids = ids.data() + bp * N;
    s.index = index + bp * H * W;
    return s;
  };
  // Per (batch, plane): projection, de-duplication, and the top-level split into tiles.
  std::vector<std::vector<Tile<T>>> tiles(B * 3);
  at::parallel_for(0, B * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      Cands<T> all;
      project_plane<T>(g, points, valid, scale, bp / 3, static_cast<int>(bp % 3), all, ids.data() + bp * N);
      make_solver(bp).split_tiles(bp, 0, H, 0, W, std::move(all), tiles[bp]);
    }
  });
  std::vector<Tile<T>*> work;
  for (auto& v : tiles) {
    for (auto& t : v) work.push_back(&t);
  }
  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      Tile<T>& t = *work[u];
      Solver<T> solver = make_solver(t.bp);
      solver.bufs.resize(1);
      solver.bufs[0] = std::move(t.cand);
      solver.solve(0, t.i0, t.i1, t.j0, t.j1);
    }
  });
}

// planes[b, p, c, cell] = features[b, index[b, p, cell], c] (0 where empty), as a blocked transpose: for a
// tile of kTileCells cells x kTileChannels channels, each cell's slice of its feature row is read once into a
// small buffer, which is then written out as kTileChannels sequential runs. Parallel over (batch, plane, cells).
constexpr int64_t kTileCells = 64, kTileChannels = 16;

template <typename T>
ONESHOT_CPU_MULTIVERSION void gather_tile(const T* feat, int64_t C, const int64_t* idx, int64_t k0, int64_t k1,
                                          int64_t HW, T* planes) {
  T buf[kTileChannels][kTileCells];
  const int64_t n = k1 - k0;
  for (int64_t c0 = 0; c0 < C; c0 += kTileChannels) {
    const int64_t nc = std::min(kTileChannels, C - c0);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = idx[k0 + j];
      if (i < 0) {
        for (int64_t l = 0; l < nc; ++l) buf[l][j] = T(0);
      } else {
        const T* src = feat + i * C + c0;
        for (int64_t l = 0; l < nc; ++l) buf[l][j] = src[l];
      }
    }
    for (int64_t l = 0; l < nc; ++l) std::memcpy(planes + (c0 + l) * HW + k0, buf[l], sizeof(T) * n);
  }
}

template <typename T>
void gather_kernel(int64_t B, int64_t N, int64_t C, int64_t HW, const T* features, const int64_t* index, T* planes) {
  const int64_t tiles = (HW + kTileCells - 1) / kTileCells;
  at::parallel_for(0, B * 3 * tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bp = u / tiles, k = u % tiles, b = bp / 3;
      gather_tile<T>(features + b * N * C, C, index + bp * HW, k * kTileCells, std::min(HW, (k + 1) * kTileCells), HW,
                     planes + bp * C * HW);
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
  const at::Tensor valid_c =
      raster::check_inputs(points, features, height, width, box_warp, axes, valid, max_distance, /*cuda=*/false);
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
  at::Tensor planes = cpu::empty_large({g.B, 3, g.C, g.H, g.W}, features.options());
  if (g.B == 0) return {planes, index};
  const at::Tensor pts = points.contiguous();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "rasterize_points_cpu", [&] {
    nearest_kernel<scalar_t>(g, pts.const_data_ptr<scalar_t>(), valid_c.defined() ? valid_c.const_data_ptr<bool>() : nullptr,
                             static_cast<scalar_t>(2.0 / box_warp), align_corners, max_distance,
                             index.mutable_data_ptr<int64_t>());
    if (g.C > 0) {
      const at::Tensor feat = features.contiguous();  // [B, N, C]
      gather_kernel<scalar_t>(g.B, g.N, g.C, g.H * g.W, feat.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(),
                              planes.mutable_data_ptr<scalar_t>());
    }
  });
  return {planes, index};
}

at::Tensor rasterize_points_backward_cpu(const at::Tensor& grad_planes, const at::Tensor& index, int64_t num_points) {
  raster::check_backward_inputs(grad_planes, index, num_points, /*cuda=*/false);
  const int64_t B = grad_planes.size(0), C = grad_planes.size(2), H = grad_planes.size(3), W = grad_planes.size(4);
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
