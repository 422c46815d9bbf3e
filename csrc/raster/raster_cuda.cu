// CUDA kernels of oneshot::rasterize_points and its backward.
//
// Nearest point per cell by tiled brute force, in the pinned arithmetic of raster.h, so the chosen index is
// bitwise the one of the CPU kernels:
//  - A block of 128 threads (a warp per row) owns a tile of 16 x 32 cells of one plane of one batch; each
//    thread owns 4 cells of one column, which share fl((u - a)^2): about 7 instructions per cell and point.
//  - The points are staged in shared memory kPointTile at a time as their projected pair (a, b) =
//    (c[axes[p][0]], c[axes[p][1]]), c = points * scale rounded in T exactly as on the CPU; invalid and NaN
//    points (and the padding of the last tile) become (+inf, +inf), whose d^2 = +inf never wins. The global
//    loads of the next tile are issued before the current one is searched, so their latency is hidden.
//  - Every thread walks the points in ascending index order and keeps the first strictly smaller d^2, so the
//    smallest d^2 wins and ties go to the lowest index; cell_is_empty then maps +inf / beyond max_distance to -1.
//  - When the cell tiles alone cannot fill the GPU (one batch at 128 x 128 is 96 tiles), the points are split
//    into S index ranges: each (tile, range) block writes its partial (d^2, index), and a merge kernel takes
//    the ranges in ascending order with the same strict <, which keeps both rules exact.
// No cells x points buffer is ever formed; the inner loop is shared-memory broadcasts and T registers only.
//
// The gather writes planes channel by channel with consecutive threads on consecutive cells (coalesced), each
// thread reading its cell's feature row. The backward scatter-adds through the index with float (double for
// float64) atomics, straight into the output for float32 / float64 and via a float buffer for float16 /
// bfloat16, four channels a float4 vector atomic where C allows (sm_90; scalar before); the summation order
// then varies run to run, which is reported to torch's deterministic mode.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "raster/raster.h"
#include "raster/raster_args.h"

namespace oneshot {
namespace {

using cuda::acc_t;

constexpr int kWarpCols = 32;                       // threads along a row of cells: one warp
constexpr int kWarps = 4;                           // warps per block, one row each
constexpr int kThreads = kWarpCols * kWarps;        // 128
constexpr int kCellsPerThread = 4;                  // cells per thread, one column, rows kWarps apart
constexpr int kTileRows = kWarps * kCellsPerThread;  // a block's cell tile: kTileRows x kTileCols
constexpr int kTileCols = kWarpCols;
constexpr int kPointTile = 256;                          // points staged in shared memory per step
constexpr int kPointsPerThread = kPointTile / kThreads;  // of them loaded by each thread
constexpr int64_t kMinSplitPoints = 1024;                // fewest points per range when splitting the points
constexpr int kBlocksPerSM = 8;                          // split the points until about this many blocks per SM
constexpr int kElemThreads = 256;                        // gather / merge / scatter blocks
constexpr int kChanChunk = 16;                           // channels per thread in the gather and the scatter

static_assert(kPointTile % kThreads == 0, "each thread stages whole points");

template <typename T>
struct Pair;
template <>
struct Pair<float> {
  using type = float2;
};
template <>
struct Pair<double> {
  using type = double2;
};

template <typename T>
struct NearestArgs {
  const T* points;    // [B, N, 3] contiguous
  const bool* valid;  // [B, N] contiguous, or nullptr
  int64_t N, H, W;
  int axes;  // the 6 axis entries, 2 bits each (plane p: bits 4p..4p+1 and 4p+2..4p+3)
  T scale;   // 2 / box_warp, computed in double and rounded to T
  T max_d2;  // max_distance^2, computed in double and rounded to T (+inf without)
  bool align_corners;
  int64_t tiles_i, tiles_j;  // cell tiles per plane
  int64_t splits;            // point ranges per cell tile (S)
  int64_t chunk;             // points per range, a multiple of kPointTile
  int64_t num_work;          // B * 3 * tiles_i * tiles_j * splits blocks of work
  int64_t n_cells;           // B * 3 * H * W
  int64_t* index;            // [B, 3, H, W]: the result when splits == 1
  T* part_d2;                // [splits, n_cells]: partial minima when splits > 1
  int32_t* part_idx;         // [splits, n_cells]
};

// The final index of a cell from its minimum: -1 when no point reached it or it is beyond max_distance.
template <typename T>
__device__ __forceinline__ int64_t settle(T best, int32_t arg, T max_d2) {
  return (arg < 0 || raster::cell_is_empty(best, max_d2)) ? int64_t(-1) : int64_t(arg);
}

// One staged point as loaded from global memory. The loads are branch-free (an index past the range reads
// the range's first point instead) and their values are consumed only when the tile is staged, one tile later,
// so the loads for the next tile stay in flight while the current one is searched.
template <typename T>
struct RawPoint {
  T x, y;      // the two coordinates of the plane, unscaled
  uint8_t ok;  // valid[n] (1 without a mask)
  bool in;     // n lies in the range
};

template <typename T>
__device__ __forceinline__ RawPoint<T> load_point(const T* __restrict__ pts, const uint8_t* __restrict__ valid,
                                                  int64_t n, int64_t n_begin, int64_t n_end, int ca, int cb) {
  RawPoint<T> r;
  r.in = n < n_end;
  const int64_t m = r.in ? n : n_begin;
  r.x = pts[m * 3 + ca];
  r.y = pts[m * 3 + cb];
  r.ok = valid ? valid[m] : uint8_t(1);
  return r;
}

// The projected pair c = point * scale (mul_rn: rounded on its own, never fused with the subtraction of
// dist2), or (+inf, +inf), whose d^2 is +inf and never wins, for a point that must never be chosen: past the
// end of the range, invalid, or with a NaN coordinate (the CPU drops those).
template <typename T>
__device__ __forceinline__ typename Pair<T>::type project(const RawPoint<T>& r, T scale) {
  const T a = raster::mul_rn<T>(r.x, scale), b = raster::mul_rn<T>(r.y, scale);
  const bool keep = r.in && r.ok != 0 && a == a && b == b;
  typename Pair<T>::type q;
  q.x = keep ? a : T(INFINITY);
  q.y = keep ? b : T(INFINITY);
  return q;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) nearest_kernel(const NearestArgs<T> g) {
  using P2 = typename Pair<T>::type;
  __shared__ __align__(16) P2 tile[kPointTile];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % kWarpCols, ty = tid / kWarpCols;
  const int64_t H = g.H, W = g.W, N = g.N;

  for (int64_t w = blockIdx.x; w < g.num_work; w += gridDim.x) {
    // Block-uniform decomposition of the work item: split s fastest, then tile column, tile row, (b, p).
    int64_t r = w;
    const int64_t s = r % g.splits;
    r /= g.splits;
    const int64_t tj = r % g.tiles_j;
    r /= g.tiles_j;
    const int64_t ti = r % g.tiles_i;
    const int64_t bp = r / g.tiles_i, b = bp / 3;
    const int p = static_cast<int>(bp - b * 3);
    const int ca = (g.axes >> (4 * p)) & 3, cb = (g.axes >> (4 * p + 2)) & 3;

    // This thread's cells: column j, rows i0 + k * kWarps. Out-of-range cells (ragged tiles) are computed
    // on a clamped centre, so every thread takes part in the staging, and simply not written.
    const int64_t j = tj * kTileCols + tx;
    const int64_t i0 = ti * kTileRows + ty;
    const T u = raster::cell_centre<T>(j < W ? j : W - 1, W, g.align_corners);
    T v[kCellsPerThread], best[kCellsPerThread];
    int32_t arg[kCellsPerThread];
#pragma unroll
    for (int k = 0; k < kCellsPerThread; ++k) {
      const int64_t i = i0 + int64_t(k) * kWarps;
      v[k] = raster::cell_centre<T>(i < H ? i : H - 1, H, g.align_corners);
      best[k] = T(INFINITY);
      arg[k] = -1;
    }

    const T* pts = g.points + b * N * 3;
    const uint8_t* valid = g.valid ? reinterpret_cast<const uint8_t*>(g.valid) + b * N : nullptr;
    const int64_t n_begin = s * g.chunk, n_end = n_begin + g.chunk < N ? n_begin + g.chunk : N;
    RawPoint<T> raw[kPointsPerThread];
#pragma unroll
    for (int k = 0; k < kPointsPerThread; ++k) {
      raw[k] = load_point<T>(pts, valid, n_begin + k * kThreads + tid, n_begin, n_end, ca, cb);
    }
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kPointTile) {
      __syncthreads();  // every thread is done with the previous tile (also the previous work item's)
#pragma unroll
      for (int k = 0; k < kPointsPerThread; ++k) tile[k * kThreads + tid] = project<T>(raw[k], g.scale);
      __syncthreads();
      // Issue the loads of the next tile; they complete while this one is searched.
#pragma unroll
      for (int k = 0; k < kPointsPerThread; ++k) {
        raw[k] = load_point<T>(pts, valid, n0 + kPointTile + k * kThreads + tid, n_begin, n_end, ca, cb);
      }
      // n0 < N < 2^31; unsigned so that the ids of the padding past 2^31 (never chosen) wrap harmlessly.
      const uint32_t base = static_cast<uint32_t>(n0);
#pragma unroll 8
      for (int q = 0; q < kPointTile; ++q) {
        const P2 pt = tile[q];  // the same address for the whole block: a broadcast
        const int32_t id = static_cast<int32_t>(base + static_cast<uint32_t>(q));
#pragma unroll
        for (int k = 0; k < kCellsPerThread; ++k) {
          // The pinned d^2; sq(u - pt.x) is common to the k cells and computed once.
          const T d2 = raster::dist2<T>(u, v[k], pt.x, pt.y);
          if (d2 < best[k]) {  // strict: on equal d^2 the lower index, seen first, stays
            best[k] = d2;
            arg[k] = id;
          }
        }
      }
    }

    if (j < W) {
#pragma unroll
      for (int k = 0; k < kCellsPerThread; ++k) {
        const int64_t i = i0 + int64_t(k) * kWarps;
        if (i >= H) break;
        const int64_t cell = (bp * H + i) * W + j;
        if (g.splits == 1) {
          g.index[cell] = settle<T>(best[k], arg[k], g.max_d2);
        } else {
          g.part_d2[s * g.n_cells + cell] = best[k];
          g.part_idx[s * g.n_cells + cell] = arg[k];
        }
      }
    }
  }
}

// Combine the partial minima of the point ranges in ascending range order with the same strict <: the
// smallest d^2 wins and, among equal ones, the lowest range, hence the lowest index.
template <typename T>
__global__ void merge_kernel(const T* __restrict__ part_d2, const int32_t* __restrict__ part_idx, int64_t n_cells,
                             int64_t splits, T max_d2, int64_t* __restrict__ index) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n_cells; e += stride) {
    T best = T(INFINITY);
    int32_t arg = -1;
    for (int64_t s = 0; s < splits; ++s) {
      const T d2 = part_d2[s * n_cells + e];
      if (d2 < best) {
        best = d2;
        arg = part_idx[s * n_cells + e];
      }
    }
    index[e] = settle<T>(best, arg, max_d2);
  }
}

// planes[b, p, c, cell] = features[b, index[b, p, cell], c], 0 where empty. Thread e of the grid-stride loop
// is cell e of the flattened [B * 3, H * W] index; blockIdx.y picks a run of kChanChunk channels. Writes are
// coalesced per channel; a thread's reads walk its feature row, so they hit the lines its first read brought.
template <typename V>
__global__ void gather_kernel(const V* __restrict__ feat, const int64_t* __restrict__ index, int64_t N, int64_t C,
                              int64_t HW, int64_t n_cells, V* __restrict__ planes) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const V zero = cuda::from_acc<V>(acc_t<V>(0));
  for (int64_t c0 = int64_t(blockIdx.y) * kChanChunk; c0 < C; c0 += int64_t(gridDim.y) * kChanChunk) {
    const int cn = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n_cells; e += stride) {
      const int64_t bp = e / HW, cell = e - bp * HW;
      const int64_t idx = index[e];
      V* out = planes + (bp * C + c0) * HW + cell;
      if (idx < 0) {
        for (int c = 0; c < cn; ++c) out[c * HW] = zero;
      } else {
        const V* src = feat + ((bp / 3) * N + idx) * C + c0;
        for (int c = 0; c < cn; ++c) out[c * HW] = src[c];
      }
    }
  }
}

// grad_features[b, index[b, p, cell], c] += grad_planes[b, p, c, cell], same layout of work as the gather.
// Indices outside [0, N) (the empty cells' -1) add nothing.
template <typename V>
__global__ void scatter_kernel(const V* __restrict__ grad, const int64_t* __restrict__ index, int64_t N, int64_t C,
                               int64_t HW, int64_t n_cells, acc_t<V>* __restrict__ acc) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t c0 = int64_t(blockIdx.y) * kChanChunk; c0 < C; c0 += int64_t(gridDim.y) * kChanChunk) {
    const int cn = static_cast<int>(C - c0 < kChanChunk ? C - c0 : kChanChunk);
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n_cells; e += stride) {
      const int64_t idx = index[e];
      if (static_cast<uint64_t>(idx) >= static_cast<uint64_t>(N)) continue;
      const int64_t bp = e / HW, cell = e - bp * HW;
      const V* src = grad + (bp * C + c0) * HW + cell;
      acc_t<V>* dst = acc + ((bp / 3) * N + idx) * C + c0;
      if constexpr (sizeof(acc_t<V>) == 4) {
        if (C % 4 == 0) {  // rows of C floats, c0 a multiple of 16: every 4 channels are 16-byte aligned
          for (int c = 0; c < cn; c += 4) {
            const float v[4] = {cuda::to_acc<V>(src[c * HW]), cuda::to_acc<V>(src[(c + 1) * HW]),
                                cuda::to_acc<V>(src[(c + 2) * HW]), cuda::to_acc<V>(src[(c + 3) * HW])};
            cuda::atomic_add_vec<4>(dst + c, v);
          }
          continue;
        }
      }
      for (int c = 0; c < cn; ++c) atomicAdd(dst + c, cuda::to_acc<V>(src[c * HW]));
    }
  }
}

// Blocks along y for the channel runs (grid-stride beyond the grid limit).
unsigned int chan_blocks(int64_t C) {
  return static_cast<unsigned int>(std::min<int64_t>(cuda::ceil_div(C, kChanChunk), ONESHOT_CUDA_MAX_BLOCKS_Y));
}

int sm_count(const at::Device& device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()));
  return std::max(sms, 1);
}

template <typename T>
void nearest_cuda(const at::Tensor& pts, const at::Tensor& valid_c, int64_t B, int64_t N, int64_t H, int64_t W,
                  at::IntArrayRef axes, double box_warp, std::optional<double> max_distance, bool align_corners,
                  at::Tensor& index) {
  NearestArgs<T> g;
  g.points = pts.const_data_ptr<T>();
  g.valid = valid_c.defined() ? valid_c.const_data_ptr<bool>() : nullptr;
  g.N = N;
  g.H = H;
  g.W = W;
  g.axes = 0;
  for (int k = 0; k < 6; ++k) g.axes |= static_cast<int>(axes[k]) << (2 * k);
  g.scale = static_cast<T>(2.0 / box_warp);
  g.max_d2 = max_distance ? static_cast<T>(*max_distance * *max_distance) : T(INFINITY);
  g.align_corners = align_corners;
  g.tiles_i = cuda::ceil_div(H, kTileRows);
  g.tiles_j = cuda::ceil_div(W, kTileCols);
  g.n_cells = B * 3 * H * W;
  g.index = index.mutable_data_ptr<int64_t>();
  g.part_d2 = nullptr;
  g.part_idx = nullptr;

  // Split the points into ranges only when the cell tiles leave the GPU idle, and never below
  // kMinSplitPoints points a range (the staging and the merge would start to cost more than they save).
  const int64_t cell_tiles = B * 3 * g.tiles_i * g.tiles_j;
  const int64_t target = int64_t(kBlocksPerSM) * sm_count(pts.device());
  int64_t splits = 1;
  if (cell_tiles < target) {
    splits = std::max<int64_t>(1, std::min(cuda::ceil_div(target, cell_tiles), cuda::ceil_div(N, kMinSplitPoints)));
  }
  g.chunk = cuda::ceil_div(cuda::ceil_div(N, splits), kPointTile) * kPointTile;
  g.splits = cuda::ceil_div(N, g.chunk);  // rounding the chunk up may leave fewer ranges
  g.num_work = cell_tiles * g.splits;

  at::Tensor part_d2, part_idx;
  if (g.splits > 1) {
    part_d2 = at::empty({g.splits, g.n_cells}, pts.options());
    part_idx = at::empty({g.splits, g.n_cells}, pts.options().dtype(at::kInt));
    g.part_d2 = part_d2.mutable_data_ptr<T>();
    g.part_idx = part_idx.mutable_data_ptr<int32_t>();
  }
  const unsigned int blocks = cuda::grid_for(g.num_work, 1);  // one work item per block per round
  nearest_kernel<T><<<blocks, kThreads, 0, cuda::stream()>>>(g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (g.splits > 1) {
    merge_kernel<T><<<cuda::grid_for(g.n_cells, kElemThreads), kElemThreads, 0, cuda::stream()>>>(
        g.part_d2, g.part_idx, g.n_cells, g.splits, g.max_d2, g.index);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor> rasterize_points_cuda(const at::Tensor& points, const at::Tensor& features,
                                                         int64_t height, int64_t width, double box_warp,
                                                         at::IntArrayRef axes, const std::optional<at::Tensor>& valid,
                                                         std::optional<double> max_distance, bool align_corners) {
  const at::Tensor valid_c =
      raster::check_inputs(points, features, height, width, box_warp, axes, valid, max_distance, /*cuda=*/true);
  TORCH_CHECK_VALUE(points.is_cuda(), "points must be a CUDA tensor for the native CUDA kernels, got ",
                    points.device());
  const c10::cuda::CUDAGuard guard(points.device());
  const int64_t B = points.size(0), N = points.size(1), C = features.size(2), H = height, W = width;
  const at::TensorOptions index_opts = points.options().dtype(at::kLong);
  if (B == 0 || N == 0) {  // no point: every cell empty
    return {at::zeros({B, 3, C, H, W}, features.options()), at::full({B, 3, H, W}, -1, index_opts)};
  }
  at::Tensor index = at::empty({B, 3, H, W}, index_opts);
  at::Tensor planes = at::empty({B, 3, C, H, W}, features.options());
  const at::Tensor pts = points.contiguous();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "rasterize_points_cuda", [&] {
    nearest_cuda<scalar_t>(pts, valid_c, B, N, H, W, axes, box_warp, max_distance, align_corners, index);
  });
  if (C > 0) {
    const at::Tensor feat = features.contiguous();  // [B, N, C]
    const int64_t HW = H * W, n_cells = B * 3 * HW;
    const dim3 grid(cuda::grid_for(n_cells, kElemThreads), chan_blocks(C));
    ONESHOT_DISPATCH_VALUE_TYPES(features.scalar_type(), "rasterize_points_cuda_gather", [&] {
      gather_kernel<scalar_t><<<grid, kElemThreads, 0, cuda::stream()>>>(
          feat.const_data_ptr<scalar_t>(), index.const_data_ptr<int64_t>(), N, C, HW, n_cells,
          planes.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {planes, index};
}

at::Tensor rasterize_points_backward_cuda(const at::Tensor& grad_planes, const at::Tensor& index, int64_t num_points) {
  raster::check_backward_inputs(grad_planes, index, num_points, /*cuda=*/true);
  TORCH_CHECK_VALUE(grad_planes.is_cuda(), "grad_planes must be a CUDA tensor for the native CUDA kernels, got ",
                    grad_planes.device());
  const int64_t B = grad_planes.size(0), C = grad_planes.size(2), H = grad_planes.size(3), W = grad_planes.size(4);
  const auto dt = grad_planes.scalar_type();
  // Float atomics: the order of the additions, hence the rounding, varies run to run.
  at::globalContext().alertNotDeterministic("rasterize_points_backward (CUDA)");

  const c10::cuda::CUDAGuard guard(grad_planes.device());
  const bool direct = dt == at::kFloat || dt == at::kDouble;  // accumulate straight into the output
  at::Tensor acc = at::zeros({B, num_points, C}, grad_planes.options().dtype(direct ? dt : at::kFloat));
  const int64_t HW = H * W, n_cells = B * 3 * HW;
  if (acc.numel() > 0 && n_cells > 0) {
    const at::Tensor gp = grad_planes.contiguous(), idx = index.contiguous();
    const dim3 grid(cuda::grid_for(n_cells, kElemThreads), chan_blocks(C));
    ONESHOT_DISPATCH_VALUE_TYPES(dt, "rasterize_points_backward_cuda", [&] {
      scatter_kernel<scalar_t><<<grid, kElemThreads, 0, cuda::stream()>>>(
          gp.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), num_points, C, HW, n_cells,
          acc.mutable_data_ptr<acc_t<scalar_t>>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return direct ? acc : acc.to(dt);
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CUDA, m) {
  m.impl("rasterize_points", &rasterize_points_cuda);
  m.impl("rasterize_points_backward", &rasterize_points_backward_cuda);
}

}  // namespace oneshot
