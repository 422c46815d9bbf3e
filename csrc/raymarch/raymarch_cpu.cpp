// CPU kernels of oneshot::ray_march and its backward: one ray per iteration of a parallel loop.
//
// Backward is a reverse sweep per ray. It needs the transmittance T_k in reverse order; recovering it by
// division from the end of the ray underflows once a few samples are opaque, so a forward pre-pass
// recomputes T_k from the inputs and parks it in the grad_densities output row (which the reverse sweep then
// overwrites slot by slot, always after reading it). Nothing is stored per sample beyond the outputs.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "common/checks.h"
#include "raymarch/raymarch.h"

namespace oneshot {
namespace {

using raymarch::Interval;

struct Dims {
  int64_t R, S, C;
  std::vector<int64_t> lead;  // leading dims
};

Dims check_inputs(const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths) {
  TORCH_CHECK_VALUE(colors.dim() >= 2, "colors must be [..., S, C], got ", shape_str(colors));
  TORCH_CHECK_VALUE(densities.dim() == colors.dim() - 1 && densities.sizes() == colors.sizes().slice(0, colors.dim() - 1),
                    "densities must be [..., S] with the leading dims and S of colors ", shape_str(colors), ", got ",
                    shape_str(densities));
  TORCH_CHECK_VALUE(depths.sizes() == densities.sizes(), "depths must have the shape of densities ",
                    shape_str(densities), ", got ", shape_str(depths));
  check_float(colors, "colors");
  check_same_dtype(colors, densities, "colors", "densities");
  check_same_dtype(colors, depths, "colors", "depths");
  check_same_device(colors, densities, "colors", "densities");
  check_same_device(colors, depths, "colors", "depths");
  Dims d;
  d.S = densities.size(-1);
  TORCH_CHECK_VALUE(d.S >= 2, "ray_march needs S >= 2 samples per ray, got S = ", d.S);
  d.C = colors.size(-1);
  d.lead = densities.sizes().slice(0, densities.dim() - 1).vec();
  d.R = densities.numel() / d.S;
  return d;
}

std::vector<int64_t> with(std::vector<int64_t> lead, std::initializer_list<int64_t> tail) {
  lead.insert(lead.end(), tail.begin(), tail.end());
  return lead;
}

template <typename T>
void forward_kernel(const Dims& d, const T* colors, const T* dens, const T* depths, T density_bias, bool white,
                    T* feat, T* depth, T* opacity, T* weights) {
  const int64_t S = d.S, C = d.C, K = S - 1;
  at::parallel_for(0, d.R, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* col = colors + r * S * C;
      const T* s = dens + r * S;
      const T* t = depths + r * S;
      T* f = feat + r * C;
      T* w_out = weights + r * K;
      for (int64_t c = 0; c < C; ++c) f[c] = T(0);
      T trans = T(1), opac = T(0), num = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const Interval<T> iv = raymarch::interval<T>(s[k], s[k + 1], t[k], t[k + 1], density_bias);
        const T w = iv.alpha * trans;
        trans = raymarch::next_transmittance(trans, iv.alpha);
        w_out[k] = w;
        opac += w;
        num += w * iv.tbar;
        const T* c0 = col + k * C;
        const T* c1 = c0 + C;
        for (int64_t c = 0; c < C; ++c) f[c] += w * ((c0[c] + c1[c]) / T(2));
      }
      if (white) {
        for (int64_t c = 0; c < C; ++c) f[c] += T(1) - opac;
      }
      opacity[r] = opac;
      depth[r] = raymarch::composite_depth(num, opac, t[0], t[K]);
    }
  });
}

template <typename T>
void backward_kernel(const Dims& d, const T* g_feat, const T* g_depth, const T* g_opac, const T* g_w, const T* colors,
                     const T* dens, const T* depths, T density_bias, bool white, T* grad_colors, T* grad_dens) {
  const int64_t S = d.S, C = d.C, K = S - 1;
  at::parallel_for(0, d.R, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* col = colors + r * S * C;
      const T* s = dens + r * S;
      const T* t = depths + r * S;
      const T* gf = g_feat ? g_feat + r * C : nullptr;
      const T* gw = g_w ? g_w + r * K : nullptr;
      T* gc = grad_colors + r * S * C;
      T* gs = grad_dens + r * S;

      // Pre-pass: T_k into gs[k] (scratch), and the opacity / depth numerator exactly as the forward made them.
      T trans = T(1), opac = T(0), num = T(0);
      for (int64_t k = 0; k < K; ++k) {
        const Interval<T> iv = raymarch::interval<T>(s[k], s[k + 1], t[k], t[k + 1], density_bias);
        gs[k] = trans;
        const T w = iv.alpha * trans;
        trans = raymarch::next_transmittance(trans, iv.alpha);
        opac += w;
        num += w * iv.tbar;
      }
      // dL/dw_k = g_w[k] + <g_feat, cbar_k> + g_opacity_eff + depth_coef * (tbar_k - depth)
      T g_opac_eff = g_opac ? g_opac[r] : T(0);
      if (white && gf) {
        for (int64_t c = 0; c < C; ++c) g_opac_eff -= gf[c];
      }
      T depth_coef = T(0), depth_unclamped = T(0);
      if (g_depth && raymarch::depth_passes_grad(num, opac, t[0], t[K])) {
        depth_unclamped = num / opac;
        depth_coef = g_depth[r] / opac;
      }

      // Reverse sweep. suffix = sum_{i>k} G_i alpha_i prod_{k<j<i} (1 - alpha_j + 1e-10).
      T suffix = T(0), pending = T(0), w_next = T(0);
      for (int64_t k = K - 1; k >= 0; --k) {
        const Interval<T> iv = raymarch::interval<T>(s[k], s[k + 1], t[k], t[k + 1], density_bias);
        const T trans_k = gs[k];
        const T w = iv.alpha * trans_k;
        const T* c0 = col + k * C;
        const T* c1 = c0 + C;
        T G = g_opac_eff + depth_coef * (iv.tbar - depth_unclamped);
        if (gw) G += gw[k];
        if (gf) {
          T dot = T(0);
          for (int64_t c = 0; c < C; ++c) dot += gf[c] * ((c0[c] + c1[c]) / T(2));
          G += dot;
          // colors: sample k+1 receives intervals k and k+1 (the latter stored in w_next).
          T* g1 = gc + (k + 1) * C;
          for (int64_t c = 0; c < C; ++c) g1[c] = (w + w_next) * gf[c] / T(2);
        }
        const T d_alpha = trans_k * (G - suffix);
        suffix = G * iv.alpha + ((T(1) - iv.alpha) + T(1e-10)) * suffix;
        const T d_m = d_alpha * iv.delta * iv.e * raymarch::softplus_grad(iv.m);
        gs[k + 1] = pending + d_m / T(2);
        pending = d_m / T(2);
        w_next = w;
      }
      gs[0] = pending;
      if (gf) {
        for (int64_t c = 0; c < C; ++c) gc[c] = w_next * gf[c] / T(2);
      } else {
        for (int64_t i = 0; i < S * C; ++i) gc[i] = T(0);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ray_march_cpu(const at::Tensor& colors,
                                                                         const at::Tensor& densities,
                                                                         const at::Tensor& depths, double density_bias,
                                                                         bool white_background) {
  const Dims d = check_inputs(colors, densities, depths);
  auto opts = colors.options();
  at::Tensor feat = at::empty(with(d.lead, {d.C}), opts);
  at::Tensor depth = at::empty(d.lead, opts);
  at::Tensor opacity = at::empty(d.lead, opts);
  at::Tensor weights = at::empty(with(d.lead, {d.S - 1}), opts);
  if (d.R == 0) return {feat, depth, opacity, weights};
  const at::Tensor col = colors.contiguous(), dens = densities.contiguous(), dep = depths.contiguous();
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "ray_march_cpu", [&] {
    forward_kernel<scalar_t>(d, col.const_data_ptr<scalar_t>(), dens.const_data_ptr<scalar_t>(),
                             dep.const_data_ptr<scalar_t>(), static_cast<scalar_t>(density_bias), white_background,
                             feat.mutable_data_ptr<scalar_t>(), depth.mutable_data_ptr<scalar_t>(),
                             opacity.mutable_data_ptr<scalar_t>(), weights.mutable_data_ptr<scalar_t>());
  });
  return {feat, depth, opacity, weights};
}

// An optional incoming gradient, checked for shape and made contiguous.
std::optional<at::Tensor> grad_arg(const std::optional<at::Tensor>& g, const std::vector<int64_t>& shape,
                                   const at::Tensor& like, const char* name) {
  if (!g.has_value() || !g->defined()) return std::nullopt;
  TORCH_CHECK_VALUE(g->sizes() == at::IntArrayRef(shape), name, " must be ", at::IntArrayRef(shape), ", got ",
                    shape_str(*g));
  check_same_dtype(like, *g, "colors", name);
  return g->contiguous();
}

std::tuple<at::Tensor, at::Tensor> ray_march_backward_cpu(
    const std::optional<at::Tensor>& grad_features, const std::optional<at::Tensor>& grad_depth,
    const std::optional<at::Tensor>& grad_opacity, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths, double density_bias,
    bool white_background) {
  const Dims d = check_inputs(colors, densities, depths);
  const auto gf = grad_arg(grad_features, with(d.lead, {d.C}), colors, "grad_features");
  const auto gd = grad_arg(grad_depth, d.lead, colors, "grad_depth");
  const auto go = grad_arg(grad_opacity, d.lead, colors, "grad_opacity");
  const auto gw = grad_arg(grad_weights, with(d.lead, {d.S - 1}), colors, "grad_weights");
  at::Tensor grad_colors = at::empty(colors.sizes(), colors.options());
  at::Tensor grad_dens = at::empty(densities.sizes(), densities.options());
  if (d.R == 0) return {grad_colors, grad_dens};
  const at::Tensor col = colors.contiguous(), dens = densities.contiguous(), dep = depths.contiguous();
  AT_DISPATCH_FLOATING_TYPES(colors.scalar_type(), "ray_march_backward_cpu", [&] {
    auto ptr = [](const std::optional<at::Tensor>& g) -> const scalar_t* {
      return g.has_value() ? g->const_data_ptr<scalar_t>() : nullptr;
    };
    backward_kernel<scalar_t>(d, ptr(gf), ptr(gd), ptr(go), ptr(gw), col.const_data_ptr<scalar_t>(),
                              dens.const_data_ptr<scalar_t>(), dep.const_data_ptr<scalar_t>(),
                              static_cast<scalar_t>(density_bias), white_background,
                              grad_colors.mutable_data_ptr<scalar_t>(), grad_dens.mutable_data_ptr<scalar_t>());
  });
  return {grad_colors, grad_dens};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) {
  m.impl("ray_march", &ray_march_cpu);
  m.impl("ray_march_backward", &ray_march_backward_cpu);
}

}  // namespace oneshot
