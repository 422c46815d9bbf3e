// CUDA kernels of oneshot::ray_march and its backward: one warp per ray.
//
// The per-ray work is a short serial scan over S samples on scalars plus, per sample, a row of C channels.
// Every lane of the warp runs the scalar scan (the same instructions on the same values: no divergence, no
// shuffles, identical results on every lane) while the lanes split the channels, so each sample's row is one
// coalesced load and the features accumulate in registers. The scan costs a few hundred cycles per ray and
// hides behind other warps: the kernels are bound by reading the colors (and, backward, writing their
// gradient), as they should be.
//
// Forward: per sample s the midpoint rule gives the weight omega_s = (w_{s-1} + w_s) / 2 (w_{-1} = w_{S-1} = 0),
// so features = sum_s omega_s c_s is accumulated while the scan runs, one pass over the colors.
// Backward: pass 1 recomputes the transmittance T_k from the inputs (never by division from the end of the
// ray, which underflows once a few samples are opaque) and takes <grad_features, c_s> once per sample; both go
// to a per-warp scratch of 2 S values (shared memory, or global memory for very long rays); pass 2 is the
// reverse sweep for d/d alpha, which also writes grad_densities and the rows of grad_colors. Nothing per
// sample is kept beyond the op's outputs and that scratch.
//
// dtypes: colors float16 / bfloat16 / float32 with densities and depths float32, or everything float64;
// accumulation in float32 (float64). features and grad_colors come out in the colors' dtype; depth, opacity,
// weights and grad_densities in the densities' dtype.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "raymarch/raymarch.h"
#include "raymarch/raymarch_args.h"

namespace oneshot {
namespace {

using raymarch::Dims;
using raymarch::grad_arg;
using raymarch::with;

using cuda::acc_t;
using cuda::from_acc;
using cuda::kWarp;
using cuda::to_acc;

constexpr int kThreads = 128;  // 4 rays per block
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr size_t kSharedLimit = 48 * 1024;

// The kernels index samples and channels with int32.
void check_sizes(const Dims& d) {
  TORCH_CHECK_VALUE(d.S < (int64_t(1) << 30) && d.C < (int64_t(1) << 30),
                    "ray_march supports S, C < 2^30, got S = ", d.S, ", C = ", d.C);
}

// One interval's quantities, computed the same way wherever they are needed (both backward passes must agree
// bit for bit on alpha).
template <typename G>
struct Interval {
  G alpha, e, slope, delta, tbar;
};

template <typename G>
__device__ __forceinline__ Interval<G> interval(G s0, G s1, G t0, G t1, G bias) {
  Interval<G> iv;
  const G m = (s0 + s1) / G(2) + bias;
  iv.delta = t1 - t0;
  iv.tbar = (t0 + t1) / G(2);
  const G sigma = raymarch::softplus(m);
  iv.slope = raymarch::softplus_grad(m);
  iv.e = exp(-(sigma * iv.delta));
  iv.alpha = G(1) - iv.e;
  return iv;
}

// ---------------------------------------------------------------------------------------------------------
// Forward. NCH channel chunks of 32 per lane live in registers; C above 32 * NCH is done in blocks (the scan
// is recomputed per block: it is cheap next to the colors).
template <typename V, typename G, int NCH>
__global__ void __launch_bounds__(kThreads) ray_march_forward_kernel(
    const V* __restrict__ col, const G* __restrict__ s, const G* __restrict__ t, int64_t R, int S, int C, G bias,
    bool white, V* __restrict__ feat, G* __restrict__ depth, G* __restrict__ opacity, G* __restrict__ weights) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; r < R; r += warps) {
    const G* sr = s + r * S;
    const G* tr = t + r * S;
    const V* cr = col + r * S * int64_t(C);
    for (int cb = 0; cb == 0 || cb < C; cb += kWarp * NCH) {
      G acc[NCH];
#pragma unroll
      for (int j = 0; j < NCH; ++j) acc[j] = G(0);
      G trans = G(1), op = G(0), num = G(0), w_prev = G(0);
      G s_cur = sr[0], t_cur = tr[0];
      for (int k = 0; k < S; ++k) {
        G w = G(0);
        if (k + 1 < S) {
          const G s_next = sr[k + 1], t_next = tr[k + 1];
          const Interval<G> iv = interval(s_cur, s_next, t_cur, t_next, bias);
          w = iv.alpha * trans;
          trans = raymarch::next_transmittance(trans, iv.alpha);
          op += w;
          num += w * iv.tbar;
          if (cb == 0 && lane == (k % kWarp)) weights[r * (S - 1) + k] = w;
          s_cur = s_next;
          t_cur = t_next;
        }
        const G om = (w_prev + w) / G(2);
        const V* row = cr + int64_t(k) * C;
#pragma unroll
        for (int j = 0; j < NCH; ++j) {
          const int c = cb + lane + kWarp * j;
          if (c < C) acc[j] += om * to_acc(row[c]);
        }
        w_prev = w;
      }
      const G bg = white ? G(1) - op : G(0);
#pragma unroll
      for (int j = 0; j < NCH; ++j) {
        const int c = cb + lane + kWarp * j;
        if (c < C) feat[r * C + c] = from_acc<V>(acc[j] + bg);
      }
      if (cb == 0 && lane == 0) {
        opacity[r] = op;
        depth[r] = raymarch::composite_depth(num, op, tr[0], tr[S - 1]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward. scratch: 2 S values per warp (T_k for k < S - 1, then dot_s = <grad_features, c_s> for s < S).
template <typename V, typename G>
__global__ void __launch_bounds__(kThreads) ray_march_backward_kernel(
    const V* __restrict__ col, const G* __restrict__ s, const G* __restrict__ t, int64_t R, int S, int C, G bias,
    bool white, const V* __restrict__ gf, const G* __restrict__ gd, const G* __restrict__ go,
    const G* __restrict__ gw, G* __restrict__ global_scratch, V* __restrict__ gc, G* __restrict__ gs) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int lane = threadIdx.x % kWarp;
  const int warp_in_block = threadIdx.x / kWarp;
  const int64_t warp_id = int64_t(blockIdx.x) * kWarpsPerBlock + warp_in_block;
  G* scratch = global_scratch != nullptr ? global_scratch + warp_id * 2 * int64_t(S)
                                         : reinterpret_cast<G*>(smem_raw) + warp_in_block * 2 * int64_t(S);
  G* Tk = scratch;
  G* dots = scratch + S;
  const int K = S - 1;
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = warp_id; r < R; r += warps) {
    const G* sr = s + r * S;
    const G* tr = t + r * S;
    const V* cr = col + r * S * int64_t(C);
    const V* gfr = gf != nullptr ? gf + r * C : nullptr;

    // Pass 1: transmittance, opacity, depth numerator; dot products of grad_features with every sample.
    G trans = G(1), op = G(0), num = G(0);
    for (int k = 0; k < K; ++k) {
      const Interval<G> iv = interval(sr[k], sr[k + 1], tr[k], tr[k + 1], bias);
      if (lane == 0) Tk[k] = trans;
      const G w = iv.alpha * trans;
      trans = raymarch::next_transmittance(trans, iv.alpha);
      op += w;
      num += w * iv.tbar;
    }
    G gf_sum = G(0);
    if (gfr != nullptr) {
      for (int k = 0; k < S; ++k) {
        const V* row = cr + int64_t(k) * C;
        G part = G(0);
        for (int c = lane; c < C; c += kWarp) part += to_acc(gfr[c]) * to_acc(row[c]);
        part = cuda::warp_sum(part);
        if (lane == 0) dots[k] = part;
      }
      if (white) {
        for (int c = lane; c < C; c += kWarp) gf_sum += to_acc(gfr[c]);
        gf_sum = cuda::warp_sum(gf_sum);
      }
    }
    __syncwarp();

    // dL/dw_k = gw_k + (dot_k + dot_{k+1}) / 2 + g_op + depth_coef (tbar_k - depth)
    const G g_op = (go != nullptr ? go[r] : G(0)) - gf_sum;
    G depth_coef = G(0), depth_val = G(0);
    if (gd != nullptr && raymarch::depth_passes_grad(num, op, tr[0], tr[K])) {
      depth_val = num / op;
      depth_coef = gd[r] / op;
    }

    // Pass 2, k = K-1 .. 0: suffix = sum_{i>k} G_i alpha_i prod_{k<j<i} (1 - alpha_j + 1e-10);
    // dL/dalpha_k = T_k (G_k - suffix); dm_k = dL/dalpha_k delta_k e_k softplus'(m_k);
    // grad_densities_s = (dm_{s-1} + dm_s) / 2; grad_colors_s = omega_s grad_features.
    G suffix = G(0), dm_next = G(0), w_next = G(0);
    for (int k = K - 1; k >= -1; --k) {
      G dm = G(0), w = G(0);
      if (k >= 0) {
        const Interval<G> iv = interval(sr[k], sr[k + 1], tr[k], tr[k + 1], bias);
        const G trans_k = Tk[k];
        w = iv.alpha * trans_k;
        G g = g_op + depth_coef * (iv.tbar - depth_val);
        if (gw != nullptr) g += gw[r * K + k];
        if (gfr != nullptr) g += (dots[k] + dots[k + 1]) / G(2);
        const G d_alpha = trans_k * (g - suffix);
        suffix = g * iv.alpha + ((G(1) - iv.alpha) + G(1e-10)) * suffix;
        dm = d_alpha * iv.delta * iv.e * iv.slope;
      }
      // Sample k + 1 now has both neighbouring intervals.
      const int smp = k + 1;
      if (lane == (smp % kWarp)) gs[r * S + smp] = (dm + dm_next) / G(2);
      const G om = (w + w_next) / G(2);
      V* row = gc + (r * S + smp) * int64_t(C);
      if (gfr != nullptr) {
        for (int c = lane; c < C; c += kWarp) row[c] = from_acc<V>(om * to_acc(gfr[c]));
      } else {
        for (int c = lane; c < C; c += kWarp) row[c] = from_acc<V>(G(0));
      }
      dm_next = dm;
      w_next = w;
    }
    __syncwarp();  // the scratch is rewritten by the next ray
  }
}

template <typename V, typename G>
void launch_forward(const Dims& d, const at::Tensor& col, const at::Tensor& dens, const at::Tensor& dep, double bias,
                    bool white, at::Tensor& feat, at::Tensor& depth, at::Tensor& opacity, at::Tensor& weights) {
  const unsigned int blocks = cuda::grid_for(d.R, kWarpsPerBlock);
  auto go = [&](auto nch) {
    constexpr int NCH = decltype(nch)::value;
    ray_march_forward_kernel<V, G, NCH><<<blocks, kThreads, 0, cuda::stream()>>>(
        col.const_data_ptr<V>(), dens.const_data_ptr<G>(), dep.const_data_ptr<G>(), d.R, int(d.S), int(d.C),
        static_cast<G>(bias), white, feat.mutable_data_ptr<V>(), depth.mutable_data_ptr<G>(),
        opacity.mutable_data_ptr<G>(), weights.mutable_data_ptr<G>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (d.C <= 32) go(std::integral_constant<int, 1>{});
  else if (d.C <= 64) go(std::integral_constant<int, 2>{});
  else if (d.C <= 128) go(std::integral_constant<int, 4>{});
  else go(std::integral_constant<int, 8>{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ray_march_cuda(const at::Tensor& colors,
                                                                          const at::Tensor& densities,
                                                                          const at::Tensor& depths, double density_bias,
                                                                          bool white_background) {
  const Dims d = raymarch::check_inputs(colors, densities, depths, /*cuda=*/true);
  check_sizes(d);
  const c10::cuda::CUDAGuard guard(colors.device());
  at::Tensor feat = at::empty(with(d.lead, {d.C}), colors.options());
  at::Tensor depth = at::empty(d.lead, densities.options());
  at::Tensor opacity = at::empty(d.lead, densities.options());
  at::Tensor weights = at::empty(with(d.lead, {d.S - 1}), densities.options());
  if (d.R == 0) return {feat, depth, opacity, weights};
  const at::Tensor col = colors.contiguous(), dens = densities.contiguous(), dep = depths.contiguous();
  cuda::dispatch_value_geometry(colors.scalar_type(), "ray_march_cuda", [&](auto v, auto g) {
    launch_forward<decltype(v), decltype(g)>(d, col, dens, dep, density_bias, white_background, feat, depth, opacity,
                                             weights);
  });
  return {feat, depth, opacity, weights};
}

template <typename V, typename G>
void launch_backward(const Dims& d, const at::Tensor& col, const at::Tensor& dens, const at::Tensor& dep, double bias,
                     bool white, const std::optional<at::Tensor>& gf, const std::optional<at::Tensor>& gd,
                     const std::optional<at::Tensor>& go, const std::optional<at::Tensor>& gw, at::Tensor& grad_colors,
                     at::Tensor& grad_dens) {
  unsigned int blocks = cuda::grid_for(d.R, kWarpsPerBlock);
  const size_t per_warp = 2 * size_t(d.S) * sizeof(G);
  size_t smem = per_warp * kWarpsPerBlock;
  at::Tensor global_scratch;
  G* gscr = nullptr;
  if (smem > kSharedLimit) {  // very long rays: the scratch goes to global memory, one slot per launched warp
    blocks = std::min<unsigned int>(blocks, 4096);
    global_scratch = at::empty({int64_t(blocks) * kWarpsPerBlock * 2 * d.S}, dens.options());
    gscr = global_scratch.mutable_data_ptr<G>();
    smem = 0;
  }
  auto ptr = [](const std::optional<at::Tensor>& g) -> const G* {
    return g.has_value() ? g->const_data_ptr<G>() : nullptr;
  };
  ray_march_backward_kernel<V, G><<<blocks, kThreads, smem, cuda::stream()>>>(
      col.const_data_ptr<V>(), dens.const_data_ptr<G>(), dep.const_data_ptr<G>(), d.R, int(d.S), int(d.C),
      static_cast<G>(bias), white, gf.has_value() ? gf->const_data_ptr<V>() : nullptr, ptr(gd), ptr(go), ptr(gw),
      gscr, grad_colors.mutable_data_ptr<V>(), grad_dens.mutable_data_ptr<G>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> ray_march_backward_cuda(
    const std::optional<at::Tensor>& grad_features, const std::optional<at::Tensor>& grad_depth,
    const std::optional<at::Tensor>& grad_opacity, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& colors, const at::Tensor& densities, const at::Tensor& depths, double density_bias,
    bool white_background) {
  const Dims d = raymarch::check_inputs(colors, densities, depths, /*cuda=*/true);
  check_sizes(d);
  const c10::cuda::CUDAGuard guard(colors.device());
  const auto gf = grad_arg(grad_features, with(d.lead, {d.C}), colors, "colors", "grad_features");
  const auto gd = grad_arg(grad_depth, d.lead, densities, "densities", "grad_depth");
  const auto go = grad_arg(grad_opacity, d.lead, densities, "densities", "grad_opacity");
  const auto gw = grad_arg(grad_weights, with(d.lead, {d.S - 1}), densities, "densities", "grad_weights");
  at::Tensor grad_colors = at::empty(colors.sizes(), colors.options());
  at::Tensor grad_dens = at::empty(densities.sizes(), densities.options());
  if (d.R == 0) return {grad_colors, grad_dens};
  const at::Tensor col = colors.contiguous(), dens = densities.contiguous(), dep = depths.contiguous();
  cuda::dispatch_value_geometry(colors.scalar_type(), "ray_march_backward_cuda", [&](auto v, auto g) {
    launch_backward<decltype(v), decltype(g)>(d, col, dens, dep, density_bias, white_background, gf, gd, go, gw,
                                              grad_colors, grad_dens);
  });
  return {grad_colors, grad_dens};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CUDA, m) {
  m.impl("ray_march", &ray_march_cuda);
  m.impl("ray_march_backward", &ray_march_backward_cuda);
}

}  // namespace oneshot
