// CUDA kernels of oneshot::triplane_sample and its backward.
//
// Layout: the planes channels-last ([B, 3, H, W, C], the layout the Python wrapper hands over), so the C
// channels of one tap are contiguous and a point's 4 taps x C channels are a handful of wide loads. A group of
// Gs threads (a power of two <= 32, lanes of one warp) serves one point: each thread owns VW consecutive
// channels per step (VW = 16 bytes: float4 / 8 halves / double2 when C and the base allow it, else 1) and
// strides over the channels by Gs * VW. The tap geometry is recomputed by every thread of the group (a few
// flops) instead of being staged anywhere.
//
// Backward: the planes' gradient is scattered with atomicAdd into a channels-last accumulation buffer
// (float32 for float16 / bfloat16 planes, converted once at the end; float32 / float64 planes accumulate in
// place): a lane's VW channels of a tap as float4 vector atomics on sm_90 (one for float32 planes, two for 16-bit
// ones; scalar atomics for float64, for C not a multiple of the vector, and before sm_90). The taps of one plane
// at a time are live, not all three. The points' gradient needs <grad_out, tap> per tap: each thread takes it over its channels and the
// group reduces with shuffles, so every point is written once, by one thread, in a fixed order.
// Float atomics make the planes' gradient summation order vary from run to run, as in torch's grid_sample
// backward: the op reports itself to torch.use_deterministic_algorithms.
//
// dtypes: planes float16 / bfloat16 / float32 with float32 points, or both float64; accumulation in float32
// (float64). The output has the planes' dtype, the points' gradient the points' dtype.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "triplane/triplane.h"
#include "triplane/triplane_args.h"

namespace oneshot {
namespace {

using cuda::acc_t;
using cuda::from_acc;
using cuda::kWarp;
using cuda::to_acc;
using triplane::Taps;

constexpr int kThreads = 256;

// The kernels index channels and pixels with int32.
void check_sizes(const at::Tensor& planes) {
  TORCH_CHECK_VALUE(planes.size(2) < (int64_t(1) << 30) && planes.size(3) < (int64_t(1) << 30) &&
                        planes.size(4) < (int64_t(1) << 30),
                    "triplane_sample supports C, H, W < 2^30, got planes ", shape_str(planes));
}

// The planes as a contiguous channels-last [B, 3, H, W, C] tensor (no copy when they already are).
at::Tensor channels_last(const at::Tensor& planes) { return planes.permute({0, 1, 3, 4, 2}).contiguous(); }

struct Axes {
  int a[3][2];
};

struct Geometry {
  int64_t B, M;
  int C, H, W;
  Axes ax;
  int reduce;
  int group;  // threads per point
};

template <typename T, int VW>
struct alignas(sizeof(T) * VW) Vec {
  T v[VW];
};

// The 4 taps of one plane for one point: element offsets of their channel rows (-1 outside) and weights.
template <typename G>
struct PlaneTaps {
  int64_t off[4];
  G w[4], dwx[4], dwy[4];
};

template <typename G>
__device__ __forceinline__ PlaneTaps<G> plane_taps(const G* pt, G scale, const Geometry& g, int64_t b, int p) {
  const Taps<G> t = triplane::taps<G>(pt[g.ax.a[p][0]] * scale, pt[g.ax.a[p][1]] * scale, g.W, g.H);
  PlaneTaps<G> out;
  const int64_t base = (b * 3 + p) * int64_t(g.H);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    int64_t x, y;
    const bool in = triplane::tap_inside(t, k, g.W, g.H, &x, &y);
    out.off[k] = in ? ((base + y) * g.W + x) * g.C : -1;
    out.w[k] = triplane::tap_weight(t, k);
    out.dwx[k] = triplane::tap_dweight_dx(t, k);
    out.dwy[k] = triplane::tap_dweight_dy(t, k);
  }
  return out;
}

// How a thread walks the points: its lane in the group of gs threads of a point (gl), its point's slot in the
// warp, and a loop w0 = first; w0 < B * M; w0 += stride that is the same for every lane of a warp.
struct PointWalk {
  int gl;
  int64_t slot, first, stride;
};

__device__ __forceinline__ PointWalk point_walk(int gs) {
  const int lane = threadIdx.x % kWarp;
  const int per_warp = kWarp / gs;
  PointWalk pw;
  pw.gl = lane % gs;
  pw.slot = lane / gs;
  pw.first = (int64_t(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp) * per_warp;
  pw.stride = int64_t(gridDim.x) * (kThreads / kWarp) * per_warp;
  return pw;
}

// Work is handed out per warp so that every lane of a warp runs the same number of outer iterations (the
// backward's group shuffles need the whole warp).
template <typename T, typename G, int VW>
__global__ void __launch_bounds__(kThreads) triplane_forward_kernel(const T* __restrict__ planes,
                                                                     const G* __restrict__ points, Geometry g,
                                                                     G scale, T* __restrict__ out) {
  using A = acc_t<T>;
  const int gs = g.group;
  const PointWalk pw = point_walk(gs);
  const int gl = pw.gl;
  const int64_t BM = g.B * g.M;
  for (int64_t w0 = pw.first; w0 < BM; w0 += pw.stride) {
    const int64_t bm = w0 + pw.slot;
    if (bm >= BM) continue;
    const int64_t b = bm / g.M, m = bm - b * g.M;
    const G* pt = points + bm * 3;
    PlaneTaps<G> tp[3];
#pragma unroll
    for (int p = 0; p < 3; ++p) tp[p] = plane_taps(pt, scale, g, b, p);
    for (int c = gl * VW; c < g.C; c += gs * VW) {
      A sum[VW];
#pragma unroll
      for (int l = 0; l < VW; ++l) sum[l] = A(0);
#pragma unroll
      for (int p = 0; p < 3; ++p) {
        A acc[VW];
#pragma unroll
        for (int l = 0; l < VW; ++l) acc[l] = A(0);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (tp[p].off[k] < 0) continue;
          const Vec<T, VW> v = *reinterpret_cast<const Vec<T, VW>*>(planes + tp[p].off[k] + c);
          const A w = static_cast<A>(tp[p].w[k]);
#pragma unroll
          for (int l = 0; l < VW; ++l) acc[l] += w * to_acc(v.v[l]);
        }
        if (g.reduce == triplane::kNone) {
          Vec<T, VW> o;
#pragma unroll
          for (int l = 0; l < VW; ++l) o.v[l] = from_acc<T>(acc[l]);
          *reinterpret_cast<Vec<T, VW>*>(out + ((b * 3 + p) * g.M + m) * g.C + c) = o;
        } else {
#pragma unroll
          for (int l = 0; l < VW; ++l) sum[l] += acc[l];
        }
      }
      if (g.reduce != triplane::kNone) {
        Vec<T, VW> o;
#pragma unroll
        for (int l = 0; l < VW; ++l) o.v[l] = from_acc<T>(g.reduce == triplane::kMean ? sum[l] / A(3) : sum[l]);
        *reinterpret_cast<Vec<T, VW>*>(out + bm * g.C + c) = o;
      }
    }
  }
}

template <typename T, typename G, int VW>
__global__ void __launch_bounds__(kThreads) triplane_backward_kernel(
    const T* __restrict__ grad_out, const T* __restrict__ planes, const G* __restrict__ points, Geometry g, G scale,
    acc_t<T>* __restrict__ grad_planes, G* __restrict__ grad_points) {
  using A = acc_t<T>;
  const int gs = g.group;
  const PointWalk pw = point_walk(gs);
  const int gl = pw.gl;
  const int64_t BM = g.B * g.M;
  const A factor = g.reduce == triplane::kMean ? A(1) / A(3) : A(1);
  for (int64_t w0 = pw.first; w0 < BM; w0 += pw.stride) {
    const int64_t bm = w0 + pw.slot;
    const bool active = bm < BM;  // inactive lanes still join the shuffles below
    A hx[3] = {A(0), A(0), A(0)}, hy[3] = {A(0), A(0), A(0)};
    if (active) {
      const int64_t b = bm / g.M, m = bm - b * g.M;
      const G* pt = points + bm * 3;
      for (int c = gl * VW; c < g.C; c += gs * VW) {
#pragma unroll
        for (int p = 0; p < 3; ++p) {
          // One plane's taps at a time, recomputed per channel step (a few flops; at C <= gs * VW, the usual
          // case, there is one step): keeping all three planes' taps live cost ~40 registers and occupancy.
          const PlaneTaps<G> tp = plane_taps(pt, scale, g, b, p);
          const T* grow = g.reduce == triplane::kNone ? grad_out + ((b * 3 + p) * g.M + m) * g.C
                                                      : grad_out + bm * g.C;
          const Vec<T, VW> gv = *reinterpret_cast<const Vec<T, VW>*>(grow + c);
          A go[VW];
#pragma unroll
          for (int l = 0; l < VW; ++l) go[l] = to_acc(gv.v[l]) * factor;
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (tp.off[k] < 0) continue;
            if (grad_planes != nullptr) {
              // VW channels in vector atomics: float4 for float32 accumulation on sm_90 (two for 16-bit planes'
              // 8 channels), scalar otherwise
              constexpr int kVec = (sizeof(A) == 4 && VW % 4 == 0) ? 4 : 1;
              const A w = static_cast<A>(tp.w[k]);
              A* dst = grad_planes + tp.off[k] + c;
#pragma unroll
              for (int v0 = 0; v0 < VW; v0 += kVec) {
                A part[kVec];
#pragma unroll
                for (int l = 0; l < kVec; ++l) part[l] = w * go[v0 + l];
                cuda::atomic_add_vec<kVec>(dst + v0, part);
              }
            }
            if (grad_points != nullptr) {
              const Vec<T, VW> v = *reinterpret_cast<const Vec<T, VW>*>(planes + tp.off[k] + c);
              A d = A(0);
#pragma unroll
              for (int l = 0; l < VW; ++l) d += go[l] * to_acc(v.v[l]);
              hx[p] += static_cast<A>(tp.dwx[k]) * d;
              hy[p] += static_cast<A>(tp.dwy[k]) * d;
            }
          }
        }
      }
    }
    if (grad_points != nullptr) {
      // Reduce over the group (lanes gl = 0 .. gs-1 of this point), in a fixed butterfly order.
      for (int o = gs / 2; o > 0; o >>= 1) {
#pragma unroll
        for (int p = 0; p < 3; ++p) {
          hx[p] += __shfl_xor_sync(0xffffffffu, hx[p], o);
          hy[p] += __shfl_xor_sync(0xffffffffu, hy[p], o);
        }
      }
      if (active && gl == 0) {
        // d(pixel)/d(c) = size / 2; d(c)/d(point) = scale.
        G gc[3] = {G(0), G(0), G(0)};
#pragma unroll
        for (int p = 0; p < 3; ++p) {
          gc[g.ax.a[p][0]] += static_cast<G>(hx[p]) * G(g.W) / G(2);
          gc[g.ax.a[p][1]] += static_cast<G>(hy[p]) * G(g.H) / G(2);
        }
#pragma unroll
        for (int a = 0; a < 3; ++a) grad_points[bm * 3 + a] = gc[a] * scale;
      }
    }
  }
}

Geometry geometry(const at::Tensor& planes, int64_t M, at::IntArrayRef axes, triplane::Reduce reduce) {
  Geometry g;
  g.B = planes.size(0);
  g.C = static_cast<int>(planes.size(2));
  g.H = static_cast<int>(planes.size(3));
  g.W = static_cast<int>(planes.size(4));
  g.M = M;
  for (int p = 0; p < 3; ++p) {
    g.ax.a[p][0] = static_cast<int>(axes[2 * p]);
    g.ax.a[p][1] = static_cast<int>(axes[2 * p + 1]);
  }
  g.reduce = reduce;
  return g;
}

// 16-byte vectors when every channel row (and the other buffers the kernel vector-accesses) allows it.
template <typename T>
int vector_width(int64_t C, std::initializer_list<const void*> ptrs) {
  const int vw = 16 / int(sizeof(T));
  if (C % vw != 0) return 1;
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  }
  return vw;
}

int group_size(int64_t C, int vw) {
  const int64_t steps = (C + vw - 1) / vw;
  int gs = 1;
  while (gs < kWarp && gs < steps) gs *= 2;
  return gs;
}

unsigned int blocks_for(int64_t BM, int gs) {
  return cuda::grid_for(BM, kThreads / gs);  // kThreads / gs points per block per round
}

template <typename T, typename G>
void launch_forward(const at::Tensor& pl, const at::Tensor& pts, Geometry g, double box_warp, at::Tensor& out) {
  const int vw = vector_width<T>(g.C, {pl.const_data_ptr(), out.const_data_ptr()});
  g.group = group_size(g.C, vw);
  const unsigned int blocks = blocks_for(g.B * g.M, g.group);
  const G scale = static_cast<G>(2.0 / box_warp);
  auto go = [&](auto w) {
    constexpr int VW = decltype(w)::value;
    triplane_forward_kernel<T, G, VW><<<blocks, kThreads, 0, cuda::stream()>>>(
        pl.const_data_ptr<T>(), pts.const_data_ptr<G>(), g, scale, out.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (vw == 1) go(std::integral_constant<int, 1>{});
  else go(std::integral_constant<int, 16 / int(sizeof(T))>{});
}

at::Tensor triplane_sample_cuda(const at::Tensor& planes, const at::Tensor& points, double box_warp,
                                at::IntArrayRef axes, c10::string_view reduce_sv) {
  triplane::check_inputs(planes, points, axes, box_warp, /*cuda=*/true);
  check_sizes(planes);
  const auto reduce = triplane::parse_reduce(std::string(reduce_sv));
  const c10::cuda::CUDAGuard guard(planes.device());
  const int64_t B = planes.size(0), C = planes.size(2), M = points.size(1);
  at::Tensor out = reduce == triplane::kNone ? at::empty({B, 3, M, C}, planes.options())
                                             : at::empty({B, M, C}, planes.options());
  if (out.numel() == 0) return out;
  const at::Tensor pl = channels_last(planes);
  const at::Tensor pts = points.contiguous();
  const Geometry g = geometry(planes, M, axes, reduce);
  cuda::dispatch_value_geometry(planes.scalar_type(), "triplane_sample_cuda", [&](auto v, auto gt) {
    launch_forward<decltype(v), decltype(gt)>(pl, pts, g, box_warp, out);
  });
  return out;
}

template <typename T, typename G>
void launch_backward(const at::Tensor& go, const at::Tensor& pl, const at::Tensor& pts, Geometry g, double box_warp,
                     acc_t<T>* grad_planes, G* grad_points) {
  const int vw = vector_width<T>(g.C, {go.const_data_ptr(), pl.defined() ? pl.const_data_ptr() : nullptr});
  g.group = group_size(g.C, vw);
  const unsigned int blocks = blocks_for(g.B * g.M, g.group);
  const G scale = static_cast<G>(2.0 / box_warp);
  auto run = [&](auto w) {
    constexpr int VW = decltype(w)::value;
    triplane_backward_kernel<T, G, VW><<<blocks, kThreads, 0, cuda::stream()>>>(
        go.const_data_ptr<T>(), pl.defined() ? pl.const_data_ptr<T>() : nullptr, pts.const_data_ptr<G>(), g, scale,
        grad_planes, grad_points);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (vw == 1) run(std::integral_constant<int, 1>{});
  else run(std::integral_constant<int, 16 / int(sizeof(T))>{});
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_backward_cuda(const at::Tensor& grad_out, const at::Tensor& planes,
                                                                 const at::Tensor& points, double box_warp,
                                                                 at::IntArrayRef axes, c10::string_view reduce_sv,
                                                                 bool planes_requires_grad,
                                                                 bool points_requires_grad) {
  triplane::check_inputs(planes, points, axes, box_warp, /*cuda=*/true);
  check_sizes(planes);
  const auto reduce = triplane::parse_reduce(std::string(reduce_sv));
  triplane::check_grad_out(grad_out, planes, points, reduce);
  const c10::cuda::CUDAGuard guard(planes.device());
  const int64_t B = planes.size(0), C = planes.size(2), H = planes.size(3), W = planes.size(4);
  const int64_t M = points.size(1);
  const bool low = planes.scalar_type() == at::kHalf || planes.scalar_type() == at::kBFloat16;
  // Accumulation buffer for the planes' gradient, channels-last; float32 for 16-bit planes.
  at::Tensor acc = planes_requires_grad
                       ? at::zeros({B, 3, H, W, C}, planes.options().dtype(low ? at::kFloat : planes.scalar_type()))
                       : at::Tensor();
  at::Tensor grad_points = points_requires_grad ? at::zeros({B, M, 3}, points.options()) : at::empty({0}, points.options());
  const bool planes_work = planes_requires_grad && acc.numel() > 0 && M > 0;
  const bool points_work = points_requires_grad && C > 0 && M > 0 && B > 0;
  if (planes_work) at::globalContext().alertNotDeterministic("triplane_sample_backward (CUDA, planes gradient)");
  if (planes_work || points_work) {
    const at::Tensor go = grad_out.contiguous();
    const at::Tensor pts = points.contiguous();
    const at::Tensor pl = points_work ? channels_last(planes) : at::Tensor();  // read only for d/d(points)
    const Geometry g = geometry(planes, M, axes, reduce);
    cuda::dispatch_value_geometry(planes.scalar_type(), "triplane_sample_backward_cuda", [&](auto v, auto gt) {
      using T = decltype(v);
      using G = decltype(gt);
      launch_backward<T, G>(go, pl, pts, g, box_warp, planes_work ? acc.mutable_data_ptr<acc_t<T>>() : nullptr,
                            points_work ? grad_points.mutable_data_ptr<G>() : nullptr);
    });
  }
  at::Tensor grad_planes = at::empty({0}, planes.options());
  if (planes_requires_grad) {
    at::Tensor grad_cl = acc;
    if (low) {
      grad_cl = at::empty({B, 3, H, W, C}, planes.options());
      grad_cl.copy_(acc);
    }
    grad_planes = grad_cl.permute({0, 1, 4, 2, 3});  // [B, 3, C, H, W] view of the channels-last buffer
  }
  return {grad_planes, grad_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CUDA, m) {
  m.impl("triplane_sample", &triplane_sample_cuda);
  m.impl("triplane_sample_backward", &triplane_sample_backward_cuda);
}

}  // namespace oneshot
