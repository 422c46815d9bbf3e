// CPU kernels of oneshot::render_triplane and its backward (render/render.h has the contract).
//
// One ray at a time, rays in parallel. Per ray the S samples go through the stages as small matrices held in
// per-thread scratch ([S, C] features, [S, hidden] pre-activations, [S, 1 + Co] outputs): the tri-plane taps,
// the two decoder layers as loops that vectorise over the output width (softplus and sigmoid with the
// vectorisable exp / log1p of common/cpu_math.h in float), then the compositing scan of ray_march.
// The planes are read channels-last (C contiguous channels per tap): in place when they are, else from one
// transient copy per call.
// The backward recomputes all of it per ray, runs ray_march's reverse sweep and back-propagates through the
// decoder, in chunks of rays: (1) in parallel over fixed sub-blocks of the chunk, each with its own decoder
// gradient accumulator, keeping the per-sample feature gradients of the chunk ([chunk, S, C], a few MB);
// (2) the accumulators summed in sub-block order; (3) the feature gradients scattered into the planes'
// gradient, one worker per (batch, plane), rays in order. No atomics, no per-thread copies of the planes'
// gradient, and the same sums for any thread count (bitwise reproducible). Nothing of size [R, S, *] exists.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/cpu_math.h"
#include "raymarch/raymarch.h"
#include "render/render.h"
#include "render/render_args.h"
#include "triplane/triplane.h"

namespace oneshot {
namespace {

using render::Dims;

template <typename T>
struct Problem {
  Dims d;
  const T* planes;  // [B, 3, C, H, W] with element strides sb, sp, sc, sh, sw (channels-last when sc == 1)
  int64_t sb, sp, sc, sh, sw;
  const T *origins, *dirs, *depths;
  at::Tensor w1, b1t, w2, b2t;  // w1 [Hd, C], b1 [Hd], w2 [O, Hd], b2 [O] (contiguous), for the GEMMs
  T scale, half_box, bias;
  int64_t ax[3][2];
  bool clip;
};

// Rays per block: the decoder runs as GEMMs over the block's kBlock * S samples (ATen's, single-threaded
// inside the workers); blocks are fixed, so every sum has the same order for any thread count.
constexpr int64_t kBlock = 8;

template <typename T>
struct Scratch {
  int64_t rows;  // kBlock * S
  std::vector<T> F, Hp, A, Y, SG, col, sig, gF, gY, gA, gs;
  std::vector<uint8_t> inside;
  // ray_march scratch (one ray at a time)
  std::vector<T> alpha, e, slope, tbar, delta, trans, w, omega, G;
  at::Tensor tF, tHp, tA, tY, tgY, tgA, tgF;  // views of the arrays above as [rows, *] tensors
  Scratch(const Dims& d, at::ScalarType dtype)
      : rows(kBlock * d.S), F(rows * d.C), Hp(rows * d.Hd), A(rows * d.Hd), Y(rows * d.O), SG(rows * d.O),
        col(rows * (d.O - 1)), sig(rows), gF(rows * d.C), gY(rows * d.O), gA(rows * d.Hd), gs(d.S), inside(rows),
        alpha(d.S), e(d.S), slope(d.S), tbar(d.S), delta(d.S), trans(d.S), w(d.S), omega(rows), G(d.S) {
    auto opts = at::TensorOptions().dtype(dtype);
    auto view = [&](std::vector<T>& v, int64_t cols) { return at::from_blob(v.data(), {rows, cols}, opts); };
    tF = view(F, d.C);
    tHp = view(Hp, d.Hd);
    tA = view(A, d.Hd);
    tY = view(Y, d.O);
    tgY = view(gY, d.O);
    tgA = view(gA, d.Hd);
    tgF = view(gF, d.C);
  }
};

// y = softplus(x) (torch's, threshold 20) over n values; float uses the vectorisable exp / log1p.
template <typename T>
ONESHOT_CPU_MULTIVERSION void softplus_array(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T m = x[i];
    if constexpr (std::is_same_v<T, float>) {
      const float en = cpu::fast_exp(-std::fabs(m));
      const float sp = (m > 0.0f ? m : 0.0f) + cpu::fast_log1p_nonneg(en);
      y[i] = m > 20.0f ? m : sp;
    } else {
      y[i] = raymarch::softplus(m);
    }
  }
}

// y = sigmoid(x) over n values (the stable form: (x >= 0 ? 1 : e) / (1 + e), e = exp(-|x|)); `threshold`: 1
// above 20, as torch's softplus' derivative.
template <typename T, bool kThreshold>
ONESHOT_CPU_MULTIVERSION void sigmoid_array(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T m = x[i];
    T en;
    if constexpr (std::is_same_v<T, float>) {
      en = cpu::fast_exp(-std::fabs(m));
    } else {
      en = std::exp(-std::fabs(m));
    }
    const T sg = (m >= T(0) ? T(1) : en) / (T(1) + en);
    y[i] = (kThreshold && m > T(20)) ? T(1) : sg;
  }
}

// The decoder on the first n rows of the block: F -> Hp = F w1^T + b1, A = softplus(Hp), Y = A w2^T + b2,
// SG = sigmoid(Y); sig, col per row.
template <typename T>
void decode(const Problem<T>& P, Scratch<T>& sc, int64_t n) {
  const Dims& d = P.d;
  const int64_t Hd = d.Hd, O = d.O, Co = O - 1;
  at::Tensor Hp = sc.tHp.narrow(0, 0, n), A = sc.tA.narrow(0, 0, n), Y = sc.tY.narrow(0, 0, n);
  at::addmm_out(Hp, P.b1t, sc.tF.narrow(0, 0, n), P.w1.t());
  softplus_array<T>(sc.Hp.data(), sc.A.data(), n * Hd);
  at::addmm_out(Y, P.b2t, A, P.w2.t());
  sigmoid_array<T, false>(sc.Y.data(), sc.SG.data(), n * O);
  for (int64_t k = 0; k < n; ++k) {
    sc.sig[k] = sc.inside[k] ? sc.Y[k * O] : T(render::kOutsideDensity);
    const T* sg = sc.SG.data() + k * O + 1;
    T* cl = sc.col.data() + k * Co;
    for (int64_t o = 0; o < Co; ++o) cl[o] = sg[o] * T(render::kColorScale) - T(render::kColorShift);
  }
}

// The point of sample k of ray (b, r), its taps on the three planes, and its mean feature F[k].
template <typename T>
inline void sample_features(const Problem<T>& P, int64_t b, int64_t r, Scratch<T>& sc, int64_t q) {
  const Dims& d = P.d;
  const int64_t S = d.S, C = d.C, H = d.H, W = d.W;
  const T* o = P.origins + (b * d.R + r) * 3;
  const T* dir = P.dirs + (b * d.R + r) * 3;
  const T* t = P.depths + (b * d.R + r) * S;
  const T* base = P.planes + b * P.sb;
  for (int64_t k = 0; k < S; ++k) {
    T p[3];
    for (int i = 0; i < 3; ++i) p[i] = o[i] + t[k] * dir[i];
    sc.inside[q * S + k] = !P.clip || std::max({std::fabs(p[0]), std::fabs(p[1]), std::fabs(p[2])}) <= P.half_box;
    T* f = sc.F.data() + (q * S + k) * C;
    for (int64_t c = 0; c < C; ++c) f[c] = T(0);
    for (int pl = 0; pl < 3; ++pl) {
      const triplane::Taps<T> tp = triplane::taps<T>(p[P.ax[pl][0]] * P.scale, p[P.ax[pl][1]] * P.scale, W, H);
      // the sum of the inside taps in tap order, plane after plane; then the mean over planes
      for (int q = 0; q < 4; ++q) {
        int64_t x, y;
        if (!triplane::tap_inside(tp, q, W, H, &x, &y)) continue;
        const T wq = triplane::tap_weight(tp, q);
        const T* src = base + pl * P.sp + y * P.sh + x * P.sw;
        if (P.sc == 1) {
          for (int64_t c = 0; c < C; ++c) f[c] += wq * src[c];
        } else {
          for (int64_t c = 0; c < C; ++c) f[c] += wq * src[c * P.sc];
        }
      }
    }
    for (int64_t c = 0; c < C; ++c) f[c] /= T(3);
  }
}

// ray_march's forward for the ray in slot q (see raymarch_cpu.cpp, written out for one ray): alpha, e, slope (the
// backward's), tbar, delta, the transmittance, weights and omega in the scratch; with f_out, the features, depth
// and weights written. Returns (opacity, depth numerator).
template <typename T>
inline std::pair<T, T> composite(const Problem<T>& P, const T* t, Scratch<T>& sc, int64_t q, T* f_out, T* depth_out,
                                 T* op_out, T* w_out, bool slope) {
  const int64_t S = P.d.S, K = S - 1, Co = P.d.O - 1;
  const T* sig = sc.sig.data() + q * S;
  T* omega = sc.omega.data() + q * S;
  for (int64_t k = 0; k < K; ++k) {
    const T m = (sig[k] + sig[k + 1]) / T(2) + P.bias;
    const T dt = t[k + 1] - t[k];
    const T sigma = raymarch::softplus(m);
    const T ek = std::exp(-(sigma * dt));
    sc.e[k] = ek;
    sc.alpha[k] = T(1) - ek;
    if (slope) sc.slope[k] = raymarch::softplus_grad(m);
    sc.tbar[k] = (t[k] + t[k + 1]) / T(2);
    sc.delta[k] = dt;
  }
  T tr = T(1), op = T(0), nu = T(0);
  for (int64_t k = 0; k < K; ++k) {
    sc.trans[k] = tr;
    sc.w[k] = sc.alpha[k] * tr;
    tr = raymarch::next_transmittance(tr, sc.alpha[k]);
    op += sc.w[k];
    nu += sc.w[k] * sc.tbar[k];
  }
  omega[0] = sc.w[0] / T(2);
  for (int64_t k = 1; k < K; ++k) omega[k] = (sc.w[k - 1] + sc.w[k]) / T(2);
  omega[K] = sc.w[K - 1] / T(2);
  if (f_out) {
    for (int64_t c = 0; c < Co; ++c) f_out[c] = T(0);
    for (int64_t k = 0; k < S; ++k) {
      const T om = omega[k];
      const T* ck = sc.col.data() + (q * S + k) * Co;
      for (int64_t c = 0; c < Co; ++c) f_out[c] += om * ck[c];
    }
    *op_out = op;
    *depth_out = raymarch::composite_depth(nu, op, t[0], t[K]);
    for (int64_t k = 0; k < K; ++k) w_out[k] = sc.w[k];
  }
  return {op, nu};
}

template <typename T>
Problem<T> problem(const Dims& d, const at::Tensor& planes_cl, const at::Tensor& origins, const at::Tensor& dirs,
                   const at::Tensor& depths, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                   const at::Tensor& b2, double box_warp,
                   at::IntArrayRef axes, bool clip, double density_bias) {
  Problem<T> P;
  P.d = d;
  P.planes = planes_cl.const_data_ptr<T>();
  P.sb = planes_cl.stride(0);
  P.sp = planes_cl.stride(1);
  P.sc = planes_cl.stride(2);
  P.sh = planes_cl.stride(3);
  P.sw = planes_cl.stride(4);
  P.origins = origins.const_data_ptr<T>();
  P.dirs = dirs.const_data_ptr<T>();
  P.depths = depths.const_data_ptr<T>();
  P.w1 = w1;
  P.b1t = b1;
  P.w2 = w2;
  P.b2t = b2;
  P.scale = static_cast<T>(2.0 / box_warp);
  P.half_box = static_cast<T>(box_warp / 2);
  P.bias = static_cast<T>(density_bias);
  P.clip = clip;
  for (int p = 0; p < 3; ++p) {
    P.ax[p][0] = axes[2 * p];
    P.ax[p][1] = axes[2 * p + 1];
  }
  return P;
}

struct Inputs {
  at::Tensor planes_cl, origins, dirs, depths, w1, b1, w2, b2;
};

Inputs prepare(const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions,
               const at::Tensor& depths, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
               const at::Tensor& b2) {
  Inputs in;
  // The taps read C contiguous channels: planes whose channel stride is not 1 are copied channels-last once
  // per call (a transient copy of the planes; channels-last planes are read in place).
  // 16-bit planes are read from a float32 copy (accumulation is float32 anyway).
  const at::ScalarType compute = origins.scalar_type();
  if (planes.scalar_type() != compute) {
    in.planes_cl = planes.permute({0, 1, 3, 4, 2}).to(compute).contiguous().permute({0, 1, 4, 2, 3});
  } else {
    in.planes_cl = (planes.stride(2) == 1 || planes.size(2) == 1)
                       ? planes
                       : planes.permute({0, 1, 3, 4, 2}).contiguous().permute({0, 1, 4, 2, 3});
  }
  in.origins = origins.contiguous();
  in.dirs = directions.contiguous();
  in.depths = depths.contiguous();
  // detached: the decoder's GEMMs below run as plain ATen calls (this kernel is already below autograd)
  in.w1 = w1.detach().contiguous();
  in.b1 = b1.detach().contiguous();
  in.w2 = w2.detach().contiguous();
  in.b2 = b2.detach().contiguous();
  return in;
}

void check_cpu(const at::Tensor& planes) {
  TORCH_CHECK_VALUE(planes.device().is_cpu(), "render_triplane (CPU kernel) got planes on ", planes.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_triplane_cpu(
    const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& depths,
    const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double box_warp,
    at::IntArrayRef axes, bool clip_to_box, double density_bias) {
  const Dims d = render::check_inputs(planes, origins, directions, depths, w1, b1, w2, b2, axes);
  check_cpu(planes);
  const int64_t Co = d.O - 1;
  at::Tensor feat, depth, opacity, weights;  // float32 with 16-bit planes
  std::tie(feat, depth, opacity, weights) = render::empty_outputs(d, origins);
  if (d.B * d.R == 0) return {feat, depth, opacity, weights};
  const Inputs in = prepare(planes, origins, directions, depths, w1, b1, w2, b2);
  AT_DISPATCH_FLOATING_TYPES(origins.scalar_type(), "render_triplane_cpu", [&] {
    using T = scalar_t;
    const Problem<T> P = problem<T>(d, in.planes_cl, in.origins, in.dirs, in.depths, in.w1, in.b1, in.w2, in.b2,
                                    box_warp, axes, clip_to_box, density_bias);
    T *f = feat.mutable_data_ptr<T>(), *dp = depth.mutable_data_ptr<T>(), *op = opacity.mutable_data_ptr<T>(),
      *w = weights.mutable_data_ptr<T>();
    const int64_t N = d.B * d.R, nblocks = (N + kBlock - 1) / kBlock;
    at::parallel_for(0, nblocks, 1, [&](int64_t begin, int64_t end) {
      Scratch<T> sc(d, origins.scalar_type());
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t i0 = blk * kBlock, nq = std::min(kBlock, N - i0);
        for (int64_t q = 0; q < nq; ++q) sample_features<T>(P, (i0 + q) / d.R, (i0 + q) % d.R, sc, q);
        decode<T>(P, sc, nq * d.S);
        for (int64_t q = 0; q < nq; ++q) {
          const int64_t i = i0 + q;
          composite<T>(P, P.depths + i * d.S, sc, q, f + i * Co, dp + i, op + i, w + i * (d.S - 1), false);
        }
      }
    });
  });
  return {feat, depth, opacity, weights};
}

// The backward of ray i in slot q of the block, down to d loss / d decoder outputs: gY rows [q * S, (q + 1) * S).
template <typename T>
ONESHOT_CPU_MULTIVERSION void backward_ray(const Problem<T>& P, int64_t i, int64_t q, const T* gf, const T* gd,
                                           const T* go, const T* gw, Scratch<T>& sc) {
  const Dims& d = P.d;
  const int64_t S = d.S, K = S - 1, O = d.O, Co = O - 1;
  const T* t = P.depths + i * S;
  const auto [op, num] = composite<T>(P, t, sc, q, nullptr, nullptr, nullptr, nullptr, true);
  const T* col = sc.col.data() + q * S * Co;
  const T* omega = sc.omega.data() + q * S;
  // ray_march's backward (raymarch_cpu.cpp): dL/dw_k, the reverse sweep, then d/d densities and d/d colours.
  T g_op = go ? *go : T(0);
  T depth_coef = T(0), depth_val = T(0);
  if (gd && raymarch::depth_passes_grad(num, op, t[0], t[K])) {
    depth_val = num / op;
    depth_coef = *gd / op;
  }
  std::vector<T>& G = sc.G;
  for (int64_t k = 0; k < K; ++k) G[k] = g_op + depth_coef * (sc.tbar[k] - depth_val);
  if (gw) {
    for (int64_t k = 0; k < K; ++k) G[k] += gw[k];
  }
  if (gf) {
    for (int64_t k = 0; k < S; ++k) sc.gs[k] = cpu::dot(gf, col + k * Co, Co);  // dots, reused below
    for (int64_t k = 0; k < K; ++k) G[k] += (sc.gs[k] + sc.gs[k + 1]) / T(2);
  }
  T suffix = T(0);
  for (int64_t k = K - 1; k >= 0; --k) {
    const T a = sc.alpha[k];
    const T d_alpha = sc.trans[k] * (G[k] - suffix);
    suffix = G[k] * a + ((T(1) - a) + T(1e-10)) * suffix;
    G[k] = d_alpha;
  }
  for (int64_t k = 0; k < K; ++k) G[k] = G[k] * sc.delta[k] * sc.e[k] * sc.slope[k];
  sc.gs[0] = G[0] / T(2);
  for (int64_t k = 1; k < K; ++k) sc.gs[k] = (G[k - 1] + G[k]) / T(2);
  sc.gs[K] = G[K - 1] / T(2);
  // d/d decoder outputs: y_0 (where inside), y_{1+o} through the scaled sigmoid.
  for (int64_t k = 0; k < S; ++k) {
    const int64_t row = q * S + k;
    T* gy = sc.gY.data() + row * O;
    const T* sg = sc.SG.data() + row * O;
    for (int64_t o = 0; o < Co; ++o) {
      const T s = sg[1 + o];
      gy[1 + o] = gf ? gf[o] * omega[k] * T(render::kColorScale) * s * (T(1) - s) : T(0);
    }
    gy[0] = sc.inside[row] ? sc.gs[k] : T(0);
  }
}

// The decoder's backward on the first n rows of the block: its gradients added to gw1, gb1, gw2, gb2 (tensors
// over the block's accumulator), d loss / d features into gF.
template <typename T>
void decoder_backward(const Problem<T>& P, Scratch<T>& sc, int64_t n, at::Tensor& gw1, T* gb1, at::Tensor& gw2,
                      T* gb2) {
  const Dims& d = P.d;
  const int64_t Hd = d.Hd, O = d.O;
  at::Tensor gY = sc.tgY.narrow(0, 0, n), gA = sc.tgA.narrow(0, 0, n);
  for (int64_t k = 0; k < n; ++k) {
    const T* gy = sc.gY.data() + k * O;
    for (int64_t o = 0; o < O; ++o) gb2[o] += gy[o];
  }
  gw2.addmm_(gY.t(), sc.tA.narrow(0, 0, n));  // gw2 [O, Hd] += gY^T A
  at::mm_out(gA, gY, P.w2);                   // gA = gY w2
  sigmoid_array<T, true>(sc.Hp.data(), sc.A.data(), n * Hd);  // softplus'(h) (A is no longer needed)
  for (int64_t j = 0; j < n * Hd; ++j) sc.gA[j] *= sc.A[j];
  for (int64_t k = 0; k < n; ++k) {
    const T* ga = sc.gA.data() + k * Hd;
    for (int64_t j = 0; j < Hd; ++j) gb1[j] += ga[j];
  }
  gw1.addmm_(gA.t(), sc.tF.narrow(0, 0, n));   // gw1 [Hd, C] += gH^T F
  at::Tensor gF = sc.tgF.narrow(0, 0, n);
  at::mm_out(gF, gA, P.w1);  // gF = gH w1
}

// Scatter gF / 3 ([S, C], the ray's per-sample feature gradients) of ray (b, r) into plane `pl` of the
// channels-last planes gradient `gp` ([B, 3, H, W, C]).
template <typename T>
ONESHOT_CPU_MULTIVERSION void scatter_ray(const Problem<T>& P, int64_t b, int64_t r, int pl, const T* __restrict__ gF,
                                          T* __restrict__ gp) {
  const Dims& d = P.d;
  const int64_t S = d.S, C = d.C, H = d.H, W = d.W;
  const T* o = P.origins + (b * d.R + r) * 3;
  const T* dir = P.dirs + (b * d.R + r) * 3;
  const T* t = P.depths + (b * d.R + r) * S;
  T* base = gp + (b * 3 + pl) * H * W * C;
  for (int64_t k = 0; k < S; ++k) {
    T p[3];
    for (int i = 0; i < 3; ++i) p[i] = o[i] + t[k] * dir[i];
    const T* g = gF + k * C;
    const triplane::Taps<T> tp = triplane::taps<T>(p[P.ax[pl][0]] * P.scale, p[P.ax[pl][1]] * P.scale, W, H);
    for (int q = 0; q < 4; ++q) {
      int64_t x, y;
      if (!triplane::tap_inside(tp, q, W, H, &x, &y)) continue;
      const T wq = triplane::tap_weight(tp, q) / T(3);
      T* dst = base + (y * W + x) * C;
      for (int64_t c = 0; c < C; ++c) dst[c] += wq * g[c];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_triplane_backward_cpu(
    const std::optional<at::Tensor>& grad_features, const std::optional<at::Tensor>& grad_depth,
    const std::optional<at::Tensor>& grad_opacity, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& depths,
    const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double box_warp,
    at::IntArrayRef axes, bool clip_to_box, double density_bias) {
  const Dims d = render::check_inputs(planes, origins, directions, depths, w1, b1, w2, b2, axes);
  check_cpu(planes);
  const int64_t Co = d.O - 1, N = d.B * d.R;
  const render::Grads grads = render::grad_args(grad_features, grad_depth, grad_opacity, grad_weights, d, origins);
  const auto &gf = grads.features, &gd = grads.depth, &go = grads.opacity, &gw = grads.weights;
  auto opts = origins.options();
  at::Tensor gp_cl = at::zeros({d.B, 3, d.H, d.W, d.C}, opts);
  // the planes' gradient in their dtype: a view of the channels-last buffer (converted for 16-bit planes)
  auto planes_grad = [&]() {
    at::Tensor g = gp_cl.permute({0, 1, 4, 2, 3});
    return planes.scalar_type() == g.scalar_type() ? g : g.to(planes.scalar_type());
  };
  at::Tensor gw1 = at::zeros({d.Hd, d.C}, opts), gb1 = at::zeros({d.Hd}, opts);
  at::Tensor gw2 = at::zeros({d.O, d.Hd}, opts), gb2 = at::zeros({d.O}, opts);
  if (N == 0 || (!gf && !gd && !go && !gw)) return {planes_grad(), gw1, gb1, gw2, gb2};
  const Inputs in = prepare(planes, origins, directions, depths, w1, b1, w2, b2);
  AT_DISPATCH_FLOATING_TYPES(origins.scalar_type(), "render_triplane_backward_cpu", [&] {
    using T = scalar_t;
    const Problem<T> P = problem<T>(d, in.planes_cl, in.origins, in.dirs, in.depths, in.w1, in.b1, in.w2, in.b2,
                                    box_warp, axes, clip_to_box, density_bias);
    auto ptr = [](const std::optional<at::Tensor>& g) -> const T* {
      return g.has_value() ? g->const_data_ptr<T>() : nullptr;
    };
    const T *pgf = ptr(gf), *pgd = ptr(gd), *pgo = ptr(go), *pgw = ptr(gw);
    // Chunks of rays; each chunk in fixed blocks of kBlock rays with their own decoder-gradient accumulators.
    const int64_t chunk = std::min<int64_t>(N, 512);
    const int64_t max_subs = (chunk + kBlock - 1) / kBlock;
    const int64_t wsize = d.Hd * d.C + d.Hd + d.O * d.Hd + d.O;
    std::vector<T> gFbuf(chunk * d.S * d.C);
    std::vector<T> wacc(max_subs * wsize);
    std::vector<T> wtotal(wsize, T(0));
    T* gp = gp_cl.mutable_data_ptr<T>();
    for (int64_t c0 = 0; c0 < N; c0 += chunk) {
      const int64_t n = std::min(chunk, N - c0), subs = (n + kBlock - 1) / kBlock;
      at::parallel_for(0, subs, 1, [&](int64_t sb, int64_t se) {
        Scratch<T> sc(d, origins.scalar_type());
        for (int64_t u = sb; u < se; ++u) {
          T* wg = wacc.data() + u * wsize;
          std::fill(wg, wg + wsize, T(0));
          T *g_w1 = wg, *g_b1 = g_w1 + d.Hd * d.C, *g_w2 = g_b1 + d.Hd, *g_b2 = g_w2 + d.O * d.Hd;
          at::Tensor tw1 = at::from_blob(g_w1, {d.Hd, d.C}, opts);
          at::Tensor tw2 = at::from_blob(g_w2, {d.O, d.Hd}, opts);
          const int64_t i0 = c0 + u * kBlock, nq = std::min(c0 + (u + 1) * kBlock, c0 + n) - i0;
          for (int64_t q = 0; q < nq; ++q) sample_features<T>(P, (i0 + q) / d.R, (i0 + q) % d.R, sc, q);
          decode<T>(P, sc, nq * d.S);
          for (int64_t q = 0; q < nq; ++q) {
            const int64_t i = i0 + q;
            backward_ray<T>(P, i, q, pgf ? pgf + i * Co : nullptr, pgd ? pgd + i : nullptr, pgo ? pgo + i : nullptr,
                            pgw ? pgw + i * (d.S - 1) : nullptr, sc);
          }
          decoder_backward<T>(P, sc, nq * d.S, tw1, g_b1, tw2, g_b2);
          std::copy(sc.gF.begin(), sc.gF.begin() + nq * d.S * d.C, gFbuf.begin() + (i0 - c0) * d.S * d.C);
        }
      });
      for (int64_t u = 0; u < subs; ++u) {
        const T* wg = wacc.data() + u * wsize;
        for (int64_t j = 0; j < wsize; ++j) wtotal[j] += wg[j];
      }
      // One worker per (batch, plane) that the chunk touches: rays in order.
      const int64_t b_first = c0 / d.R, b_last = (c0 + n - 1) / d.R;
      at::parallel_for(0, (b_last - b_first + 1) * 3, 1, [&](int64_t tb, int64_t te) {
        for (int64_t task = tb; task < te; ++task) {
          const int64_t b = b_first + task / 3;
          const int pl = static_cast<int>(task % 3);
          const int64_t i0 = std::max(c0, b * d.R), i1 = std::min(c0 + n, (b + 1) * d.R);
          for (int64_t i = i0; i < i1; ++i) scatter_ray<T>(P, b, i % d.R, pl, gFbuf.data() + (i - c0) * d.S * d.C, gp);
        }
      });
    }
    T* outs[4] = {gw1.mutable_data_ptr<T>(), gb1.mutable_data_ptr<T>(), gw2.mutable_data_ptr<T>(),
                  gb2.mutable_data_ptr<T>()};
    const int64_t sizes[4] = {d.Hd * d.C, d.Hd, d.O * d.Hd, d.O};
    int64_t off = 0;
    for (int q = 0; q < 4; ++q) {
      std::copy(wtotal.begin() + off, wtotal.begin() + off + sizes[q], outs[q]);
      off += sizes[q];
    }
  });
  return {planes_grad(), gw1, gb1, gw2, gb2};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) {
  m.impl("render_triplane", &render_triplane_cpu);
  m.impl("render_triplane_backward", &render_triplane_backward_cpu);
}

}  // namespace oneshot
