// CUDA kernels of oneshot::render_triplane and its backward (render/render.h has the contract).
//
// Mapping. A warp owns one ray at a time and walks it in chunks of 32 samples, one sample per lane; a block is
// 4 warps (2 or 1 when the decoder's tiles need the room) and the grid is persistent (as many blocks as stay
// resident, each warp taking rays N apart). Per chunk:
//  1. gather: the samples' mean features F [32][C] into shared memory. A group of G lanes per sample (G a power
//     of two, 32 / G samples at a time), each lane VW consecutive channels per step, VW = 16 bytes of the planes'
//     dtype: the planes are read channels-last ([B, 3, H, W, C], in place when they already are), so each of a
//     sample's 12 taps is one 16-byte load per lane and a group reads the tap's whole row of channels.
//  2. decoder on tensor cores, the warp's tiles in shared memory: H = F w1^T (M 32, N Hd, K C), A = softplus(H + b1)
//     in the epilogue, Y = A w2^T + b2 (M 32, N 1 + Co, K Hd); sizes zero-padded to multiples of 16.
//     float16 / bfloat16 planes: mma.m16n8k16 with bfloat16 operands, float32 accumulation. float32: each operand
//     split into two TF32 terms, three mma.m16n8k8 per step (float32 accuracy). float64: SIMT FMAs.
//  3. compositing, lane = sample: alpha of the interval ending at the lane's sample (the previous sample by a
//     shuffle, carried across chunks), the transmittance by a warp product scan times the carried T, opacity and
//     depth by warp sums; then lane = feature channel: features += w (c_before + c) / 2 over the chunk's rows.
// Backward, per ray: pass 1 recomputes 1-3 and keeps 4 scalars per sample in the warp's global scratch (density,
// <grad_features, colour>, T); the reverse sweep of ray_march's backward (u_{k-1} = keep_k u_k + G_k alpha_k)
// runs as an affine suffix scan per chunk, last chunk first, leaving d loss / d(interval density); pass 2
// recomputes 1-2 per chunk, forms d loss / d outputs gY in the layer-2 epilogue and back-propagates with four
// more warp GEMMs: gw2^T += A^T gY, gH = (gY w2) softplus'(H), gw1 += gH^T F, gF = gH w1. The decoder's
// gradients go to the block's accumulator in shared memory, each lane of a warp adding at a distinct address
// (the fragment positions), and reach global memory once per block (one atomic per element). gF / 3 goes to
// the planes' gradient ([B, 3, H, W, C], float32 or float64) with vector atomics: float4 on sm_90 where VW
// allows, scalar otherwise. Nothing per sample lives in registers beyond the lane's own sample: the fragments
// are fixed-size register arrays with compile-time indices, the lane's feature accumulators are kOutPerLane.
//
// Shared memory (render_tiles.cuh, make_layout), paper sizes (C 32, hidden 64, 1 + Co 33 -> padded 32, 64, 48):
//   block: w1 [64][32+pad], w2 [48][64+pad] as operands, b1, b2 (float32 / float64), backward: the decoder-gradient
//   accumulator (4321 values). Per warp: forward F / colours [32][~36], A [32][64+pad]; backward F, A / gF,
//   D / gH (colours in pass 1), gY [32][48+pad], plus 3 x 32 + 48 scalars.
//   bytes:      forward  bf16 51648 (4 blocks an SM: 16 warps)   tf32 78272 (2 blocks: 8 warps)
//               backward bf16 93264 (2 blocks: 8 warps)          tf32 156752 (1 block: 4 warps)
//   (float64: forward 1 block of 4 warps, backward 1 block of 2.) The paths' __launch_bounds__ carry these block
//   counts, so ptxas budgets registers for them (render_tiles.cuh).
// The designed occupancy is that smem bound (registers are not the limit: scripts/ptxas_report.py reports them).
// The gathers keep 12 independent 16-byte loads per lane in flight, which with 8-16 warps an SM covers the L2
// latency; the GEMMs and the SFU-heavy softplus of other warps overlap with them.
//
// dtypes: float32 or float64 everything, or float16 / bfloat16 planes with float32 for the rest; outputs and the
// decoder's gradients in float32 / float64, the planes' gradient in the planes' dtype. Sizes: C <= 128,
// 1 + Co <= 129, and the decoder's tiles must fit the device's shared memory (opt-in) with one warp a block.
// Float atomics make the gradients' summation order vary from run to run: reported to torch's deterministic mode.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/cuda_utils.cuh"
#include "render/render_args.h"
#include "render/render_kernels.cuh"

namespace oneshot {
namespace {

using render::Dims;
using render_cuda::Layout;
using render_cuda::Params;

constexpr int kDefaultShared = 48 * 1024;

void check_cuda(const at::Tensor& planes, const Dims& d) {
  TORCH_CHECK_VALUE(planes.is_cuda(), "render_triplane (CUDA kernel) got planes on ", planes.device());
  TORCH_CHECK_VALUE(d.C <= render_cuda::kMaxC && d.O <= render_cuda::kMaxO,
                    "render_triplane's CUDA kernel supports C <= ", render_cuda::kMaxC,
                    " plane channels and 1 + out_channels <= ", render_cuda::kMaxO, ", got C = ", d.C, ", ", d.O);
  TORCH_CHECK_VALUE(d.S < (int64_t(1) << 30) && d.H * d.W < (int64_t(1) << 31), "render_triplane: S or H x W too large");
  TORCH_CHECK_VALUE(d.H * d.W * d.C < (int64_t(1) << 31) && d.B * d.R < (int64_t(1) << 31),
                    "render_triplane's CUDA kernel indexes a plane and the rays with int32: H x W x C and B x R must be "
                    "< 2^31, got ", d.H, " x ", d.W, " x ", d.C, " and ", d.B, " x ", d.R);
}

struct Prepared {
  at::Tensor planes, o, dir, t, w1, b1, w2, b2;  // planes [B, 3, H, W, C] contiguous
};

Prepared prepare(const at::Tensor& planes, const at::Tensor& o, const at::Tensor& dir, const at::Tensor& t,
                 const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
  // channels-last planes are read in place (VolumeRenderer hands them over so); others are copied once
  return {planes.permute({0, 1, 3, 4, 2}).contiguous(), o.contiguous(), dir.contiguous(), t.contiguous(),
          w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous()};
}

// The launch: warps a block, grid, shared memory, and the gather's vector width and lanes per sample.
struct Plan {
  Layout L;
  unsigned int blocks;
  int vw, group;
};

template <typename P, typename Path>
Plan plan(const Dims& d, const at::Tensor& planes_cl, bool backward) {
  using T = typename Path::T;
  using E = typename Path::E;
  const int dev = planes_cl.device().index();
  if (Path::kTensor) {
    const int cc = 10 * cuda::device_attribute(cudaDevAttrComputeCapabilityMajor, dev) +
                   cuda::device_attribute(cudaDevAttrComputeCapabilityMinor, dev);
    TORCH_CHECK(cc >= 80, "render_triplane's CUDA kernel runs the decoder on tensor cores (mma.sync), which needs "
                "compute capability 8.0 or newer for float32 / float16 / bfloat16 planes; this GPU has ", cc / 10,
                ".", cc % 10, " (float64 planes, or backend='reference', work on it)");
  }
  const int optin = cuda::device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  // The decoder's operands alone, in 64 bits (a lower bound of the layout, whose int arithmetic a huge hidden
  // size would wrap): refused here when they cannot fit.
  const int64_t Cp = cuda::ceil_div(d.C, 16) * 16, Hp = cuda::ceil_div(d.Hd, 16) * 16;
  const int64_t operands = (Hp * (Cp + 16) + cuda::ceil_div(d.O, 16) * 16 * (Hp + 16)) * int64_t(sizeof(E));
  TORCH_CHECK_VALUE(operands <= optin, "render_triplane's CUDA kernel keeps the decoder in shared memory: at least ",
                    operands, " bytes needed, ", optin, " available (hidden = ", d.Hd, ")");
  Plan p;
  for (int warps : {4, 2, 1}) {
    p.L = render_cuda::make_layout(int(d.C), int(d.Hd), int(d.O), int(sizeof(E)), int(sizeof(T)), backward, warps);
    if (p.L.bytes <= optin) break;
  }
  TORCH_CHECK_VALUE(p.L.bytes <= optin, "render_triplane's CUDA kernel keeps the decoder in shared memory: ",
                    p.L.bytes, " bytes needed, ", optin, " available (hidden = ", d.Hd, ")");
  const int per_sm = cuda::device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
  const int sms = cuda::device_attribute(cudaDevAttrMultiProcessorCount, dev);
  const int threads = p.L.warps * render_cuda::kWarp;
  const int resident = std::max(1, std::min({per_sm / (p.L.bytes + 1024), 2048 / threads, 32}));
  const int64_t want = cuda::ceil_div(d.B * d.R, p.L.warps);
  p.blocks = static_cast<unsigned int>(std::max<int64_t>(
      1, std::min<int64_t>({want, int64_t(sms) * resident, int64_t(ONESHOT_CUDA_MAX_BLOCKS)})));
  p.vw = 16 / int(sizeof(P));
  if (d.C % p.vw != 0 || reinterpret_cast<uintptr_t>(planes_cl.const_data_ptr()) % 16 != 0) p.vw = 1;
  const int64_t steps = cuda::ceil_div(d.C, p.vw);
  p.group = 1;
  while (p.group < render_cuda::kWarp && p.group < steps) p.group *= 2;
  return p;
}

template <typename P, typename T>
Params<P, T> make_params(const Dims& d, const Prepared& in, const Plan& p, double box_warp, at::IntArrayRef axes,
                         bool clip, double bias) {
  Params<P, T> a;
  a.planes = in.planes.const_data_ptr<P>();
  a.origins = in.o.const_data_ptr<T>();
  a.dirs = in.dir.const_data_ptr<T>();
  a.depths = in.t.const_data_ptr<T>();
  a.w1 = in.w1.const_data_ptr<T>();
  a.b1 = in.b1.const_data_ptr<T>();
  a.w2 = in.w2.const_data_ptr<T>();
  a.b2 = in.b2.const_data_ptr<T>();
  a.N = d.B * d.R;
  a.R = d.R;
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
  for (int q = 0; q < 3; ++q) {
    a.ax[q][0] = int(axes[2 * q]);
    a.ax[q][1] = int(axes[2 * q + 1]);
  }
  a.group = p.group;
  a.L = p.L;
  return a;
}

// fn(P{}, Path{}) for the planes' dtype.
template <typename F>
void dispatch_path(at::ScalarType planes, F&& fn) {
  switch (planes) {
    case at::kHalf: fn(c10::Half{}, render_cuda::Bf16Path{}); break;
    case at::kBFloat16: fn(c10::BFloat16{}, render_cuda::Bf16Path{}); break;
    case at::kFloat: fn(float{}, render_cuda::Tf32Path{}); break;
    case at::kDouble: fn(double{}, render_cuda::F64Path{}); break;
    default: TORCH_CHECK_TYPE(false, "render_triplane_cuda: unsupported dtype ", planes);
  }
}

// fn(std::integral_constant<int, VW>) for the plan's vector width.
template <typename P, typename F>
void dispatch_vw(int vw, F&& fn) {
  if (vw == 1) {
    fn(std::integral_constant<int, 1>{});
  } else {
    fn(std::integral_constant<int, 16 / int(sizeof(P))>{});
  }
}

template <typename K>
void allow_shared(K* kernel, int bytes) {
  if (bytes > kDefaultShared) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> render_triplane_cuda(
    const at::Tensor& planes, const at::Tensor& origins, const at::Tensor& directions, const at::Tensor& depths,
    const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2, double box_warp,
    at::IntArrayRef axes, bool clip_to_box, double density_bias) {
  const Dims d = render::check_inputs(planes, origins, directions, depths, w1, b1, w2, b2, axes);
  check_cuda(planes, d);
  const c10::cuda::CUDAGuard guard(planes.device());
  at::Tensor feat, depth, opacity, weights;
  std::tie(feat, depth, opacity, weights) = render::empty_outputs(d, origins);
  if (d.B * d.R == 0) return {feat, depth, opacity, weights};
  const Prepared in = prepare(planes, origins, directions, depths, w1, b1, w2, b2);
  dispatch_path(planes.scalar_type(), [&](auto pv, auto path) {
    using P = decltype(pv);
    using Path = decltype(path);
    using T = typename Path::T;
    const Plan p = plan<P, Path>(d, in.planes, false);
    const Params<P, T> a = make_params<P, T>(d, in, p, box_warp, axes, clip_to_box, density_bias);
    dispatch_vw<P>(p.vw, [&](auto vwc) {
      constexpr int VW = decltype(vwc)::value;
      allow_shared(render_cuda::render_forward_kernel<P, Path, VW>, p.L.bytes);
      render_cuda::render_forward_kernel<P, Path, VW><<<p.blocks, p.L.warps * 32, p.L.bytes, cuda::stream()>>>(
          a, feat.mutable_data_ptr<T>(), depth.mutable_data_ptr<T>(), opacity.mutable_data_ptr<T>(),
          weights.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
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
  check_cuda(planes, d);
  const c10::cuda::CUDAGuard guard(planes.device());
  const int64_t N = d.B * d.R;
  const render::Grads grads = render::grad_args(grad_features, grad_depth, grad_opacity, grad_weights, d, origins);
  const auto &gf = grads.features, &gd = grads.depth, &go = grads.opacity, &gw = grads.weights;
  auto opts = origins.options();
  at::Tensor gp_cl = at::zeros({d.B, 3, d.H, d.W, d.C}, opts);  // float32 / float64 accumulation, channels-last
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
    at::Tensor gp = gp_cl.permute({0, 1, 4, 2, 3});  // [B, 3, C, H, W] view
    if (gp.scalar_type() != planes.scalar_type()) gp = gp.to(planes.scalar_type());
    return std::make_tuple(gp, g1, gb1, g2, gb2);
  };
  if (N == 0 || (!gf && !gd && !go && !gw)) return split();
  at::globalContext().alertNotDeterministic("render_triplane_backward (CUDA)");
  const Prepared in = prepare(planes, origins, directions, depths, w1, b1, w2, b2);
  dispatch_path(planes.scalar_type(), [&](auto pv, auto path) {
    using P = decltype(pv);
    using Path = decltype(path);
    using T = typename Path::T;
    const Plan p = plan<P, Path>(d, in.planes, true);
    const Params<P, T> a = make_params<P, T>(d, in, p, box_warp, axes, clip_to_box, density_bias);
    auto ptr = [](const std::optional<at::Tensor>& g) -> const T* {
      return g.has_value() ? g->const_data_ptr<T>() : nullptr;
    };
    const render_cuda::Cotangents<T> cot{ptr(gf), ptr(gd), ptr(go), ptr(gw)};
    // 4 values per sample for every warp of the grid (reused from ray to ray)
    at::Tensor scratch = at::empty({int64_t(p.blocks) * p.L.warps * 4 * d.S}, opts);
    dispatch_vw<P>(p.vw, [&](auto vwc) {
      constexpr int VW = decltype(vwc)::value;
      allow_shared(render_cuda::render_backward_kernel<P, Path, VW>, p.L.bytes);
      render_cuda::render_backward_kernel<P, Path, VW><<<p.blocks, p.L.warps * 32, p.L.bytes, cuda::stream()>>>(
          a, cot, scratch.mutable_data_ptr<T>(), gp_cl.mutable_data_ptr<T>(), gdec.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return split();
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CUDA, m) {
  m.impl("render_triplane", &render_triplane_cuda);
  m.impl("render_triplane_backward", &render_triplane_backward_cuda);
}

}  // namespace oneshot
