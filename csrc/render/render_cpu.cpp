// CPU kernels of oneshot::render_triplane and its backward (render/render.h has the contract).
//
// One ray at a time, rays in parallel. Per ray the S samples go through the stages as small matrices held in
// per-thread scratch ([S, C] features, [S, hidden] pre-activations, [S, 1 + Co] outputs): the tri-plane taps,
// the two decoder layers as loops that vectorise over the output width, then the compositing scan of ray_march.
// The backward recomputes all of it per ray, runs ray_march's reverse sweep, back-propagates through the
// decoder (its weight gradients summed per worker) and scatters the feature gradients into the planes'
// gradient. Workers own fixed blocks of rays and a private planes-gradient buffer each (block 0 writes the
// output itself), summed in block order at the end: no atomics, and the same sums for the same thread count.
// Nothing of size [R, S, *] is allocated.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
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
  const T* planes;  // channels-last [B, 3, H, W, C], contiguous
  const T *origins, *dirs, *depths;
  const T *w1t, *b1, *w2t, *b2;  // w1t [C, Hd], w2t [Hd, O] (transposed copies); b1 [Hd], b2 [O]
  const T *w1, *w2;              // w1 [Hd, C], w2 [O, Hd] as given
  T scale, half_box, bias;
  int64_t ax[3][2];
  bool clip;
};

template <typename T>
struct Scratch {
  std::vector<T> F, Hp, A, Y, col, sig, gF, gY, gA, gc, gs;
  std::vector<uint8_t> inside;
  // ray_march scratch
  std::vector<T> alpha, e, slope, tbar, delta, trans, w, omega, G;
  Scratch(const Dims& d)
      : F(d.S * d.C), Hp(d.S * d.Hd), A(d.S * d.Hd), Y(d.S * d.O), col(d.S * (d.O - 1)), sig(d.S), gF(d.S * d.C),
        gY(d.S * d.O), gA(d.S * d.Hd), gc(d.S * (d.O - 1)), gs(d.S), inside(d.S), alpha(d.S), e(d.S), slope(d.S),
        tbar(d.S), delta(d.S), trans(d.S), w(d.S), omega(d.S), G(d.S) {}
};

template <typename T>
inline T softplus(T x) {
  return raymarch::softplus(x);
}

// Per-sample decoder forward for the S samples of one ray: F -> Hp, A -> Y -> sig, col.
template <typename T>
ONESHOT_CPU_MULTIVERSION void decode(const Problem<T>& P, Scratch<T>& sc) {
  const Dims& d = P.d;
  const int64_t S = d.S, C = d.C, Hd = d.Hd, O = d.O, Co = O - 1;
  for (int64_t k = 0; k < S; ++k) {
    T* h = sc.Hp.data() + k * Hd;
    for (int64_t j = 0; j < Hd; ++j) h[j] = P.b1[j];
    const T* f = sc.F.data() + k * C;
    for (int64_t c = 0; c < C; ++c) {
      const T fc = f[c];
      const T* wr = P.w1t + c * Hd;
      for (int64_t j = 0; j < Hd; ++j) h[j] += fc * wr[j];
    }
    T* a = sc.A.data() + k * Hd;
    for (int64_t j = 0; j < Hd; ++j) a[j] = softplus(h[j]);
    T* y = sc.Y.data() + k * O;
    for (int64_t o = 0; o < O; ++o) y[o] = P.b2[o];
    for (int64_t j = 0; j < Hd; ++j) {
      const T aj = a[j];
      const T* wr = P.w2t + j * O;
      for (int64_t o = 0; o < O; ++o) y[o] += aj * wr[o];
    }
    sc.sig[k] = sc.inside[k] ? y[0] : T(render::kOutsideDensity);
    T* cl = sc.col.data() + k * Co;
    for (int64_t o = 0; o < Co; ++o) cl[o] = render::sigmoid(y[1 + o]) * T(render::kColorScale) - T(render::kColorShift);
  }
}

// The point of sample k of ray (b, r), its taps on the three planes, and its mean feature F[k].
template <typename T>
inline void sample_features(const Problem<T>& P, int64_t b, int64_t r, Scratch<T>& sc) {
  const Dims& d = P.d;
  const int64_t S = d.S, C = d.C, H = d.H, W = d.W;
  const T* o = P.origins + (b * d.R + r) * 3;
  const T* dir = P.dirs + (b * d.R + r) * 3;
  const T* t = P.depths + (b * d.R + r) * S;
  const T* base = P.planes + b * 3 * H * W * C;
  for (int64_t k = 0; k < S; ++k) {
    T p[3];
    for (int i = 0; i < 3; ++i) p[i] = o[i] + t[k] * dir[i];
    sc.inside[k] = std::max({std::fabs(p[0]), std::fabs(p[1]), std::fabs(p[2])}) <= P.half_box;
    T* f = sc.F.data() + k * C;
    for (int64_t c = 0; c < C; ++c) f[c] = T(0);
    for (int pl = 0; pl < 3; ++pl) {
      const triplane::Taps<T> tp = triplane::taps<T>(p[P.ax[pl][0]] * P.scale, p[P.ax[pl][1]] * P.scale, W, H);
      // plane sample = sum of the inside taps in tap order; then the mean over planes, as (s0 + s1 + s2) / 3
      for (int q = 0; q < 4; ++q) {
        int64_t x, y;
        if (!triplane::tap_inside(tp, q, W, H, &x, &y)) continue;
        const T wq = triplane::tap_weight(tp, q);
        const T* src = base + ((pl * H + y) * W + x) * C;
        for (int64_t c = 0; c < C; ++c) f[c] += wq * src[c];
      }
    }
    for (int64_t c = 0; c < C; ++c) f[c] /= T(3);
  }
}

// ray_march's forward on the ray's colours and densities (see raymarch_cpu.cpp, written out for one ray).
template <typename T>
inline void composite(const Problem<T>& P, const T* t, Scratch<T>& sc, T* f_out, T* depth_out, T* op_out,
                      T* w_out, bool slope) {
  const int64_t S = P.d.S, K = S - 1, Co = P.d.O - 1;
  for (int64_t k = 0; k < K; ++k) {
    const T m = (sc.sig[k] + sc.sig[k + 1]) / T(2) + P.bias;
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
  sc.omega[0] = sc.w[0] / T(2);
  for (int64_t k = 1; k < K; ++k) sc.omega[k] = (sc.w[k - 1] + sc.w[k]) / T(2);
  sc.omega[K] = sc.w[K - 1] / T(2);
  if (f_out) {
    for (int64_t c = 0; c < Co; ++c) f_out[c] = T(0);
    for (int64_t k = 0; k < S; ++k) {
      const T om = sc.omega[k];
      const T* ck = sc.col.data() + k * Co;
      for (int64_t c = 0; c < Co; ++c) f_out[c] += om * ck[c];
    }
    *op_out = op;
    *depth_out = raymarch::composite_depth(nu, op, t[0], t[K]);
    for (int64_t k = 0; k < K; ++k) w_out[k] = sc.w[k];
  } else {
    sc.G[0] = op;  // the backward reads opacity and the depth numerator from here
    sc.G[1] = nu;
  }
}

template <typename T>
Problem<T> problem(const Dims& d, const at::Tensor& planes_cl, const at::Tensor& origins, const at::Tensor& dirs,
                   const at::Tensor& depths, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                   const at::Tensor& b2, const at::Tensor& w1t, const at::Tensor& w2t, double box_warp,
                   at::IntArrayRef axes, bool clip, double density_bias) {
  Problem<T> P;
  P.d = d;
  P.planes = planes_cl.const_data_ptr<T>();
  P.origins = origins.const_data_ptr<T>();
  P.dirs = dirs.const_data_ptr<T>();
  P.depths = depths.const_data_ptr<T>();
  P.w1 = w1.const_data_ptr<T>();
  P.b1 = b1.const_data_ptr<T>();
  P.w2 = w2.const_data_ptr<T>();
  P.b2 = b2.const_data_ptr<T>();
  P.w1t = w1t.const_data_ptr<T>();
  P.w2t = w2t.const_data_ptr<T>();
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
  at::Tensor planes_cl, origins, dirs, depths, w1, b1, w2, b2, w1t, w2t;
};

Inputs prepare(const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions,
               const at::Tensor& depths, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
               const at::Tensor& b2) {
  Inputs in;
  in.planes_cl = planes.permute({0, 1, 3, 4, 2}).contiguous();
  in.origins = origins.contiguous();
  in.dirs = directions.contiguous();
  in.depths = depths.contiguous();
  in.w1 = w1.contiguous();
  in.b1 = b1.contiguous();
  in.w2 = w2.contiguous();
  in.b2 = b2.contiguous();
  in.w1t = w1.t().contiguous();
  in.w2t = w2.t().contiguous();
  return in;
}

void check_cpu(const at::Tensor& planes) {
  TORCH_CHECK_VALUE(planes.device().is_cpu(), "render_triplane (CPU kernel) got planes on ", planes.device());
  TORCH_CHECK_VALUE(planes.scalar_type() == at::kFloat || planes.scalar_type() == at::kDouble,
                    "render_triplane's CPU kernel takes float32 or float64, got ", dtype_str(planes.scalar_type()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_triplane_cpu(
    const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& depths,
    const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double box_warp,
    at::IntArrayRef axes, bool clip_to_box, double density_bias) {
  const Dims d = render::check_inputs(planes, origins, directions, depths, w1, b1, w2, b2, axes);
  check_cpu(planes);
  auto opts = planes.options();
  const int64_t Co = d.O - 1;
  at::Tensor feat = at::empty({d.B, d.R, Co}, opts);
  at::Tensor depth = at::empty({d.B, d.R}, opts);
  at::Tensor opacity = at::empty({d.B, d.R}, opts);
  at::Tensor weights = at::empty({d.B, d.R, d.S - 1}, opts);
  if (d.B * d.R == 0) return {feat, depth, opacity, weights};
  const Inputs in = prepare(planes, origins, directions, depths, w1, b1, w2, b2);
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "render_triplane_cpu", [&] {
    using T = scalar_t;
    const Problem<T> P = problem<T>(d, in.planes_cl, in.origins, in.dirs, in.depths, in.w1, in.b1, in.w2, in.b2,
                                    in.w1t, in.w2t, box_warp, axes, clip_to_box, density_bias);
    T *f = feat.mutable_data_ptr<T>(), *dp = depth.mutable_data_ptr<T>(), *op = opacity.mutable_data_ptr<T>(),
      *w = weights.mutable_data_ptr<T>();
    at::parallel_for(0, d.B * d.R, 16, [&](int64_t begin, int64_t end) {
      Scratch<T> sc(d);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / d.R, r = i % d.R;
        sample_features<T>(P, b, r, sc);
        if (!P.clip) std::fill(sc.inside.begin(), sc.inside.end(), uint8_t(1));
        decode<T>(P, sc);
        composite<T>(P, P.depths + i * d.S, sc, f + i * Co, dp + i, op + i, w + i * (d.S - 1), false);
      }
    });
  });
  return {feat, depth, opacity, weights};
}

// The backward of one ray: gF (d loss / d mean feature, per sample) and the decoder's gradients (accumulated).
template <typename T>
ONESHOT_CPU_MULTIVERSION void backward_ray(const Problem<T>& P, int64_t i, const T* gf, const T* gd, const T* go,
                                           const T* gw, Scratch<T>& sc, T* gw1, T* gb1, T* gw2, T* gb2) {
  const Dims& d = P.d;
  const int64_t S = d.S, K = S - 1, C = d.C, Hd = d.Hd, O = d.O, Co = O - 1;
  const T* t = P.depths + i * S;
  composite<T>(P, t, sc, nullptr, nullptr, nullptr, nullptr, true);
  const T op = sc.G[0], num = sc.G[1];
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
    for (int64_t k = 0; k < S; ++k) sc.gs[k] = cpu::dot(gf, sc.col.data() + k * Co, Co);  // dots, reused below
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
    T* gy = sc.gY.data() + k * O;
    gy[0] = sc.inside[k] ? sc.gs[k] : T(0);
    const T* y = sc.Y.data() + k * O;
    for (int64_t o = 0; o < Co; ++o) {
      const T s = render::sigmoid(y[1 + o]);
      gy[1 + o] = gf ? gf[o] * sc.omega[k] * T(render::kColorScale) * s * (T(1) - s) : T(0);
    }
  }
  for (int64_t k = 0; k < S; ++k) {
    const T* gy = sc.gY.data() + k * O;
    const T* a = sc.A.data() + k * Hd;
    for (int64_t o = 0; o < O; ++o) {
      const T g = gy[o];
      gb2[o] += g;
      T* row = gw2 + o * Hd;
      for (int64_t j = 0; j < Hd; ++j) row[j] += g * a[j];
    }
    // gA = w2^T gy; gH = gA * softplus'(h)
    T* ga = sc.gA.data() + k * Hd;
    for (int64_t j = 0; j < Hd; ++j) ga[j] = T(0);
    for (int64_t o = 0; o < O; ++o) {
      const T g = gy[o];
      const T* wr = P.w2 + o * Hd;
      for (int64_t j = 0; j < Hd; ++j) ga[j] += g * wr[j];
    }
    const T* h = sc.Hp.data() + k * Hd;
    for (int64_t j = 0; j < Hd; ++j) ga[j] *= raymarch::softplus_grad(h[j]);
    const T* f = sc.F.data() + k * C;
    T* gfk = sc.gF.data() + k * C;
    for (int64_t c = 0; c < C; ++c) gfk[c] = T(0);
    for (int64_t j = 0; j < Hd; ++j) {
      const T g = ga[j];
      gb1[j] += g;
      T* row = gw1 + j * C;
      for (int64_t c = 0; c < C; ++c) row[c] += g * f[c];
      const T* wr = P.w1 + j * C;
      for (int64_t c = 0; c < C; ++c) gfk[c] += g * wr[c];
    }
  }
}

// Scatter gF / 3 of every sample of ray (b, r) into the channels-last planes gradient `gp` ([B, 3, H, W, C]).
template <typename T>
inline void scatter_ray(const Problem<T>& P, int64_t b, int64_t r, const Scratch<T>& sc, T* gp) {
  const Dims& d = P.d;
  const int64_t S = d.S, C = d.C, H = d.H, W = d.W;
  const T* o = P.origins + (b * d.R + r) * 3;
  const T* dir = P.dirs + (b * d.R + r) * 3;
  const T* t = P.depths + (b * d.R + r) * S;
  T* base = gp + b * 3 * H * W * C;
  for (int64_t k = 0; k < S; ++k) {
    T p[3];
    for (int i = 0; i < 3; ++i) p[i] = o[i] + t[k] * dir[i];
    const T* g = sc.gF.data() + k * C;
    for (int pl = 0; pl < 3; ++pl) {
      const triplane::Taps<T> tp = triplane::taps<T>(p[P.ax[pl][0]] * P.scale, p[P.ax[pl][1]] * P.scale, W, H);
      for (int q = 0; q < 4; ++q) {
        int64_t x, y;
        if (!triplane::tap_inside(tp, q, W, H, &x, &y)) continue;
        const T wq = triplane::tap_weight(tp, q) / T(3);
        T* dst = base + ((pl * H + y) * W + x) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] += wq * g[c];
      }
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
  auto grad = [&](const std::optional<at::Tensor>& g, std::vector<int64_t> shape, const char* name) {
    std::optional<at::Tensor> out;
    if (!g.has_value() || !g->defined()) return out;
    TORCH_CHECK_VALUE(g->sizes() == at::IntArrayRef(shape), name, " must be ", at::IntArrayRef(shape), ", got ",
                      shape_str(*g));
    check_same_dtype(planes, *g, "planes", name);
    out = g->contiguous();
    return out;
  };
  const auto gf = grad(grad_features, {d.B, d.R, Co}, "grad_features");
  const auto gd = grad(grad_depth, {d.B, d.R}, "grad_depth");
  const auto go = grad(grad_opacity, {d.B, d.R}, "grad_opacity");
  const auto gw = grad(grad_weights, {d.B, d.R, d.S - 1}, "grad_weights");
  auto opts = planes.options();
  at::Tensor gp_cl = at::zeros({d.B, 3, d.H, d.W, d.C}, opts);
  at::Tensor gw1 = at::zeros({d.Hd, d.C}, opts), gb1 = at::zeros({d.Hd}, opts);
  at::Tensor gw2 = at::zeros({d.O, d.Hd}, opts), gb2 = at::zeros({d.O}, opts);
  if (N == 0 || (!gf && !gd && !go && !gw)) return {gp_cl.permute({0, 1, 4, 2, 3}), gw1, gb1, gw2, gb2};
  const Inputs in = prepare(planes, origins, directions, depths, w1, b1, w2, b2);
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "render_triplane_backward_cpu", [&] {
    using T = scalar_t;
    const Problem<T> P = problem<T>(d, in.planes_cl, in.origins, in.dirs, in.depths, in.w1, in.b1, in.w2, in.b2,
                                    in.w1t, in.w2t, box_warp, axes, clip_to_box, density_bias);
    auto ptr = [](const std::optional<at::Tensor>& g) -> const T* {
      return g.has_value() ? g->const_data_ptr<T>() : nullptr;
    };
    const T *pgf = ptr(gf), *pgd = ptr(gd), *pgo = ptr(go), *pgw = ptr(gw);
    const int64_t plane_size = d.B * 3 * d.H * d.W * d.C;
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (N + 63) / 64));
    // Block 0 writes into the output; the others into private buffers, summed in block order below.
    std::vector<std::vector<T>> priv(blocks - 1);
    std::vector<std::vector<T>> wgrads(blocks, std::vector<T>(d.Hd * d.C + d.Hd + d.O * d.Hd + d.O, T(0)));
    T* gp0 = gp_cl.mutable_data_ptr<T>();
    at::parallel_for(0, blocks, 1, [&](int64_t bb, int64_t be) {
      for (int64_t blk = bb; blk < be; ++blk) {
        T* gp = gp0;
        if (blk > 0) {
          priv[blk - 1].assign(plane_size, T(0));
          gp = priv[blk - 1].data();
        }
        T* wg = wgrads[blk].data();
        T *g_w1 = wg, *g_b1 = g_w1 + d.Hd * d.C, *g_w2 = g_b1 + d.Hd, *g_b2 = g_w2 + d.O * d.Hd;
        Scratch<T> sc(d);
        const int64_t r0 = cpu::split_begin(blk, blocks, N), r1 = cpu::split_begin(blk + 1, blocks, N);
        for (int64_t i = r0; i < r1; ++i) {
          const int64_t b = i / d.R, r = i % d.R;
          sample_features<T>(P, b, r, sc);
          if (!P.clip) std::fill(sc.inside.begin(), sc.inside.end(), uint8_t(1));
          decode<T>(P, sc);
          backward_ray<T>(P, i, pgf ? pgf + i * Co : nullptr, pgd ? pgd + i : nullptr, pgo ? pgo + i : nullptr,
                          pgw ? pgw + i * (d.S - 1) : nullptr, sc, g_w1, g_b1, g_w2, g_b2);
          scatter_ray<T>(P, b, r, sc, gp);
        }
      }
    });
    if (blocks > 1) {
      at::parallel_for(0, plane_size, 1 << 14, [&](int64_t begin, int64_t end) {
        for (int64_t blk = 1; blk < blocks; ++blk) {
          const T* src = priv[blk - 1].data();
          for (int64_t j = begin; j < end; ++j) gp0[j] += src[j];
        }
      });
    }
    T* outs[4] = {gw1.mutable_data_ptr<T>(), gb1.mutable_data_ptr<T>(), gw2.mutable_data_ptr<T>(),
                  gb2.mutable_data_ptr<T>()};
    const int64_t sizes[4] = {d.Hd * d.C, d.Hd, d.O * d.Hd, d.O};
    int64_t off = 0;
    for (int q = 0; q < 4; ++q) {
      for (int64_t j = 0; j < sizes[q]; ++j) {
        T acc = T(0);
        for (int64_t blk = 0; blk < blocks; ++blk) acc += wgrads[blk][off + j];
        outs[q][j] = acc;
      }
      off += sizes[q];
    }
  });
  return {gp_cl.permute({0, 1, 4, 2, 3}), gw1, gb1, gw2, gb2};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) {
  m.impl("render_triplane", &render_triplane_cpu);
  m.impl("render_triplane_backward", &render_triplane_backward_cpu);
}

}  // namespace oneshot
