// The render_triplane CUDA kernels (render_cuda.cu has the design and the host side; render_tiles.cuh the
// building blocks). Included once, by render_cuda.cu.
#pragma once

#include "render/render_tiles.cuh"

namespace oneshot {
namespace render_cuda {

constexpr int kMaxThreads = 128;  // 4 warps; fewer when the decoder's tiles need the shared memory

// The decoder's weights into shared memory as GEMM operands (zero-padded), its biases, and (backward) the zeroed
// decoder-gradient accumulator.
template <typename Path, typename P>
__device__ void load_decoder(const Params<P, typename Path::T>& a, unsigned char* smem, bool backward) {
  using T = typename Path::T;
  using E = typename Path::E;
  const Layout& L = a.L;
  E* W1 = reinterpret_cast<E*>(smem + L.w1);
  E* W2 = reinterpret_cast<E*>(smem + L.w2);
  T* b1 = reinterpret_cast<T*>(smem + L.b1);
  T* b2 = reinterpret_cast<T*>(smem + L.b2);
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int i = tid; i < L.Hdp * L.Cp; i += nt) {
    const int j = i / L.Cp, c = i - j * L.Cp;
    W1[j * L.ldC + c] = to_e<E>(j < a.Hd && c < a.C ? a.w1[j * a.C + c] : T(0));
  }
  for (int i = tid; i < L.Op * L.Hdp; i += nt) {
    const int o = i / L.Hdp, j = i - o * L.Hdp;
    W2[o * L.ldH + j] = to_e<E>(o < a.O && j < a.Hd ? a.w2[o * a.Hd + j] : T(0));
  }
  for (int j = tid; j < L.Hdp; j += nt) b1[j] = j < a.Hd ? a.b1[j] : T(0);
  for (int o = tid; o < L.Op; o += nt) b2[o] = o < a.O ? a.b2[o] : T(0);
  if (backward) {
    T* acc = reinterpret_cast<T*>(smem + L.acc);
    for (int i = tid; i < L.acc_size; i += nt) acc[i] = T(0);
  }
}

// Layer 1 of the chunk: A = softplus(F w1^T + b1) [32][Hdp] and, when D is given, D = softplus'(.).
template <typename Path>
__device__ __forceinline__ void layer1(const Layout& L, const typename Path::E* W1, const typename Path::T* b1,
                                       const typename Path::E* F, typename Path::E* A, typename Path::E* D) {
  using T = typename Path::T;
  using E = typename Path::E;
  WarpGemm<Path>::run(kChunk, L.Hdp, L.Cp, row_major(F, L.ldC), col_major(W1, L.ldC), [&](int s, int j, T v) {
    const T h = v + b1[j];
    A[s * L.ldH + j] = to_e<E>(raymarch::softplus(h));
    if (D != nullptr) D[s * L.ldH + j] = to_e<E>(render::softplus_grad(h));
  });
}

// The ray's point of sample k, and whether it is inside the box (always, without clip_to_box).
template <typename P, typename T>
__device__ __forceinline__ bool inside_box(const Params<P, T>& a, int64_t ray, T t) {
  if (!a.clip) return true;
  const T* o = a.origins + ray * 3;
  const T* d = a.dirs + ray * 3;
  bool in = true;
#pragma unroll
  for (int i = 0; i < 3; ++i) in = in && fabs(o[i] + t * d[i]) <= a.half_box;
  return in;
}

// The compositing state a warp carries from chunk to chunk along a ray.
template <typename T>
struct Carry {
  T trans = T(1), op = T(0), num = T(0), sig = T(0), t = T(0);
};

// The chunk's intervals (lane l: the interval ending at its sample k = c0 + l, for 1 <= k < S): their weights
// w = alpha T, with T carried across chunks and within the chunk by a product scan; opacity and the depth
// numerator accumulated. sk, tk: this lane's sample (density with the box applied, depth). Returns w (0 where
// there is no interval) and sets *trans_k to the interval's transmittance T.
template <typename T>
__device__ __forceinline__ T composite_chunk(Carry<T>& cy, int k, int S, T sk, T tk, T bias, T* trans_k) {
  const int lane = threadIdx.x % kWarp;
  T s_before = __shfl_up_sync(0xffffffffu, sk, 1), t_before = __shfl_up_sync(0xffffffffu, tk, 1);
  if (lane == 0) {
    s_before = cy.sig;
    t_before = cy.t;
  }
  const bool has = k >= 1 && k < S;
  const render::Interval<T> iv = render::interval(s_before, sk, t_before, tk, bias);
  T total;
  const T below = exclusive_product(has ? iv.keep : T(1), &total);
  *trans_k = cy.trans * below;
  const T w = has ? iv.alpha * *trans_k : T(0);
  cy.op += cuda::warp_sum(w);
  cy.num += cuda::warp_sum(has ? w * iv.tbar : T(0));
  cy.trans *= total;
  cy.sig = __shfl_sync(0xffffffffu, sk, kWarp - 1);
  cy.t = __shfl_sync(0xffffffffu, tk, kWarp - 1);
  return w;
}

template <typename P, typename Path, int VW>
__global__ void __launch_bounds__(kMaxThreads, Path::kForwardBlocks) render_forward_kernel(Params<P, typename Path::T> a,
                                                                     typename Path::T* __restrict__ feat,
                                                                     typename Path::T* __restrict__ depth_out,
                                                                     typename Path::T* __restrict__ opacity_out,
                                                                     typename Path::T* __restrict__ weights_out) {
  using T = typename Path::T;
  using E = typename Path::E;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Layout& L = a.L;
  load_decoder<Path, P>(a, smem_raw, false);
  __syncthreads();
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp, Co = a.O - 1;
  unsigned char* mine = smem_raw + L.warp0 + warp * L.warp_bytes;
  E* F = reinterpret_cast<E*>(mine + L.F);
  E* A = reinterpret_cast<E*>(mine + L.A);
  T* Y = reinterpret_cast<T*>(mine + L.Y);  // the colours, over F once layer 1 has read it
  T* sig = reinterpret_cast<T*>(mine + L.vec);
  T* wv = sig + kChunk;
  const E* W1 = reinterpret_cast<const E*>(smem_raw + L.w1);
  const E* W2 = reinterpret_cast<const E*>(smem_raw + L.w2);
  const T* b1 = reinterpret_cast<const T*>(smem_raw + L.b1);
  const T* b2 = reinterpret_cast<const T*>(smem_raw + L.b2);
  for (int64_t ray = int64_t(blockIdx.x) * nw + warp; ray < a.N; ray += int64_t(gridDim.x) * nw) {
    const T* t = a.depths + ray * a.S;
    Carry<T> cy;
    T acc[kOutPerLane], prev[kOutPerLane];  // lane: feature channels lane + 32 q
#pragma unroll
    for (int q = 0; q < kOutPerLane; ++q) acc[q] = prev[q] = T(0);
    for (int c0 = 0; c0 < a.S; c0 += kChunk) {
      const int k = c0 + lane;
      const T tk = k < a.S ? t[k] : T(0);
      const bool inside = inside_box(a, ray, tk);
      __syncwarp();  // the previous chunk is done with F / Y and wv
      gather_chunk<Path, P, VW>(a, ray, c0, F);
      __syncwarp();
      layer1<Path>(L, W1, b1, F, A, nullptr);
      __syncwarp();
      WarpGemm<Path>::run(kChunk, L.Op, L.Hdp, row_major<E>(A, L.ldH), col_major(W2, L.ldH), [&](int s, int o, T v) {
        const T y = v + b2[o];
        if (o == 0) {
          sig[s] = y;
        } else if (o < a.O) {
          Y[s * L.ldY + o - 1] = render::color(y);
        }
      });
      __syncwarp();
      const T sk = k < a.S ? (inside ? sig[lane] : T(render::kOutsideDensity)) : T(0);
      T trans_k;
      const T w = composite_chunk(cy, k, a.S, sk, tk, a.bias, &trans_k);
      if (k >= 1 && k < a.S) weights_out[ray * (a.S - 1) + k - 1] = w;
      wv[lane] = w;
      __syncwarp();
      // features += sum over the chunk's intervals of w (c_before + c_k) / 2, lanes over channels
      const int rows = a.S - c0 < kChunk ? a.S - c0 : kChunk;
#pragma unroll
      for (int q = 0; q < kOutPerLane; ++q) {
        const int o = lane + kWarp * q;
        if (o >= Co) continue;
        for (int r = 0; r < rows; ++r) {
          const T cur = Y[r * L.ldY + o];
          acc[q] += wv[r] * ((prev[q] + cur) / T(2));
          prev[q] = cur;
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kOutPerLane; ++q) {
      const int o = lane + kWarp * q;
      if (o < Co) feat[ray * Co + o] = acc[q];
    }
    if (lane == 0) {
      opacity_out[ray] = cy.op;
      depth_out[ray] = render::composite_depth(cy.num, cy.op, t[0], t[a.S - 1]);
    }
  }
}

}  // namespace render_cuda
}  // namespace oneshot

#include "render/render_backward.cuh"
