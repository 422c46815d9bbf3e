// CPU kernels of oneshot::ray_march and its backward: one ray at a time, rays in parallel.
//
// Each ray is processed in phases so that everything but two short serial scans vectorises:
//   1. per interval (vectorised): the softplus argument, sigma, exp(-sigma delta), alpha, the softplus slope;
//   2. the transmittance scan (serial, scalars only): weights, opacity, depth numerator;
//   3. per sample (vectorised over channels): features += omega_s c_s with omega_s = (w_{s-1} + w_s) / 2.
// The backward recomputes 1-2 from the inputs (transmittance is never recovered by division from the end of
// the ray, which underflows once a few samples are opaque), takes <grad_features, c_s> once per sample, runs
// the reverse sweep for d/d alpha on scalars, and writes the gradients. Scratch is a few arrays of length S
// per thread; nothing is stored per sample beyond the op's outputs.
// float uses vectorisable exp/log1p (common/cpu_math.h, ~2 ulp); double uses std:: and torch's formulas.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_buffers.h"
#include "common/cpu_math.h"
#include "raymarch/raymarch.h"
#include "raymarch/raymarch_args.h"

namespace oneshot {
namespace {

using raymarch::Dims;
using raymarch::grad_arg;
using raymarch::with;

// Per-thread scratch for one ray. The interval arrays are padded to a multiple of kPad so that phase 1 runs
// whole vectors only (a scalar remainder of up to 7 transcendental-heavy intervals cost as much as the vector
// part at S = 96); the padding intervals copy the last sample (delta = 0) and are never read.
constexpr int64_t kPad = 16;

template <typename T>
struct Scratch {
  int64_t Kp;
  std::vector<T> s_pad, t_pad, alpha, e, slope, tbar, delta, trans, w, omega, dots, G;
  explicit Scratch(int64_t S)
      : Kp((S - 1 + kPad - 1) / kPad * kPad),
        s_pad(Kp + 1), t_pad(Kp + 1), alpha(Kp), e(Kp), slope(Kp), tbar(Kp), delta(Kp), trans(S), w(S), omega(S),
        dots(S), G(S) {}
};

// Phase 1 for intervals [0, K): alpha, e = exp(-sigma delta), slope = d softplus / dm (kSlope: the backward
// only), tbar, delta.
template <typename T, bool kSlope>
ONESHOT_CPU_MULTIVERSION void intervals(const T* __restrict__ s, const T* __restrict__ t, int64_t K, T bias,
                                        T* __restrict__ alpha, T* __restrict__ e, T* __restrict__ slope,
                                        T* __restrict__ tbar, T* __restrict__ delta) {
  for (int64_t k = 0; k < K; ++k) {
    const T m = (s[k] + s[k + 1]) / T(2) + bias;
    const T dt = t[k + 1] - t[k];
    T sigma, sl, ek;
    if constexpr (std::is_same_v<T, float>) {
      // softplus(m) = max(m, 0) + log1p(exp(-|m|)); identity above torch's threshold of 20.
      const float en = cpu::fast_exp(-std::fabs(m));
      const float sp = (m > 0.0f ? m : 0.0f) + cpu::fast_log1p_nonneg(en);
      const float sg = (m >= 0.0f ? 1.0f : en) / (1.0f + en);
      sigma = m > 20.0f ? m : sp;
      sl = m > 20.0f ? 1.0f : sg;
      ek = cpu::fast_exp(-(sigma * dt));
    } else {
      sigma = raymarch::softplus(m);
      sl = kSlope ? raymarch::softplus_grad(m) : T(0);
      ek = std::exp(-(sigma * dt));
    }
    e[k] = ek;
    alpha[k] = T(1) - ek;
    if (kSlope) slope[k] = sl;
    tbar[k] = (t[k] + t[k + 1]) / T(2);
    delta[k] = dt;
  }
}

// Phase 1 for one ray of S samples, on the padded copies of its densities and depths.
template <typename T, bool kSlope>
inline void ray_intervals(const T* s, const T* t, int64_t S, T bias, Scratch<T>& sc) {
  T* sp = sc.s_pad.data();
  T* tp = sc.t_pad.data();
  for (int64_t k = 0; k < S; ++k) sp[k] = s[k];
  for (int64_t k = 0; k < S; ++k) tp[k] = t[k];
  for (int64_t k = S; k <= sc.Kp; ++k) sp[k] = s[S - 1];
  for (int64_t k = S; k <= sc.Kp; ++k) tp[k] = t[S - 1];
  intervals<T, kSlope>(sp, tp, sc.Kp, bias, sc.alpha.data(), sc.e.data(), sc.slope.data(), sc.tbar.data(),
                       sc.delta.data());
}

// Phase 2: transmittance before each interval, weights, opacity and depth numerator (serial scan).
// `next` prefetches meanwhile (the forward: the next ray's colors; the scan is latency-bound and the memory
// pipe idle, so this overlaps the next ray's loads with this ray's compute).
template <typename T>
inline void transmittance(const T* alpha, const T* tbar, int64_t K, T* trans, T* w, T* opacity, T* num,
                          const cpu::SpreadPrefetch& next) {
  T tr = T(1), op = T(0), nu = T(0);
  for (int64_t k = 0; k < K; ++k) {
    next.at(k);
    trans[k] = tr;
    w[k] = alpha[k] * tr;
    tr = raymarch::next_transmittance(tr, alpha[k]);
    op += w[k];
    nu += w[k] * tbar[k];
  }
  *opacity = op;
  *num = nu;
}

// omega_s = (w_{s-1} + w_s) / 2: the weight of sample s in the midpoint rule.
template <typename T>
inline void sample_weights(const T* w, int64_t S, T* omega) {
  const int64_t K = S - 1;
  omega[0] = w[0] / T(2);
  for (int64_t s = 1; s < K; ++s) omega[s] = (w[s - 1] + w[s]) / T(2);
  omega[K] = w[K - 1] / T(2);
}

// f[c] = init + sum_k omega_k col[k, c], summed in order of k. Channels go in register blocks of kBlock
// (accumulating in f itself chains every k through a store and a reload).
template <typename T, int kBlock>
inline void accumulate_block(const T* __restrict__ col, const T* __restrict__ omega, int64_t S, int64_t C, T init,
                             T* __restrict__ f) {
  T acc[kBlock];
  for (int l = 0; l < kBlock; ++l) acc[l] = init;
  for (int64_t k = 0; k < S; ++k) {
    const T om = omega[k];
    const T* ck = col + k * C;
    for (int l = 0; l < kBlock; ++l) acc[l] += om * ck[l];
  }
  for (int l = 0; l < kBlock; ++l) f[l] = acc[l];
}

template <typename T>
inline void accumulate(const T* col, const T* omega, int64_t S, int64_t C, T init, T* f) {
  constexpr int kVec = 32 / sizeof(T);  // one AVX2 vector
  int64_t c = 0;
  for (; c + 2 * kVec <= C; c += 2 * kVec) accumulate_block<T, 2 * kVec>(col + c, omega, S, C, init, f + c);
  for (; c + kVec <= C; c += kVec) accumulate_block<T, kVec>(col + c, omega, S, C, init, f + c);
  for (; c < C; ++c) {
    T acc = init;
    for (int64_t k = 0; k < S; ++k) acc += omega[k] * col[k * C + c];
    f[c] = acc;
  }
}

template <typename T>
ONESHOT_CPU_MULTIVERSION void forward_ray(const Dims& d, const T* col, const T* s, const T* t, T bias, bool white,
                                          const cpu::SpreadPrefetch& next, Scratch<T>& sc, T* f, T* depth,
                                          T* opacity, T* w_out) {
  const int64_t S = d.S, C = d.C, K = S - 1;
  ray_intervals<T, false>(s, t, S, bias, sc);
  T op, num;
  transmittance<T>(sc.alpha.data(), sc.tbar.data(), K, sc.trans.data(), w_out, &op, &num, next);
  sample_weights<T>(w_out, S, sc.omega.data());
  accumulate<T>(col, sc.omega.data(), S, C, white ? T(1) - op : T(0), f);
  *opacity = op;
  *depth = raymarch::composite_depth(num, op, t[0], t[K]);
}

template <typename T>
ONESHOT_CPU_MULTIVERSION void backward_ray(const Dims& d, const T* col, const T* s, const T* t, T bias, bool white,
                                           const T* gf, const T* gd, const T* go, const T* gw, Scratch<T>& sc, T* gc,
                                           T* gs) {
  const int64_t S = d.S, C = d.C, K = S - 1;
  ray_intervals<T, true>(s, t, S, bias, sc);
  T op, num;
  transmittance<T>(sc.alpha.data(), sc.tbar.data(), K, sc.trans.data(), sc.w.data(), &op, &num,
                   cpu::SpreadPrefetch(nullptr, 0, 0));  // the backward's own streams keep the fill buffers busy

  // dL/dw_k = gw_k + <gf, cbar_k> + g_opacity_eff + depth_coef (tbar_k - depth)
  T g_op = go ? *go : T(0);
  if (white && gf) {
    for (int64_t c = 0; c < C; ++c) g_op -= gf[c];
  }
  T depth_coef = T(0), depth_val = T(0);
  if (gd && raymarch::depth_passes_grad(num, op, t[0], t[K])) {
    depth_val = num / op;
    depth_coef = *gd / op;
  }
  T* G = sc.G.data();
  for (int64_t k = 0; k < K; ++k) G[k] = g_op + depth_coef * (sc.tbar[k] - depth_val);
  if (gw) {
    for (int64_t k = 0; k < K; ++k) G[k] += gw[k];
  }
  if (gf) {
    for (int64_t k = 0; k < S; ++k) sc.dots[k] = cpu::dot(gf, col + k * C, C);
    for (int64_t k = 0; k < K; ++k) G[k] += (sc.dots[k] + sc.dots[k + 1]) / T(2);
  }
  // Reverse sweep: suffix = sum_{i>k} G_i alpha_i prod_{k<j<i} (1 - alpha_j + 1e-10); dL/dalpha_k = T_k (G_k - suffix).
  T suffix = T(0);
  for (int64_t k = K - 1; k >= 0; --k) {
    const T a = sc.alpha[k];
    const T d_alpha = sc.trans[k] * (G[k] - suffix);
    suffix = G[k] * a + ((T(1) - a) + T(1e-10)) * suffix;
    G[k] = d_alpha;  // reuse: dL/dalpha_k
  }
  // dL/dm_k = dL/dalpha_k * delta_k * e_k * softplus'(m_k); each m_k is the mean of samples k and k + 1.
  for (int64_t k = 0; k < K; ++k) G[k] = G[k] * sc.delta[k] * sc.e[k] * sc.slope[k];
  gs[0] = G[0] / T(2);
  for (int64_t k = 1; k < K; ++k) gs[k] = (G[k - 1] + G[k]) / T(2);
  gs[K] = G[K - 1] / T(2);
  if (gf) {
    sample_weights<T>(sc.w.data(), S, sc.omega.data());
    for (int64_t k = 0; k < S; ++k) cpu::scale_stream(gf, sc.omega[k], C, gc + k * C);
  } else {
    for (int64_t i = 0; i < S * C; ++i) gc[i] = T(0);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ray_march_cpu(const at::Tensor& colors,
                                                                         const at::Tensor& densities,
                                                                         const at::Tensor& depths, double density_bias,
                                                                         bool white_background) {
  const Dims d = raymarch::check_inputs(colors, densities, depths, /*cuda=*/false);
  auto opts = colors.options();
  at::Tensor feat = at::empty(with(d.lead, {d.C}), opts);
  at::Tensor depth = at::empty(d.lead, opts);
  at::Tensor opacity = at::empty(d.lead, opts);
  at::Tensor weights = at::empty(with(d.lead, {d.S - 1}), opts);
  if (d.R == 0) return {feat, depth, opacity, weights};
  const at::Tensor col = colors.contiguous(), dens = densities.contiguous(), dep = depths.contiguous();
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "ray_march_cpu", [&] {
    using T = scalar_t;
    const T* c = col.const_data_ptr<T>();
    const T* s = dens.const_data_ptr<T>();
    const T* t = dep.const_data_ptr<T>();
    T *f = feat.mutable_data_ptr<T>(), *dp = depth.mutable_data_ptr<T>(), *op = opacity.mutable_data_ptr<T>(),
      *w = weights.mutable_data_ptr<T>();
    const T bias = static_cast<T>(density_bias);
    at::parallel_for(0, d.R, 64, [&](int64_t begin, int64_t end) {
      Scratch<T> sc(d.S);
      for (int64_t r = begin; r < end; ++r) {
        const cpu::SpreadPrefetch next(r + 1 < end ? c + (r + 1) * d.S * d.C : nullptr,
                                       d.S * d.C * int64_t(sizeof(T)), d.S - 1);
        forward_ray<T>(d, c + r * d.S * d.C, s + r * d.S, t + r * d.S, bias, white_background, next, sc, f + r * d.C,
                       dp + r, op + r, w + r * (d.S - 1));
      }
    });
  });
  return {feat, depth, opacity, weights};
}

std::tuple<at::Tensor, at::Tensor> ray_march_backward_cpu(
    const std::optional<at::Tensor>& grad_features, const std::optional<at::Tensor>& grad_depth,
    const std::optional<at::Tensor>& grad_opacity, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths, double density_bias,
    bool white_background) {
  const Dims d = raymarch::check_inputs(colors, densities, depths, /*cuda=*/false);
  const auto gf = grad_arg(grad_features, with(d.lead, {d.C}), colors, "colors", "grad_features");
  const auto gd = grad_arg(grad_depth, d.lead, colors, "colors", "grad_depth");
  const auto go = grad_arg(grad_opacity, d.lead, colors, "colors", "grad_opacity");
  const auto gw = grad_arg(grad_weights, with(d.lead, {d.S - 1}), colors, "colors", "grad_weights");
  at::Tensor grad_colors = cpu::empty_large(colors.sizes(), colors.options());
  at::Tensor grad_dens = at::empty(densities.sizes(), densities.options());
  if (d.R == 0) return {grad_colors, grad_dens};
  const at::Tensor col = colors.contiguous(), dens = densities.contiguous(), dep = depths.contiguous();
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "ray_march_backward_cpu", [&] {
    using T = scalar_t;
    auto ptr = [](const std::optional<at::Tensor>& g) -> const T* {
      return g.has_value() ? g->const_data_ptr<T>() : nullptr;
    };
    const T *pgf = ptr(gf), *pgd = ptr(gd), *pgo = ptr(go), *pgw = ptr(gw);
    const T* c = col.const_data_ptr<T>();
    const T* s = dens.const_data_ptr<T>();
    const T* t = dep.const_data_ptr<T>();
    T* gc = grad_colors.mutable_data_ptr<T>();
    T* gs = grad_dens.mutable_data_ptr<T>();
    const T bias = static_cast<T>(density_bias);
    const int64_t S = d.S, C = d.C, K = S - 1;
    at::parallel_for(0, d.R, 64, [&](int64_t begin, int64_t end) {
      Scratch<T> sc(S);
      for (int64_t r = begin; r < end; ++r) {
        backward_ray<T>(d, c + r * S * C, s + r * S, t + r * S, bias, white_background, pgf ? pgf + r * C : nullptr,
                        pgd ? pgd + r : nullptr, pgo ? pgo + r : nullptr, pgw ? pgw + r * K : nullptr, sc,
                        gc + r * S * C, gs + r * S);
      }
      cpu::stream_fence();  // grad_colors went out with streaming stores
    });
  });
  return {grad_colors, grad_dens};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) {
  m.impl("ray_march", &ray_march_cpu);
  m.impl("ray_march_backward", &ray_march_backward_cpu);
}

}  // namespace oneshot
