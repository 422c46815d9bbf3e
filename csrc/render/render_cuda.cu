// CUDA kernels of oneshot::render_triplane and its backward (render/render.h has the contract): one thread per
// ray, the decoder's weights in shared memory (read by every thread of the block alike: broadcasts).
//
// Forward: the ray's samples are streamed. Per sample: the point, its 12 taps (C channels each), the decoder
// one hidden unit at a time (h_j = w1_j . f + b1_j, y += softplus(h_j) w2[:, j]: no hidden array), then the
// interval it closes with the previous sample is composited (midpoint rule, as ray_march). Registers/local
// memory hold f [C], y [1 + Co] and the previous sample's colour; nothing per sample reaches global memory
// except the weights output.
// Backward: pass 1 streams the samples again and keeps four scalars per sample in a global scratch
// ([rays, 4, S]: raw density, <grad_features, colour>, transmittance, d loss / d interval density): the ray
// march's reverse sweep needs them, and they are 4 values per sample, not the C + hidden + 1 + Co the composed
// path keeps. Pass 2 recomputes each sample's decoder and back-propagates: the decoder's gradients go to
// per-block shared accumulators (shared atomics) flushed to global memory once per block, the feature
// gradients to the planes' gradient with global atomics (summation order is not fixed on the GPU).
//
// dtypes: float32 or float64 for everything (accumulation in the same type), or float16 / bfloat16 planes with
// float32 for the rest (read from a float32 copy; their gradient converted back). Sizes: C, hidden and 1 + Co up to
// kMaxC, kMaxO (local arrays); the decoder's weights must fit in shared memory.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "raymarch/raymarch.h"
#include "render/render.h"
#include "render/render_args.h"
#include "triplane/triplane.h"

namespace oneshot {
namespace {

using render::Dims;

constexpr int kThreads = 64;
constexpr int kMaxC = 128;  // plane channels
constexpr int kMaxO = 129;  // 1 + out channels
constexpr size_t kSharedLimit = 48 * 1024;

template <typename T>
struct Args {
  const T* planes;  // [B, 3, C, H, W] contiguous
  const T *origins, *dirs, *depths;
  const T *w1, *b1, *w2, *b2;  // global; copied to shared memory
  int64_t B, R, N;
  int S, C, H, W, Hd, O;
  T scale, half_box, bias;
  int ax[3][2];
  bool clip;
};

// The decoder's weights in shared memory: w1 [Hd, C], b1 [Hd], w2 [O, Hd], b2 [O].
template <typename T>
__device__ void load_weights(const Args<T>& a, T* sh) {
  const int n1 = a.Hd * a.C, n2 = a.O * a.Hd;
  for (int i = threadIdx.x; i < n1; i += blockDim.x) sh[i] = a.w1[i];
  for (int i = threadIdx.x; i < a.Hd; i += blockDim.x) sh[n1 + i] = a.b1[i];
  for (int i = threadIdx.x; i < n2; i += blockDim.x) sh[n1 + a.Hd + i] = a.w2[i];
  for (int i = threadIdx.x; i < a.O; i += blockDim.x) sh[n1 + a.Hd + n2 + i] = a.b2[i];
}

// The point of sample k of ray i, whether it is inside the box, and its mean feature f [C].
template <typename T>
__device__ __forceinline__ bool sample_point(const Args<T>& a, int64_t i, int k, T* p, T* f) {
  const int64_t b = i / a.R;
  const T t = a.depths[i * a.S + k];
  for (int q = 0; q < 3; ++q) p[q] = a.origins[i * 3 + q] + t * a.dirs[i * 3 + q];
  const bool inside = !a.clip || (fabs(p[0]) <= a.half_box && fabs(p[1]) <= a.half_box && fabs(p[2]) <= a.half_box);
  for (int c = 0; c < a.C; ++c) f[c] = T(0);
  const int64_t plane_sz = int64_t(a.H) * a.W;
  for (int pl = 0; pl < 3; ++pl) {
    const triplane::Taps<T> tp = triplane::taps<T>(p[a.ax[pl][0]] * a.scale, p[a.ax[pl][1]] * a.scale, a.W, a.H);
    const T* base = a.planes + (b * 3 + pl) * a.C * plane_sz;
    for (int q = 0; q < 4; ++q) {
      int64_t x, y;
      if (!triplane::tap_inside(tp, q, a.W, a.H, &x, &y)) continue;
      const T wq = triplane::tap_weight(tp, q);
      for (int c = 0; c < a.C; ++c) f[c] += wq * base[c * plane_sz + y * a.W + x];
    }
  }
  for (int c = 0; c < a.C; ++c) f[c] /= T(3);
  return inside;
}

// y [O] = w2 softplus(w1 f + b1) + b2, one hidden unit at a time.
template <typename T>
__device__ __forceinline__ void decode(const Args<T>& a, const T* sh, const T* f, T* y) {
  const T *w1 = sh, *b1 = sh + a.Hd * a.C, *w2 = b1 + a.Hd, *b2 = w2 + a.O * a.Hd;
  for (int o = 0; o < a.O; ++o) y[o] = b2[o];
  for (int j = 0; j < a.Hd; ++j) {
    T h = b1[j];
    for (int c = 0; c < a.C; ++c) h += w1[j * a.C + c] * f[c];
    const T act = raymarch::softplus(h);
    for (int o = 0; o < a.O; ++o) y[o] += act * w2[o * a.Hd + j];
  }
}

template <typename T>
__device__ __forceinline__ T color_of(T y) {
  return render::sigmoid(y) * T(render::kColorScale) - T(render::kColorShift);
}

template <typename T>
__global__ void render_forward_kernel(Args<T> a, T* __restrict__ feat, T* __restrict__ depth_out,
                                      T* __restrict__ opacity_out, T* __restrict__ weights_out) {
  extern __shared__ unsigned char smem_raw[];
  T* sh = reinterpret_cast<T*>(smem_raw);
  load_weights(a, sh);
  __syncthreads();
  const int Co = a.O - 1;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < a.N; i += int64_t(gridDim.x) * blockDim.x) {
    T p[3], f[kMaxC], y[kMaxO], prev[kMaxO], acc[kMaxO];
    T prev_sig = T(0), trans = T(1), op = T(0), num = T(0);
    for (int o = 0; o < Co; ++o) acc[o] = T(0);
    const T* t = a.depths + i * a.S;
    for (int k = 0; k < a.S; ++k) {
      const bool inside = sample_point(a, i, k, p, f);
      decode(a, sh, f, y);
      const T sig = inside ? y[0] : T(render::kOutsideDensity);
      for (int o = 0; o < Co; ++o) y[1 + o] = color_of(y[1 + o]);
      if (k > 0) {
        const T m = (prev_sig + sig) / T(2) + a.bias;
        const T dt = t[k] - t[k - 1];
        const T alpha = T(1) - exp(-(raymarch::softplus(m) * dt));
        const T w = alpha * trans;
        trans = raymarch::next_transmittance(trans, alpha);
        op += w;
        num += w * ((t[k - 1] + t[k]) / T(2));
        for (int o = 0; o < Co; ++o) acc[o] += w * ((prev[1 + o] + y[1 + o]) / T(2));
        weights_out[i * (a.S - 1) + k - 1] = w;
      }
      prev_sig = sig;
      for (int o = 0; o < Co; ++o) prev[1 + o] = y[1 + o];
    }
    for (int o = 0; o < Co; ++o) feat[i * Co + o] = acc[o];
    opacity_out[i] = op;
    depth_out[i] = raymarch::composite_depth(num, op, t[0], t[a.S - 1]);
  }
}

template <typename T>
__global__ void render_backward_kernel(Args<T> a, const T* __restrict__ gf, const T* __restrict__ gd,
                                       const T* __restrict__ go, const T* __restrict__ gw, T* __restrict__ scratch,
                                       T* __restrict__ gplanes, T* __restrict__ gdec) {
  extern __shared__ unsigned char smem_raw[];
  T* sh = reinterpret_cast<T*>(smem_raw);
  const int wsize = a.Hd * a.C + a.Hd + a.O * a.Hd + a.O;
  T* sacc = sh + wsize;  // the block's decoder-gradient accumulator, same layout as the weights
  load_weights(a, sh);
  for (int j = threadIdx.x; j < wsize; j += blockDim.x) sacc[j] = T(0);
  __syncthreads();
  const T *w1 = sh, *b1 = sh + a.Hd * a.C, *w2 = b1 + a.Hd;
  T *g_w1 = sacc, *g_b1 = sacc + a.Hd * a.C, *g_w2 = g_b1 + a.Hd, *g_b2 = g_w2 + a.O * a.Hd;
  const int S = a.S, K = S - 1, Co = a.O - 1;
  const int64_t plane_sz = int64_t(a.H) * a.W;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < a.N; i += int64_t(gridDim.x) * blockDim.x) {
    T p[3], f[kMaxC], y[kMaxO], gy[kMaxO];
    T* s_sig = scratch + i * 4 * S;
    T* s_dot = s_sig + S;
    T* s_trans = s_dot + S;
    T* s_dm = s_trans + S;
    const T* t = a.depths + i * S;
    const T* gfi = gf ? gf + i * Co : nullptr;
    // Pass 1: densities and <gf, colour> per sample; the transmittance scan.
    for (int k = 0; k < S; ++k) {
      const bool inside = sample_point(a, i, k, p, f);
      decode(a, sh, f, y);
      s_sig[k] = inside ? y[0] : T(render::kOutsideDensity);
      T dot = T(0);
      if (gfi) {
        for (int o = 0; o < Co; ++o) dot += gfi[o] * color_of(y[1 + o]);
      }
      s_dot[k] = dot;
    }
    T trans = T(1), op = T(0), num = T(0);
    for (int k = 0; k < K; ++k) {
      const T m = (s_sig[k] + s_sig[k + 1]) / T(2) + a.bias;
      const T alpha = T(1) - exp(-(raymarch::softplus(m) * (t[k + 1] - t[k])));
      s_trans[k] = trans;
      const T w = alpha * trans;
      op += w;
      num += w * ((t[k] + t[k + 1]) / T(2));
      trans = raymarch::next_transmittance(trans, alpha);
    }
    // ray_march's backward: dL/dw_k, then the reverse sweep for dL/d alpha_k -> dL/d m_k (interval densities).
    const T g_op = go ? go[i] : T(0);
    T depth_coef = T(0), depth_val = T(0);
    if (gd && raymarch::depth_passes_grad(num, op, t[0], t[K])) {
      depth_val = num / op;
      depth_coef = gd[i] / op;
    }
    T suffix = T(0);
    for (int k = K - 1; k >= 0; --k) {
      const T m = (s_sig[k] + s_sig[k + 1]) / T(2) + a.bias;
      const T delta = t[k + 1] - t[k];
      const T e = exp(-(raymarch::softplus(m) * delta));
      const T alpha = T(1) - e;
      T G = g_op + depth_coef * ((t[k] + t[k + 1]) / T(2) - depth_val) + (s_dot[k] + s_dot[k + 1]) / T(2);
      if (gw) G += gw[i * K + k];
      const T d_alpha = s_trans[k] * (G - suffix);
      suffix = G * alpha + ((T(1) - alpha) + T(1e-10)) * suffix;
      s_dm[k] = d_alpha * delta * e * raymarch::softplus_grad(m);
    }
    // Pass 2: per sample, d/d decoder outputs, the decoder's backward, the scatter into the planes.
    const int64_t b = i / a.R;
    for (int k = 0; k < S; ++k) {
      const bool inside = sample_point(a, i, k, p, f);
      // omega_k = (w_{k-1} + w_k) / 2, w_k = alpha_k T_k (recomputed as in pass 1)
      T omega = T(0);
      for (int q = k - 1; q <= k; ++q) {
        if (q < 0 || q >= K) continue;
        const T m = (s_sig[q] + s_sig[q + 1]) / T(2) + a.bias;
        const T alpha = T(1) - exp(-(raymarch::softplus(m) * (t[q + 1] - t[q])));
        omega += alpha * s_trans[q] / T(2);
      }
      const T gs = ((k > 0 ? s_dm[k - 1] : T(0)) + (k < K ? s_dm[k] : T(0))) / T(2);
      decode(a, sh, f, y);
      gy[0] = inside ? gs : T(0);
      for (int o = 0; o < Co; ++o) {
        const T sg = render::sigmoid(y[1 + o]);
        gy[1 + o] = gfi ? gfi[o] * omega * T(render::kColorScale) * sg * (T(1) - sg) : T(0);
      }
      for (int o = 0; o < a.O; ++o) atomicAdd(&g_b2[o], gy[o]);
      T gfeat[kMaxC];
      for (int c = 0; c < a.C; ++c) gfeat[c] = T(0);
      for (int j = 0; j < a.Hd; ++j) {
        T h = b1[j];
        for (int c = 0; c < a.C; ++c) h += w1[j * a.C + c] * f[c];
        const T act = raymarch::softplus(h);
        T ga = T(0);
        for (int o = 0; o < a.O; ++o) {
          ga += gy[o] * w2[o * a.Hd + j];
          atomicAdd(&g_w2[o * a.Hd + j], gy[o] * act);
        }
        const T gh = ga * raymarch::softplus_grad(h);
        atomicAdd(&g_b1[j], gh);
        for (int c = 0; c < a.C; ++c) {
          atomicAdd(&g_w1[j * a.C + c], gh * f[c]);
          gfeat[c] += gh * w1[j * a.C + c];
        }
      }
      for (int pl = 0; pl < 3; ++pl) {
        const triplane::Taps<T> tp = triplane::taps<T>(p[a.ax[pl][0]] * a.scale, p[a.ax[pl][1]] * a.scale, a.W, a.H);
        T* base = gplanes + (b * 3 + pl) * a.C * plane_sz;
        for (int q = 0; q < 4; ++q) {
          int64_t x, yy;
          if (!triplane::tap_inside(tp, q, a.W, a.H, &x, &yy)) continue;
          const T wq = triplane::tap_weight(tp, q) / T(3);
          for (int c = 0; c < a.C; ++c) atomicAdd(&base[c * plane_sz + yy * a.W + x], wq * gfeat[c]);
        }
      }
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < wsize; j += blockDim.x) atomicAdd(&gdec[j], sacc[j]);
}

template <typename T>
Args<T> make_args(const Dims& d, const at::Tensor& planes, const at::Tensor& o, const at::Tensor& dir,
                  const at::Tensor& t, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                  const at::Tensor& b2, double box_warp, at::IntArrayRef axes, bool clip, double bias) {
  Args<T> a;
  a.planes = planes.const_data_ptr<T>();
  a.origins = o.const_data_ptr<T>();
  a.dirs = dir.const_data_ptr<T>();
  a.depths = t.const_data_ptr<T>();
  a.w1 = w1.const_data_ptr<T>();
  a.b1 = b1.const_data_ptr<T>();
  a.w2 = w2.const_data_ptr<T>();
  a.b2 = b2.const_data_ptr<T>();
  a.B = d.B;
  a.R = d.R;
  a.N = d.B * d.R;
  a.S = int(d.S);
  a.C = int(d.C);
  a.H = int(d.H);
  a.W = int(d.W);
  a.Hd = int(d.Hd);
  a.O = int(d.O);
  a.scale = static_cast<T>(2.0 / box_warp);
  a.half_box = static_cast<T>(box_warp / 2);
  a.bias = static_cast<T>(bias);
  a.clip = clip;
  for (int p = 0; p < 3; ++p) {
    a.ax[p][0] = int(axes[2 * p]);
    a.ax[p][1] = int(axes[2 * p + 1]);
  }
  return a;
}

void check_cuda(const at::Tensor& planes, const Dims& d, int accumulators) {
  TORCH_CHECK_VALUE(planes.is_cuda(), "render_triplane (CUDA kernel) got planes on ", planes.device());
  TORCH_CHECK_VALUE(d.C <= kMaxC && d.O <= kMaxO, "render_triplane's CUDA kernel supports C <= ", kMaxC,
                    " plane channels and 1 + out_channels <= ", kMaxO, ", got C = ", d.C, ", ", d.O);
  TORCH_CHECK_VALUE(d.S < (int64_t(1) << 30) && d.H * d.W < (int64_t(1) << 31), "render_triplane: S or H x W too large");
  const size_t bytes = size_t(accumulators) * (d.Hd * d.C + d.Hd + d.O * d.Hd + d.O) *
                       (planes.scalar_type() == at::kDouble ? 8 : 4);  // 16-bit planes: float32 weights
  TORCH_CHECK_VALUE(bytes <= kSharedLimit, "render_triplane's CUDA kernel keeps the decoder in shared memory: ",
                    bytes, " bytes needed, ", kSharedLimit, " available (hidden = ", d.Hd, ")");
}

struct Prepared {
  at::Tensor planes, o, dir, t, w1, b1, w2, b2;
};

Prepared prepare(const at::Tensor& planes, const at::Tensor& o, const at::Tensor& dir, const at::Tensor& t,
                 const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
  return {planes.to(o.scalar_type()).contiguous(), o.contiguous(), dir.contiguous(), t.contiguous(),
          w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_triplane_cuda(
    const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& depths,
    const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double box_warp,
    at::IntArrayRef axes, bool clip_to_box, double density_bias) {
  const Dims d = render::check_inputs(planes, origins, directions, depths, w1, b1, w2, b2, axes);
  check_cuda(planes, d, 1);
  const c10::cuda::CUDAGuard guard(planes.device());
  at::Tensor feat, depth, opacity, weights;
  std::tie(feat, depth, opacity, weights) = render::empty_outputs(d, origins);
  if (d.B * d.R == 0) return {feat, depth, opacity, weights};
  const Prepared in = prepare(planes, origins, directions, depths, w1, b1, w2, b2);
  AT_DISPATCH_FLOATING_TYPES(origins.scalar_type(), "render_triplane_cuda", [&] {
    using T = scalar_t;
    const Args<T> a = make_args<T>(d, in.planes, in.o, in.dir, in.t, in.w1, in.b1, in.w2, in.b2, box_warp, axes,
                                   clip_to_box, density_bias);
    const size_t smem = size_t(d.Hd * d.C + d.Hd + d.O * d.Hd + d.O) * sizeof(T);
    render_forward_kernel<T><<<cuda::grid_for(a.N, kThreads), kThreads, smem, cuda::stream()>>>(
        a, feat.mutable_data_ptr<T>(), depth.mutable_data_ptr<T>(), opacity.mutable_data_ptr<T>(),
        weights.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {feat, depth, opacity, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_triplane_backward_cuda(
    const std::optional<at::Tensor>& grad_features, const std::optional<at::Tensor>& grad_depth,
    const std::optional<at::Tensor>& grad_opacity, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& depths,
    const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double box_warp,
    at::IntArrayRef axes, bool clip_to_box, double density_bias) {
  const Dims d = render::check_inputs(planes, origins, directions, depths, w1, b1, w2, b2, axes);
  check_cuda(planes, d, 2);
  const c10::cuda::CUDAGuard guard(planes.device());
  const int64_t N = d.B * d.R;
  const render::Grads grads = render::grad_args(grad_features, grad_depth, grad_opacity, grad_weights, d, origins);
  const auto &gf = grads.features, &gd = grads.depth, &go = grads.opacity, &gw = grads.weights;
  auto opts = origins.options();
  at::Tensor gplanes = at::zeros(planes.sizes(), opts);
  const int64_t wsize = d.Hd * d.C + d.Hd + d.O * d.Hd + d.O;
  at::Tensor gdec = at::zeros({wsize}, opts);
  auto split = [&]() {
    int64_t off = 0;
    auto take = [&](std::vector<int64_t> shape, int64_t n) {
      at::Tensor v = gdec.narrow(0, off, n).view(shape);
      off += n;
      return v;
    };
    at::Tensor g1 = take({d.Hd, d.C}, d.Hd * d.C), gb1 = take({d.Hd}, d.Hd);
    at::Tensor g2 = take({d.O, d.Hd}, d.O * d.Hd), gb2 = take({d.O}, d.O);
    at::Tensor gp = gplanes.scalar_type() == planes.scalar_type() ? gplanes : gplanes.to(planes.scalar_type());
    return std::make_tuple(gp, g1, gb1, g2, gb2);
  };
  if (N == 0 || (!gf && !gd && !go && !gw)) return split();
  const Prepared in = prepare(planes, origins, directions, depths, w1, b1, w2, b2);
  at::Tensor scratch = at::empty({N, 4, d.S}, opts);
  AT_DISPATCH_FLOATING_TYPES(origins.scalar_type(), "render_triplane_backward_cuda", [&] {
    using T = scalar_t;
    const Args<T> a = make_args<T>(d, in.planes, in.o, in.dir, in.t, in.w1, in.b1, in.w2, in.b2, box_warp, axes,
                                   clip_to_box, density_bias);
    auto ptr = [](const std::optional<at::Tensor>& g) -> const T* {
      return g.has_value() ? g->const_data_ptr<T>() : nullptr;
    };
    const size_t smem = 2 * size_t(wsize) * sizeof(T);
    render_backward_kernel<T><<<cuda::grid_for(a.N, kThreads), kThreads, smem, cuda::stream()>>>(
        a, ptr(gf), ptr(gd), ptr(go), ptr(gw), scratch.mutable_data_ptr<T>(), gplanes.mutable_data_ptr<T>(),
        gdec.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return split();
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CUDA, m) {
  m.impl("render_triplane", &render_triplane_cuda);
  m.impl("render_triplane_backward", &render_triplane_backward_cuda);
}

}  // namespace oneshot
