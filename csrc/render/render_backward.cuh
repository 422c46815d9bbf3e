// The render_triplane CUDA backward kernel (render_cuda.cu has the design). Included by render_kernels.cuh.
#pragma once

#include "render/render_tiles.cuh"

namespace oneshot {
namespace render_cuda {

// gplanes [B, 3, H, W, C] (channels-last, T) += gF / 3 at the chunk's taps: the gather's lane mapping, each lane
// VW consecutive channels a step, added with float4 atomics where VW allows (sm_90), scalar ones otherwise.
template <typename Path, typename P, int VW>
__device__ __forceinline__ void scatter_chunk(const Params<P, typename Path::T>& a, int64_t ray, int c0,
                                              const typename Path::T* gF, typename Path::T* gplanes) {
  using T = typename Path::T;
  constexpr int kVec = (sizeof(T) == 4 && VW % 4 == 0) ? 4 : 1;
  const int lane = threadIdx.x % kWarp, G = a.group, gl = lane % G;
  const int64_t b = unsigned(ray) / unsigned(a.R), plane = int64_t(a.H) * a.W * a.C;  // N < 2^31: 32-bit division
  const T* o = a.origins + ray * 3;
  const T* d = a.dirs + ray * 3;
  for (int s = lane / G; s < kChunk; s += kWarp / G) {
    const int k = c0 + s;
    if (k >= a.S) continue;
    const T t = a.depths[ray * a.S + k];
    const T p0 = o[0] + t * d[0], p1 = o[1] + t * d[1], p2 = o[2] + t * d[2];
    for (int c = gl * VW; c < a.C; c += G * VW) {
      T g[VW];
#pragma unroll
      for (int l = 0; l < VW; ++l) g[l] = gF[s * a.L.ldG + c + l];
#pragma unroll
      for (int pl = 0; pl < 3; ++pl) {
        const triplane::Taps<T> tp = triplane::taps<T>(pick(p0, p1, p2, a.ax[pl][0]) * a.scale,
                                                       pick(p0, p1, p2, a.ax[pl][1]) * a.scale, a.W, a.H);
        T* base = gplanes + (b * 3 + pl) * plane + c;
#pragma unroll
        for (int qd = 0; qd < 4; ++qd) {
          int64_t x, y;
          if (!triplane::tap_inside(tp, qd, a.W, a.H, &x, &y)) continue;
          const T wq = triplane::tap_weight(tp, qd) * T(1.0 / 3.0);
          T* dst = base + (int(y) * a.W + int(x)) * a.C;
#pragma unroll
          for (int v0 = 0; v0 < VW; v0 += kVec) {
            T part[kVec];
#pragma unroll
            for (int l = 0; l < kVec; ++l) part[l] = wq * g[v0 + l];
            cuda::atomic_add_vec<kVec>(dst + v0, part);
          }
        }
      }
    }
  }
}

// Incoming gradients (nullptr when absent): gf [N, Co], gd, go [N], gw [N, S - 1].
template <typename T>
struct Cotangents {
  const T *gf, *gd, *go, *gw;
};

template <typename P, typename Path, int VW>
__global__ void __launch_bounds__(kMaxThreads, Path::kBackwardBlocks) render_backward_kernel(Params<P, typename Path::T> a,
                                                                      Cotangents<typename Path::T> cot,
                                                                      typename Path::T* __restrict__ scratch,
                                                                      typename Path::T* __restrict__ gplanes,
                                                                      typename Path::T* __restrict__ gdec) {
  using T = typename Path::T;
  using E = typename Path::E;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Layout& L = a.L;
  load_decoder<Path, P>(a, smem_raw, true);
  __syncthreads();
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  const int S = a.S, K = S - 1, Co = a.O - 1, Hd = a.Hd, C = a.C, O = a.O;
  unsigned char* mine = smem_raw + L.warp0 + warp * L.warp_bytes;
  E* F = reinterpret_cast<E*>(mine + L.F);
  E* A = reinterpret_cast<E*>(mine + L.A);
  T* gF = reinterpret_cast<T*>(mine + L.A);  // over A once the decoder's backward is past it
  E* D = reinterpret_cast<E*>(mine + L.D);   // softplus'(h), then gH in place
  T* Y = reinterpret_cast<T*>(mine + L.Y);   // pass 1's colours, over D
  E* gY = reinterpret_cast<E*>(mine + L.G);
  T* sig = reinterpret_cast<T*>(mine + L.vec);
  T* om = sig + kChunk;
  T* gs = om + kChunk;
  T* gfv = gs + kChunk;  // [Op]: 0, grad_features of the ray, zeros
  const E* W1 = reinterpret_cast<const E*>(smem_raw + L.w1);
  const E* W2 = reinterpret_cast<const E*>(smem_raw + L.w2);
  const T* b1 = reinterpret_cast<const T*>(smem_raw + L.b1);
  const T* b2 = reinterpret_cast<const T*>(smem_raw + L.b2);
  T* acc_w1 = reinterpret_cast<T*>(smem_raw + L.acc);
  T* acc_b1 = acc_w1 + Hd * C;
  T* acc_w2 = acc_b1 + Hd;
  T* acc_b2 = acc_w2 + O * Hd;
  // This warp's scratch: 4 values per sample (density, <grad_features, colour>, T of the interval starting
  // there, d loss / d its interval density).
  T* sig_s = scratch + (int64_t(blockIdx.x) * nw + warp) * 4 * S;
  T* dot_s = sig_s + S;
  T* trans_s = dot_s + S;
  T* dm_s = trans_s + S;
  for (int64_t ray = int64_t(blockIdx.x) * nw + warp; ray < a.N; ray += int64_t(gridDim.x) * nw) {
    const T* t = a.depths + ray * S;
    __syncwarp();  // the previous ray is done with gfv
    for (int o = lane; o < L.Op; o += kWarp) gfv[o] = cot.gf && o >= 1 && o < O ? cot.gf[ray * Co + o - 1] : T(0);
    // Pass 1: densities, <grad_features, colour>, transmittance; opacity and depth.
    Carry<T> cy;
    for (int c0 = 0; c0 < S; c0 += kChunk) {
      const int k = c0 + lane;
      const T tk = k < S ? t[k] : T(0);
      const bool inside = inside_box(a, ray, tk);
      __syncwarp();
      gather_chunk<Path, P, VW>(a, ray, c0, F);
      __syncwarp();
      layer1<Path>(L, W1, b1, F, A, nullptr);
      __syncwarp();
      WarpGemm<Path>::run(kChunk, L.Op, L.Hdp, row_major<E>(A, L.ldH), col_major(W2, L.ldH), [&](int s, int o, T v) {
        const T y = v + b2[o];
        if (o == 0) {
          sig[s] = y;
        } else if (o < O) {
          Y[s * L.ldY + o - 1] = render::color(y);
        }
      });
      __syncwarp();
      const T sk = k < S ? (inside ? sig[lane] : T(render::kOutsideDensity)) : T(0);
      T dot = T(0);
      if (cot.gf != nullptr) {
        for (int o = 0; o < Co; ++o) dot += gfv[1 + o] * Y[lane * L.ldY + o];
      }
      T trans_k;
      composite_chunk(cy, k, S, sk, tk, a.bias, &trans_k);
      if (k < S) {
        sig_s[k] = sk;
        dot_s[k] = dot;
        if (k >= 1) trans_s[k - 1] = trans_k;
      }
    }
    // ray_march's backward: dL/dw_k, then the reverse sweep u_{k-1} = keep_k u_k + G_k alpha_k (u_{K-1} = 0) as
    // an affine suffix scan over each chunk of intervals, last chunk first; dL/d(interval density) into dm_s.
    const T g_op = cot.go != nullptr ? cot.go[ray] : T(0);
    T depth_coef = T(0), depth_val = T(0);
    if (cot.gd != nullptr && render::depth_passes_grad(cy.num, cy.op, t[0], t[K])) {
      depth_val = render::quotient(cy.num, cy.op);
      depth_coef = render::quotient(cot.gd[ray], cy.op);
    }
    __syncwarp();  // pass 1's scratch, written lane by lane, is read across lanes below
    T carry = T(0);
    for (int i0 = (K - 1) / kChunk * kChunk; i0 >= 0; i0 -= kChunk) {
      const int i = i0 + lane;
      render::Interval<T> iv{};
      T f = T(1), g = T(0), Gi = T(0), Ti = T(0);
      if (i < K) {
        iv = render::interval(sig_s[i], sig_s[i + 1], t[i], t[i + 1], a.bias);
        Gi = g_op + depth_coef * (iv.tbar - depth_val);
        if (cot.gw != nullptr) Gi += cot.gw[ray * K + i];
        if (cot.gf != nullptr) Gi += (dot_s[i] + dot_s[i + 1]) / T(2);
        Ti = trans_s[i];
        f = iv.keep;
        g = Gi * iv.alpha;
      }
      T all;
      const T u = exclusive_suffix_affine(f, g, carry, &all);
      if (i < K) dm_s[i] = Ti * (Gi - u) * iv.delta * iv.e * iv.slope;
      carry = all;
    }
    __syncwarp();
    // Pass 2: per chunk, d loss / d decoder outputs, the decoder's backward, the scatter into the planes.
    T w_prev = T(0), dm_prev = T(0);
    for (int c0 = 0; c0 < S; c0 += kChunk) {
      const int k = c0 + lane;
      const T tk = k < S ? t[k] : T(0);
      const bool inside = inside_box(a, ray, tk);
      T wk = T(0), dmk = T(0);  // the interval starting at sample k
      if (k < K) {
        wk = render::interval(sig_s[k], sig_s[k + 1], t[k], t[k + 1], a.bias).alpha * trans_s[k];
        dmk = dm_s[k];
      }
      T w_before = __shfl_up_sync(0xffffffffu, wk, 1), dm_before = __shfl_up_sync(0xffffffffu, dmk, 1);
      if (lane == 0) {
        w_before = w_prev;
        dm_before = dm_prev;
      }
      w_prev = __shfl_sync(0xffffffffu, wk, kWarp - 1);
      dm_prev = __shfl_sync(0xffffffffu, dmk, kWarp - 1);
      __syncwarp();  // the previous chunk is done with om, gs, the tiles
      om[lane] = k < S ? (w_before + wk) / T(2) : T(0);      // omega_k, the weight of colour k
      gs[lane] = k < S && inside ? (dm_before + dmk) / T(2) : T(0);  // d loss / d raw density k
      gather_chunk<Path, P, VW>(a, ray, c0, F);
      __syncwarp();
      layer1<Path>(L, W1, b1, F, A, D);
      __syncwarp();
      WarpGemm<Path>::run(kChunk, L.Op, L.Hdp, row_major<E>(A, L.ldH), col_major(W2, L.ldH), [&](int s, int o, T v) {
        T gy = T(0);
        if (o == 0) {
          gy = gs[s];
        } else if (o < O) {
          gy = gfv[o] * om[s] * render::color_grad(render::sigmoid(v + b2[o]));
        }
        gY[s * L.ldO + o] = to_e<E>(gy);
      });
      __syncwarp();
      for (int o = lane; o < O; o += kWarp) {
        T sum = T(0);
        for (int s = 0; s < kChunk; ++s) sum += from_e(gY[s * L.ldO + o]);
        atomicAdd(acc_b2 + o, sum);
      }
      // gw2^T [Hdp, Op] += A^T gY; gA = gY w2 [32, Hdp], gH = gA softplus'(h) over D.
      WarpGemm<Path>::run(L.Hdp, L.Op, kChunk, col_major<E>(A, L.ldH), row_major<E>(gY, L.ldO),
                          [&](int j, int o, T v) {
                            if (j < Hd && o < O) atomicAdd(acc_w2 + o * Hd + j, v);
                          });
      WarpGemm<Path>::run(kChunk, L.Hdp, L.Op, row_major<E>(gY, L.ldO), row_major(W2, L.ldH), [&](int s, int j, T v) {
        E* p = D + s * L.ldH + j;
        *p = to_e<E>(v * from_e(*p));
      });
      __syncwarp();
      for (int j = lane; j < Hd; j += kWarp) {
        T sum = T(0);
        for (int s = 0; s < kChunk; ++s) sum += from_e(D[s * L.ldH + j]);
        atomicAdd(acc_b1 + j, sum);
      }
      // gw1 [Hdp, Cp] += gH^T F; gF = gH w1 [32, Cp] (over A).
      WarpGemm<Path>::run(L.Hdp, L.Cp, kChunk, col_major<E>(D, L.ldH), row_major<E>(F, L.ldC),
                          [&](int j, int c, T v) {
                            if (j < Hd && c < C) atomicAdd(acc_w1 + j * C + c, v);
                          });
      WarpGemm<Path>::run(kChunk, L.Cp, L.Hdp, row_major<E>(D, L.ldH), row_major(W1, L.ldC),
                          [&](int s, int c, T v) { gF[s * L.ldG + c] = v; });
      __syncwarp();
      scatter_chunk<Path, P, VW>(a, ray, c0, gF, gplanes);
    }
  }
  __syncthreads();
  T* acc = reinterpret_cast<T*>(smem_raw + L.acc);
  for (int i = threadIdx.x; i < L.acc_size; i += blockDim.x) atomicAdd(gdec + i, acc[i]);
}

}  // namespace render_cuda
}  // namespace oneshot
