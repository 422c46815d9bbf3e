// Building blocks of the render_triplane CUDA kernels (render_cuda.cu has the design): the three arithmetic
// paths, the shared-memory layout, the warp GEMM on shared-memory tiles (tensor cores or SIMT), the channels-last
// gather of a chunk's features, and the warp scans of the compositing.
#pragma once

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "common/cuda_mma.cuh"
#include "common/cuda_utils.cuh"
#include "render/render.h"
#include "triplane/triplane.h"

namespace oneshot {
namespace render_cuda {

constexpr int kWarp = 32;
constexpr int kChunk = 32;   // samples a warp takes at a time: one per lane
constexpr int kMaxC = 128;   // plane channels
constexpr int kMaxO = 129;   // 1 + out channels
constexpr int kOutPerLane = (kMaxO - 1 + kWarp - 1) / kWarp;  // compositing: feature channels per lane
constexpr int kPad = 16;     // the decoder's sizes are padded to multiples of this (zeros)

// The arithmetic of a call, by the planes' dtype. T: what everything outside the decoder's GEMMs is computed in
// (the op's compute dtype); E: the element type of the GEMM operands in shared memory.
//  - Bf16Path (float16 / bfloat16 planes): bfloat16 operands, float32 accumulation (mma.m16n8k16). bfloat16
//    has float32's exponent range, so activations and gradients neither overflow nor flush as float16's would.
//  - Tf32Path (float32 planes): float32 operands split into two TF32 terms, three m16n8k8 products per step
//    (big*small, small*big, big*big): float32 accuracy on tensor cores.
//  - F64Path (float64): plain FMAs, one output element per lane at a time.
// kForwardBlocks / kBackwardBlocks: the blocks of 4 warps an SM holds at the paper's sizes (shared memory bound,
// 228 KiB an SM), given to __launch_bounds__ so that ptxas budgets registers for that occupancy (and spills
// nothing: without the hint it trades a few spills for occupancy the shared memory cannot give).
struct Bf16Path {
  using T = float;
  using E = __nv_bfloat16;
  static constexpr bool kTensor = true;
  static constexpr int kForwardBlocks = 4, kBackwardBlocks = 2;
};
struct Tf32Path {
  using T = float;
  using E = float;
  static constexpr bool kTensor = true;
  static constexpr int kForwardBlocks = 2, kBackwardBlocks = 1;
};
struct F64Path {
  using T = double;
  using E = double;
  static constexpr bool kTensor = false;
  static constexpr int kForwardBlocks = 1, kBackwardBlocks = 1;
};

__device__ __forceinline__ __nv_bfloat16 to_e(float x, __nv_bfloat16*) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ float to_e(float x, float*) { return x; }
__device__ __forceinline__ double to_e(double x, double*) { return x; }
template <typename E, typename T>
__device__ __forceinline__ E to_e(T x) {
  return to_e(x, static_cast<E*>(nullptr));
}
__device__ __forceinline__ float from_e(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float from_e(float x) { return x; }
__device__ __forceinline__ double from_e(double x) { return x; }

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Dynamic shared memory, in bytes from its base (every region 16-byte aligned). Block-wide: the decoder's
// weights as GEMM operands (w1 [Hdp][ldC], w2 [Op][ldH], zero-padded), its biases, and in the backward the
// block's decoder-gradient accumulator (the layout of the op's gdec). Per warp (at warp0 + w * warp_bytes): the
// chunk's tiles. Leading dimensions are the padded size plus 16 bytes, which spreads the rows of a fragment
// load over all 32 banks.
struct Layout {
  int C, Hd, O, Cp, Hdp, Op;
  int ldC, ldH, ldO;  // E tiles: [*][ldC] features / w1 rows, [*][ldH] hidden / w2 rows, [*][ldO] outputs
  int ldY, ldG;       // T tiles: colours [32][ldY], feature gradients [32][ldG]
  int w1, w2, b1, b2, acc, acc_size;
  int warp0, warp_bytes;
  int F, A, D, Y, G, vec;  // per warp; vec: T sig[32], om[32], gs[32], gf[Op]
  int warps, bytes;
};

inline Layout make_layout(int C, int Hd, int O, int e_size, int t_size, bool backward, int warps) {
  auto align = [](int x) { return (x + 15) / 16 * 16; };
  Layout L;
  L.C = C;
  L.Hd = Hd;
  L.O = O;
  L.Cp = round_up(C, kPad);
  L.Hdp = round_up(Hd, kPad);
  L.Op = round_up(O, kPad);
  L.ldC = L.Cp + 16 / e_size;
  L.ldH = L.Hdp + 16 / e_size;
  L.ldO = L.Op + 16 / e_size;
  L.ldY = round_up(O - 1, 16 / t_size) + 16 / t_size;
  L.ldG = L.Cp + 16 / t_size;
  int off = 0;
  auto take = [&](int bytes) {
    const int at = off;
    off += align(bytes);
    return at;
  };
  L.w1 = take(L.Hdp * L.ldC * e_size);
  L.w2 = take(L.Op * L.ldH * e_size);
  L.b1 = take(L.Hdp * t_size);
  L.b2 = take(L.Op * t_size);
  L.acc_size = Hd * C + Hd + O * Hd + O;
  L.acc = backward ? take(L.acc_size * t_size) : off;
  L.warp0 = off;
  const int f_tile = kChunk * L.ldC * e_size, a_tile = kChunk * L.ldH * e_size, y_tile = kChunk * L.ldY * t_size;
  off = 0;  // offsets within a warp's area
  if (backward) {
    L.F = take(f_tile);
    L.A = take(a_tile > kChunk * L.ldG * t_size ? a_tile : kChunk * L.ldG * t_size);  // A, then gF
    L.D = take(a_tile > y_tile ? a_tile : y_tile);                                   // colours (pass 1), D / gH
    L.Y = L.D;
    L.G = take(kChunk * L.ldO * e_size);
  } else {
    L.F = take(f_tile > y_tile ? f_tile : y_tile);  // features, then colours
    L.Y = L.F;
    L.A = take(a_tile);
    L.D = L.G = 0;
  }
  L.vec = take((3 * kChunk + L.Op) * t_size);
  L.warp_bytes = off;
  L.warps = warps;
  L.bytes = L.warp0 + warps * L.warp_bytes;
  return L;
}

// A matrix view of a shared-memory tile: element (r, c) at p[r * ld + c] (row-major) or p[c * ld + r].
template <typename E, bool kRowMajor>
struct Mat {
  const E* p;
  int ld;
  __device__ __forceinline__ E at(int r, int c) const { return kRowMajor ? p[r * ld + c] : p[c * ld + r]; }
  // bf16 pairs for mma fragments: (r, c) and (r, c + 1), or (r, c) and (r + 1, c); one 32-bit load when the pair
  // is contiguous (then 4-byte aligned: ld and the first index are even).
  __device__ __forceinline__ uint32_t pair_c(int r, int c) const {
    if constexpr (kRowMajor) return *reinterpret_cast<const uint32_t*>(p + r * ld + c);
    return cuda::mma::pack_bf16(at(r, c), at(r, c + 1));
  }
  __device__ __forceinline__ uint32_t pair_r(int r, int c) const {
    if constexpr (!kRowMajor) return *reinterpret_cast<const uint32_t*>(p + c * ld + r);
    return cuda::mma::pack_bf16(at(r, c), at(r + 1, c));
  }
};
template <typename E>
__device__ __forceinline__ Mat<E, true> row_major(const E* p, int ld) {
  return {p, ld};
}
template <typename E>
__device__ __forceinline__ Mat<E, false> col_major(const E* p, int ld) {
  return {p, ld};
}

// out = A [M, K] x B [K, N] by one warp, epi(row, col, value) once per element (value in T). M, N, K: multiples of
// kPad (the tiles are zero-padded). Tensor paths: 16 x 16 output blocks (two m16n8 tiles sharing each A fragment),
// K in steps of the instruction's k; the four accumulator positions of a lane are those of cuda_mma.cuh.
template <typename Path>
struct WarpGemm;

template <>
struct WarpGemm<Bf16Path> {
  template <class AM, class BM, class Epi>
  __device__ static void run(int M, int N, int K, const AM& A, const BM& B, Epi&& epi) {
    const cuda::mma::Frag q(threadIdx.x % kWarp);
    for (int m0 = 0; m0 < M; m0 += 16) {
      for (int n0 = 0; n0 < N; n0 += 16) {
        float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
        for (int k0 = 0; k0 < K; k0 += 16) {
          const int r = m0 + q.g, c = k0 + 2 * q.t;
          const uint32_t a[4] = {A.pair_c(r, c), A.pair_c(r + 8, c), A.pair_c(r, c + 8), A.pair_c(r + 8, c + 8)};
          const uint32_t b0[2] = {B.pair_r(c, n0 + q.g), B.pair_r(c + 8, n0 + q.g)};
          const uint32_t b1[2] = {B.pair_r(c, n0 + 8 + q.g), B.pair_r(c + 8, n0 + 8 + q.g)};
          cuda::mma::m16n8k16_bf16(d0, a, b0);
          cuda::mma::m16n8k16_bf16(d1, a, b1);
        }
        emit(m0, n0, q, d0, epi);
        emit(m0, n0 + 8, q, d1, epi);
      }
    }
  }
  template <class Epi>
  __device__ static void emit(int m0, int n0, const cuda::mma::Frag& q, const float (&d)[4], Epi& epi) {
    epi(m0 + q.g, n0 + 2 * q.t, d[0]);
    epi(m0 + q.g, n0 + 2 * q.t + 1, d[1]);
    epi(m0 + q.g + 8, n0 + 2 * q.t, d[2]);
    epi(m0 + q.g + 8, n0 + 2 * q.t + 1, d[3]);
  }
};

template <>
struct WarpGemm<Tf32Path> {
  template <class AM, class BM, class Epi>
  __device__ static void run(int M, int N, int K, const AM& A, const BM& B, Epi&& epi) {
    using cuda::mma::tf32_split;
    const cuda::mma::Frag q(threadIdx.x % kWarp);
    for (int m0 = 0; m0 < M; m0 += 16) {
      for (int n0 = 0; n0 < N; n0 += 16) {
        float d0[4] = {0.f, 0.f, 0.f, 0.f}, d1[4] = {0.f, 0.f, 0.f, 0.f};
        for (int k0 = 0; k0 < K; k0 += 8) {
          const int r = m0 + q.g, c = k0 + q.t;
          const cuda::mma::Tf32Split a[4] = {tf32_split(A.at(r, c)), tf32_split(A.at(r + 8, c)),
                                             tf32_split(A.at(r, c + 4)), tf32_split(A.at(r + 8, c + 4))};
          const uint32_t a_big[4] = {a[0].big, a[1].big, a[2].big, a[3].big};
          const uint32_t a_small[4] = {a[0].small, a[1].small, a[2].small, a[3].small};
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int n = n0 + 8 * h + q.g;
            const cuda::mma::Tf32Split b[2] = {tf32_split(B.at(c, n)), tf32_split(B.at(c + 4, n))};
            const uint32_t b_big[2] = {b[0].big, b[1].big}, b_small[2] = {b[0].small, b[1].small};
            float (&d)[4] = h == 0 ? d0 : d1;
            cuda::mma::m16n8k8_tf32(d, a_small, b_big);  // the small terms first
            cuda::mma::m16n8k8_tf32(d, a_big, b_small);
            cuda::mma::m16n8k8_tf32(d, a_big, b_big);
          }
        }
        WarpGemm<Bf16Path>::emit(m0, n0, q, d0, epi);
        WarpGemm<Bf16Path>::emit(m0, n0 + 8, q, d1, epi);
      }
    }
  }
};

template <>
struct WarpGemm<F64Path> {
  template <class AM, class BM, class Epi>
  __device__ static void run(int M, int N, int K, const AM& A, const BM& B, Epi&& epi) {
    for (int e = threadIdx.x % kWarp; e < M * N; e += kWarp) {
      const int r = e / N, c = e - r * N;
      double acc = 0.0;
      for (int k = 0; k < K; ++k) acc += A.at(r, k) * B.at(k, c);
      epi(r, c, acc);
    }
  }
};

// The kernels' parameters. planes: [B, 3, H, W, C] contiguous (channels-last); origins, directions [B * R, 3];
// depths [B * R, S]; w1 [Hd, C], b1 [Hd], w2 [O, Hd], b2 [O] contiguous.
template <typename P, typename T>
struct Params {
  const P* planes;
  const T *origins, *dirs, *depths;
  const T *w1, *b1, *w2, *b2;
  int64_t N, R;
  int S, C, H, W, Hd, O;
  T scale, half_box, bias;
  int ax[3][2];
  bool clip;
  int group;  // lanes per sample in the gather and the scatter (a power of two; 32 / group samples at a time)
  Layout L;
};

template <typename T>
__device__ __forceinline__ T pick(T x, T y, T z, int axis) {
  return axis == 0 ? x : (axis == 1 ? y : z);
}

template <typename P, int VW>
struct alignas(sizeof(P) * VW) Vec {
  P v[VW];
};

// The mean feature of the chunk's samples c0 .. c0 + 31 of ray `ray`: F [32][ldC] (E), zero for samples past S and
// for the padded channels. A group of a.group lanes per sample, each lane VW consecutive channels per step: every
// tap is a 16-byte load per lane (VW = 16 / sizeof(P)), and a group reads a tap's whole row of channels.
template <typename Path, typename P, int VW>
__device__ __forceinline__ void gather_chunk(const Params<P, typename Path::T>& a, int64_t ray, int c0,
                                             typename Path::E* F) {
  using T = typename Path::T;
  using E = typename Path::E;
  const int lane = threadIdx.x % kWarp, G = a.group, gl = lane % G;
  const int Cp = a.L.Cp, ldC = a.L.ldC;
  const int64_t b = unsigned(ray) / unsigned(a.R), plane = int64_t(a.H) * a.W * a.C;  // N < 2^31: 32-bit division
  const T o0 = a.origins[ray * 3], o1 = a.origins[ray * 3 + 1], o2 = a.origins[ray * 3 + 2];
  const T d0 = a.dirs[ray * 3], d1 = a.dirs[ray * 3 + 1], d2 = a.dirs[ray * 3 + 2];
  for (int s = lane / G; s < kChunk; s += kWarp / G) {
    const int k = c0 + s;
    E* row = F + s * ldC;
    if (k >= a.S) {
      for (int c = gl; c < Cp; c += G) row[c] = to_e<E>(T(0));
      continue;
    }
    const T t = a.depths[ray * a.S + k];
    const T p0 = o0 + t * d0, p1 = o1 + t * d1, p2 = o2 + t * d2;
    for (int c = gl * VW; c < Cp; c += G * VW) {
      T acc[VW];
#pragma unroll
      for (int l = 0; l < VW; ++l) acc[l] = T(0);
      if (c < a.C) {
        // the 12 taps' loads first (predicated, independent: all in flight at once), then the sums in tap order
        Vec<P, VW> v[12];
        T w[12];
        bool in[12];
#pragma unroll
        for (int pl = 0; pl < 3; ++pl) {
          const triplane::Taps<T> tp = triplane::taps<T>(pick(p0, p1, p2, a.ax[pl][0]) * a.scale,
                                                         pick(p0, p1, p2, a.ax[pl][1]) * a.scale, a.W, a.H);
          const P* base = a.planes + (b * 3 + pl) * plane + c;
#pragma unroll
          for (int qd = 0; qd < 4; ++qd) {
            int64_t x, y;
            const int i = 4 * pl + qd;
            in[i] = triplane::tap_inside(tp, qd, a.W, a.H, &x, &y);
            w[i] = triplane::tap_weight(tp, qd);
            v[i] = in[i] ? *reinterpret_cast<const Vec<P, VW>*>(base + (int(y) * a.W + int(x)) * a.C) : Vec<P, VW>{};
          }
        }
#pragma unroll
        for (int i = 0; i < 12; ++i) {
          if (!in[i]) continue;  // outside taps add nothing (as on the CPU)
#pragma unroll
          for (int l = 0; l < VW; ++l) acc[l] += w[i] * static_cast<T>(v[i].v[l]);
        }
      }
#pragma unroll
      for (int l = 0; l < VW; ++l) row[c + l] = to_e<E>(acc[l] * T(1.0 / 3.0));
    }
  }
}

// Warp scans (every lane calls them together).
// The product of x over the lanes below this one (1 on lane 0), and the product over all 32 lanes.
template <typename T>
__device__ __forceinline__ T exclusive_product(T x, T* total) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int d = 1; d < kWarp; d <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x *= y;
  }
  *total = __shfl_sync(0xffffffffu, x, kWarp - 1);
  const T below = __shfl_up_sync(0xffffffffu, x, 1);
  return lane == 0 ? T(1) : below;
}

// Lane l holds the map u -> f_l u + g_l. Returns the composition of the maps of the lanes above this one applied
// to `carry` (M_{l+1}(M_{l+2}(...M_31(carry)))), and in *all the composition of every lane's map applied to it.
template <typename T>
__device__ __forceinline__ T exclusive_suffix_affine(T f, T g, T carry, T* all) {
  const int lane = threadIdx.x % kWarp;
#pragma unroll
  for (int d = 1; d < kWarp; d <<= 1) {
    const T f2 = __shfl_down_sync(0xffffffffu, f, d), g2 = __shfl_down_sync(0xffffffffu, g, d);
    if (lane + d < kWarp) {  // (f, g) o (f2, g2): u -> f (f2 u + g2) + g
      g = f * g2 + g;
      f = f * f2;
    }
  }
  *all = __shfl_sync(0xffffffffu, f, 0) * carry + __shfl_sync(0xffffffffu, g, 0);
  const T f_above = __shfl_down_sync(0xffffffffu, f, 1), g_above = __shfl_down_sync(0xffffffffu, g, 1);
  return lane == kWarp - 1 ? carry : f_above * carry + g_above;
}

}  // namespace render_cuda
}  // namespace oneshot
