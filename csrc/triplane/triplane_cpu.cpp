// CPU kernels of oneshot::triplane_sample and its backward.
//
// Layout: the kernels read the planes channels-last, [B, 3, H, W, C] with unit channel stride, so the C
// channels of one tap are contiguous. Planes whose channel stride is already 1 (e.g. a channels-last view)
// are used in place; others are copied once.
// Forward: parallel over points.
// Backward: points are bucketed per plane by the row of their top taps (a stable counting sort), and each
// worker owns a band of rows: it zeroes its rows of the planes' gradient, then adds the taps that fall in them
// in bucket order, and takes the dot products that d/d(points) needs while those rows are in cache (each row's
// half of a point's derivative is kept apart and summed in a fixed order at the end). No races, and every sum
// has the same order for any thread count (bitwise reproducible). The planes' gradient is returned
// channels-last (a permuted view).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/cpu_buffers.h"
#include "common/cpu_math.h"
#include "triplane/triplane.h"
#include "triplane/triplane_args.h"

namespace oneshot {
namespace {

using triplane::Taps;

// The planes as a channels-last [B, 3, H, W, C] view with unit channel stride (a copy only when needed).
at::Tensor channels_last(const at::Tensor& planes) {
  at::Tensor cl = planes.permute({0, 1, 3, 4, 2});
  return (cl.stride(4) == 1 || cl.size(4) <= 1) ? cl : cl.contiguous();
}

template <typename T>
struct Geometry {
  int64_t B, M, C, H, W;
  int64_t sb, sp, sh, sw;  // element strides of the channels-last planes (channel stride 1)
  T scale;                 // 2 / box_warp, rounded to T
  int64_t ax[3][2];
  triplane::Reduce reduce;

  // Pointer to the channels of tap (x, y) of plane p.
  const T* at(const T* base, int64_t b, int p, int64_t y, int64_t x) const {
    return base + b * sb + p * sp + y * sh + x * sw;
  }
  // The gradient row for point (b, m) and plane p (the reduction's output row it read into).
  const T* grad_row(const T* grad_out, int64_t b, int p, int64_t m) const {
    return reduce == triplane::kNone ? grad_out + ((b * 3 + p) * M + m) * C : grad_out + (b * M + m) * C;
  }
  Taps<T> taps(const T* point, int p) const {
    return triplane::taps<T>(point[ax[p][0]] * scale, point[ax[p][1]] * scale, W, H);
  }
};

template <typename T>
Geometry<T> geometry(const at::Tensor& planes_cl, int64_t M, double box_warp, at::IntArrayRef axes,
                     triplane::Reduce reduce) {
  Geometry<T> g;
  g.B = planes_cl.size(0);
  g.H = planes_cl.size(2);
  g.W = planes_cl.size(3);
  g.C = planes_cl.size(4);
  g.M = M;
  g.sb = planes_cl.stride(0);
  g.sp = planes_cl.stride(1);
  g.sh = planes_cl.stride(2);
  g.sw = planes_cl.stride(3);
  g.scale = static_cast<T>(2.0 / box_warp);
  for (int p = 0; p < 3; ++p) {
    g.ax[p][0] = axes[2 * p];
    g.ax[p][1] = axes[2 * p + 1];
  }
  g.reduce = reduce;
  return g;
}

// The taps of one point on the three planes: channel pointers and weights, plane by plane.
template <typename T>
struct PointTaps {
  const T* ptr[12];
  T w[12];
  int begin[4];      // taps of plane p are [begin[p], begin[p + 1])
};

template <typename T>
__attribute__((always_inline)) inline void gather_taps(const Geometry<T>& g, const T* planes, const T* point, int64_t b, PointTaps<T>& pt) {
  int n = 0;
  for (int p = 0; p < 3; ++p) {
    pt.begin[p] = n;
    const Taps<T> t = g.taps(point, p);
    for (int k = 0; k < 4; ++k) {
      int64_t x, y;
      if (!triplane::tap_inside(t, k, g.W, g.H, &x, &y)) continue;
      pt.ptr[n] = g.at(planes, b, p, y, x);
      pt.w[n] = triplane::tap_weight(t, k);
      ++n;
    }
  }
  pt.begin[3] = n;
}

// out[0, BW) = sum over taps [t0, t1) of w_t * ptr_t[c0, c0 + BW): accumulated in registers (BW is a
// compile-time block of channels), taps in order. `width` < BW handles the last, partial block.
template <typename T, int BW>
inline void blend_block(const PointTaps<T>& pt, int t0, int t1, int64_t c0, int64_t width, T scale, bool divide3,
                        T* __restrict__ out) {
  T acc[BW];
  for (int l = 0; l < BW; ++l) acc[l] = T(0);
  if (width == BW) {
    for (int t = t0; t < t1; ++t) {
      const T w = pt.w[t];
      const T* v = pt.ptr[t] + c0;
      for (int l = 0; l < BW; ++l) acc[l] += w * v[l];
    }
    for (int l = 0; l < BW; ++l) out[l] = divide3 ? acc[l] / T(3) : acc[l] * scale;
  } else {
    for (int t = t0; t < t1; ++t) {
      const T w = pt.w[t];
      const T* v = pt.ptr[t] + c0;
      for (int64_t l = 0; l < width; ++l) acc[l] += w * v[l];
    }
    for (int64_t l = 0; l < width; ++l) out[l] = divide3 ? acc[l] / T(3) : acc[l] * scale;
  }
}

constexpr int kBlock = 16;  // channels per register block

// Prefetch the channels of every tap of a point (gathered a few points ahead of its use).
template <typename T>
inline void prefetch_taps(const PointTaps<T>& pt, int64_t C) {
  const int64_t lines = (C * static_cast<int64_t>(sizeof(T)) + 63) / 64;
  for (int t = 0; t < pt.begin[3]; ++t) {
    for (int64_t l = 0; l < lines && l < 4; ++l) __builtin_prefetch(reinterpret_cast<const char*>(pt.ptr[t]) + 64 * l);
  }
}

constexpr int kAhead = 4;  // points gathered (and their taps prefetched) ahead of the one being used:
                           // the taps are a random walk through the planes, and prefetching them ahead
                           // measured 1.5x faster on the paper's workload

// Gather point bm's taps into its ring slot and prefetch them.
template <typename T>
__attribute__((always_inline)) inline void gather_ahead(const Geometry<T>& g, const T* planes, const T* points, int64_t bm, PointTaps<T>* ring) {
  PointTaps<T>& pt = ring[bm % kAhead];
  gather_taps(g, planes, points + bm * 3, g.B == 1 ? 0 : bm / g.M, pt);
  prefetch_taps(pt, g.C);
}

template <typename T>
ONESHOT_CPU_MULTIVERSION void forward_range(const Geometry<T>& g, const T* planes, const T* points, T* out,
                                            int64_t begin, int64_t end) {
  const int64_t C = g.C, M = g.M;
  PointTaps<T> ring[kAhead];
  for (int64_t bm = begin; bm < std::min(end, begin + kAhead - 1); ++bm) gather_ahead(g, planes, points, bm, ring);
  int64_t b = begin / M, m = begin % M;
  for (int64_t bm = begin; bm < end; ++bm) {
    if (bm + kAhead - 1 < end) gather_ahead(g, planes, points, bm + kAhead - 1, ring);
    const PointTaps<T>& pt = ring[bm % kAhead];
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      const int64_t width = std::min<int64_t>(kBlock, C - c0);
      if (g.reduce == triplane::kNone) {
        for (int p = 0; p < 3; ++p) {
          blend_block<T, kBlock>(pt, pt.begin[p], pt.begin[p + 1], c0, width, T(1), false,
                                 out + ((b * 3 + p) * M + m) * C + c0);
        }
      } else {
        // mean = (sum of the planes) / 3, as torch's mean computes it
        blend_block<T, kBlock>(pt, 0, pt.begin[3], c0, width, T(1), g.reduce == triplane::kMean, out + bm * C + c0);
      }
    }
    if (++m == M) {
      m = 0;
      ++b;
    }
  }
}

// The two taps (x0, y), (x0 + 1, y) of one row, both inside: in one pass over the channels, add w_a go and
// w_b go to their gradient cells (adjacent: dst and dst + C) and, when va / vb are given, accumulate
// <go, dx_a va + dx_b vb> and <go, dy_a va + dy_b vb> (eight fixed partial sums each: a fixed order).
template <typename T>
inline void fused_row_pair(const T* __restrict__ go, int64_t C, T* __restrict__ dst, T wa, T wb,
                           const T* __restrict__ va, const T* __restrict__ vb, T dxa, T dxb, T dya, T dyb, T* hx,
                           T* hy) {
  if (dst) {
    T* da = dst;
    T* db = dst + C;
    for (int64_t c = 0; c < C; ++c) {
      da[c] += wa * go[c];
      db[c] += wb * go[c];
    }
  }
  if (va) {
    T ax[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
    T ay[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      for (int l = 0; l < 8; ++l) {
        ax[l] += go[c + l] * (dxa * va[c + l] + dxb * vb[c + l]);
        ay[l] += go[c + l] * (dya * va[c + l] + dyb * vb[c + l]);
      }
    }
    T sx = ((ax[0] + ax[1]) + (ax[2] + ax[3])) + ((ax[4] + ax[5]) + (ax[6] + ax[7]));
    T sy = ((ay[0] + ay[1]) + (ay[2] + ay[3])) + ((ay[4] + ay[5]) + (ay[6] + ay[7]));
    for (; c < C; ++c) {
      sx += go[c] * (dxa * va[c] + dxb * vb[c]);
      sy += go[c] * (dya * va[c] + dyb * vb[c]);
    }
    *hx += sx;
    *hy += sy;
  }
}

// Backward over rows [r0, r1) of plane p of batch b. `order` lists the points by the row of their top taps:
// bucket y0 + 1 (y0 in [-1, H - 1]) is order[offsets[y0 + 1] .. offsets[y0 + 2]).
//  - grad_cl (optional): the planes' gradient, channels-last; this band zeroes its rows, then adds the taps in them.
//  - partial (optional): per point and plane, the two halves (top row, bottom row) of d/d(pixel x, pixel y),
//    [B, 3, M, 2, 2]; the band that owns a row writes that half. The dot products read the planes row-locally
//    (the points are sorted by row), which is what makes this cheaper than a pass in point order.
template <typename T>
ONESHOT_CPU_MULTIVERSION void backward_band(const Geometry<T>& g, const T* grad_out, const T* points, const T* planes,
                                            const int32_t* order, const int64_t* offsets, int64_t b, int p, int64_t r0,
                                            int64_t r1, T* grad_cl, T* partial) {
  const int64_t C = g.C, W = g.W, H = g.H, M = g.M;
  const T factor = g.reduce == triplane::kMean ? T(1) / T(3) : T(1);
  T* plane = grad_cl ? grad_cl + (b * 3 + p) * H * W * C : nullptr;  // contiguous channels-last buffer
  if (plane) std::memset(plane + r0 * W * C, 0, sizeof(T) * (r1 - r0) * W * C);
  // Points whose top row is r0 - 1 .. r1 - 1 have a tap row inside [r0, r1).
  const int64_t last = offsets[r1 + 1];  // buckets y0 = r0 - 1 .. r1 - 1 are contiguous in `order`
  const int64_t lines = std::min<int64_t>(4, (C * static_cast<int64_t>(sizeof(T)) + 63) / 64);
  for (int64_t y0 = r0 - 1; y0 < r1; ++y0) {
    for (int64_t i = offsets[y0 + 1]; i < offsets[y0 + 2]; ++i) {
      if (i + 8 < last) {  // the sorted order is a random walk through points and grad_out: prefetch ahead
        const int64_t ma = order[i + 8];
        __builtin_prefetch(points + (b * M + ma) * 3);
        const char* gr = reinterpret_cast<const char*>(g.grad_row(grad_out, b, p, ma));
        for (int64_t l = 0; l < lines; ++l) __builtin_prefetch(gr + 64 * l);
      }
      const int64_t m = order[i];
      const Taps<T> t = g.taps(points + (b * M + m) * 3, p);
      const T* go = g.grad_row(grad_out, b, p, m);
      T hx[2] = {T(0), T(0)}, hy[2] = {T(0), T(0)};
      bool done[2] = {false, false};
      // Common case: both taps of a row inside the plane and the band: one fused pass over the channels.
      for (int h = 0; h < 2; ++h) {
        int64_t xa, ya, xb, yb;
        if (!triplane::tap_inside(t, 2 * h, W, H, &xa, &ya) || !triplane::tap_inside(t, 2 * h + 1, W, H, &xb, &yb) ||
            ya < r0 || ya >= r1) {
          continue;
        }
        fused_row_pair<T>(go, C, plane ? plane + (ya * W + xa) * C : nullptr,
                          triplane::tap_weight(t, 2 * h) * factor, triplane::tap_weight(t, 2 * h + 1) * factor,
                          partial ? g.at(planes, b, p, ya, xa) : nullptr, partial ? g.at(planes, b, p, yb, xb) : nullptr,
                          triplane::tap_dweight_dx(t, 2 * h), triplane::tap_dweight_dx(t, 2 * h + 1),
                          triplane::tap_dweight_dy(t, 2 * h), triplane::tap_dweight_dy(t, 2 * h + 1), &hx[h], &hy[h]);
        done[h] = true;
      }
      for (int k = 0; k < 4; ++k) {
        if (done[k >> 1]) continue;
        int64_t x, y;
        if (!triplane::tap_inside(t, k, W, H, &x, &y) || y < r0 || y >= r1) continue;
        if (plane) {
          const T w = triplane::tap_weight(t, k) * factor;
          T* dst = plane + (y * W + x) * C;
          for (int64_t ch = 0; ch < C; ++ch) dst[ch] += w * go[ch];
        }
        if (partial) {
          const T d = cpu::dot(go, g.at(planes, b, p, y, x), C);
          hx[k >> 1] += triplane::tap_dweight_dx(t, k) * d;
          hy[k >> 1] += triplane::tap_dweight_dy(t, k) * d;
        }
      }
      if (partial) {
        for (int h = 0; h < 2; ++h) {
          if (t.y0 + h < r0 || t.y0 + h >= r1) continue;  // that row belongs to another band
          T* out = partial + (((b * 3 + p) * M + m) * 2 + h) * 2;
          out[0] = hx[h];
          out[1] = hy[h];
        }
      }
    }
  }
}

// d/d(points) from the halves: sum top + bottom per plane, then planes in order (a fixed summation order).
template <typename T>
ONESHOT_CPU_MULTIVERSION void combine_points(const Geometry<T>& g, const T* partial, T* grad_points, int64_t begin,
                                             int64_t end) {
  const T factor = g.reduce == triplane::kMean ? T(1) / T(3) : T(1);
  for (int64_t bm = begin; bm < end; ++bm) {
    const int64_t b = g.B == 1 ? 0 : bm / g.M, m = bm - b * g.M;
    T gc[3] = {T(0), T(0), T(0)};
    for (int p = 0; p < 3; ++p) {
      const T* h = partial + ((b * 3 + p) * g.M + m) * 4;
      // d(pixel)/d(c) = size / 2; d(c)/d(point) = scale (applied below).
      gc[g.ax[p][0]] += (h[0] + h[2]) * factor * T(g.W) / T(2);
      gc[g.ax[p][1]] += (h[1] + h[3]) * factor * T(g.H) / T(2);
    }
    for (int a = 0; a < 3; ++a) grad_points[bm * 3 + a] = gc[a] * g.scale;
  }
}

// Backward: a stable counting sort of each (b, p)'s points by top tap row (points with no tap inside are
// dropped), then bands of rows in parallel (backward_band), then the points' gradient from the halves.
// g describes the (channels-last) planes; grad_cl / grad_points may be null when not wanted.
template <typename T>
void backward(const Geometry<T>& g, const T* grad_out, const T* points, const T* planes, T* grad_cl, T* grad_points) {
  const int64_t B = g.B, M = g.M, H = g.H;
  // Keys (the top tap row + 1, or -1 without taps) in parallel over points, then a counting sort per plane.
  std::vector<int32_t> key(B * 3 * M);
  at::parallel_for(0, B * M, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = g.B == 1 ? 0 : bm / M, m = bm - b * M;
      for (int p = 0; p < 3; ++p) {
        const Taps<T> t = g.taps(points + bm * 3, p);
        // Rows y0 and y0 + 1 must touch [0, H): y0 in [-1, H - 1]; taps() guarantees it when any is set.
        key[(b * 3 + p) * M + m] = t.any ? static_cast<int32_t>(t.y0 + 1) : -1;
      }
    }
  });
  std::vector<int32_t> order(B * 3 * M);
  std::vector<int64_t> offsets(B * 3 * (H + 2));
  at::parallel_for(0, B * 3, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int32_t* k = key.data() + bp * M;
      int64_t* off = offsets.data() + bp * (H + 2);
      std::fill(off, off + H + 2, 0);
      for (int64_t m = 0; m < M; ++m) {
        if (k[m] >= 0) off[k[m] + 1]++;
      }
      for (int64_t r = 0; r <= H; ++r) off[r + 1] += off[r];
      std::vector<int64_t> fill(off, off + H + 1);
      int32_t* ord = order.data() + bp * M;
      for (int64_t m = 0; m < M; ++m) {
        if (k[m] >= 0) ord[fill[k[m]]++] = static_cast<int32_t>(m);
      }
    }
  });
  std::vector<T> partial(grad_points ? B * 3 * M * 4 : 0, T(0));
  // Bands of rows: enough work units for every thread, never splitting below one row.
  const int64_t want = std::max<int64_t>(1, 8 * at::get_num_threads());
  const int64_t bands = std::min<int64_t>(H, std::max<int64_t>(1, (want + B * 3 - 1) / (B * 3)));
  at::parallel_for(0, B * 3 * bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t bp = unit / bands, band = unit % bands;
      const int64_t r0 = cpu::split_begin(band, bands, H), r1 = cpu::split_begin(band + 1, bands, H);
      backward_band<T>(g, grad_out, points, planes, order.data() + bp * M, offsets.data() + bp * (H + 2), bp / 3,
                       static_cast<int>(bp % 3), r0, r1, grad_cl, grad_points ? partial.data() : nullptr);
    }
  });
  if (grad_points) {
    at::parallel_for(0, B * M, 1024, [&](int64_t begin, int64_t end) {
      combine_points<T>(g, partial.data(), grad_points, begin, end);
    });
  }
}

at::Tensor triplane_sample_cpu(const at::Tensor& planes, const at::Tensor& points, double box_warp,
                               at::IntArrayRef axes, c10::string_view reduce_sv) {
  triplane::check_inputs(planes, points, axes, box_warp, /*cuda=*/false);
  const auto reduce = triplane::parse_reduce(std::string(reduce_sv));
  const int64_t B = planes.size(0), C = planes.size(2), M = points.size(1);
  at::Tensor out = reduce == triplane::kNone ? at::empty({B, 3, M, C}, planes.options())
                                             : at::empty({B, M, C}, planes.options());
  if (out.numel() == 0) return out;
  const at::Tensor planes_cl = channels_last(planes);
  const at::Tensor pts = points.contiguous();
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_cpu", [&] {
    const auto g = geometry<scalar_t>(planes_cl, M, box_warp, axes, reduce);
    const scalar_t* pl = planes_cl.const_data_ptr<scalar_t>();
    const scalar_t* pp = pts.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * M, 256, [&](int64_t begin, int64_t end) { forward_range<scalar_t>(g, pl, pp, o, begin, end); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_backward_cpu(const at::Tensor& grad_out, const at::Tensor& planes,
                                                                const at::Tensor& points, double box_warp,
                                                                at::IntArrayRef axes, c10::string_view reduce_sv,
                                                                bool planes_requires_grad,
                                                                bool points_requires_grad) {
  triplane::check_inputs(planes, points, axes, box_warp, /*cuda=*/false);
  const auto reduce = triplane::parse_reduce(std::string(reduce_sv));
  triplane::check_grad_out(grad_out, planes, points, reduce);
  const int64_t B = planes.size(0), C = planes.size(2), H = planes.size(3), W = planes.size(4);
  const int64_t M = points.size(1);
  TORCH_CHECK_VALUE(M < (int64_t(1) << 31), "triplane_sample supports M < 2^31 points, got ", M);
  const at::Tensor go = grad_out.contiguous();
  const at::Tensor pts = points.contiguous();
  at::Tensor grad_planes = at::empty({0}, planes.options());
  at::Tensor grad_points = at::empty({0}, points.options());
  // The planes' gradient is accumulated channels-last and returned as a [B, 3, C, H, W] view of it.
  at::Tensor grad_cl = planes_requires_grad ? cpu::empty_large({B, 3, H, W, C}, planes.options()) : at::Tensor();
  if (points_requires_grad) grad_points = at::zeros({B, M, 3}, points.options());
  const bool points_work = points_requires_grad && C > 0 && M > 0 && B > 0;
  if (grad_cl.defined() && M == 0) grad_cl.zero_();
  if ((grad_cl.defined() && grad_cl.numel() > 0 && M > 0) || points_work) {
    // The planes' values are read only for d/d(points); otherwise a view supplies the geometry.
    const at::Tensor planes_cl = points_work ? channels_last(planes) : planes.permute({0, 1, 3, 4, 2});
    AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "triplane_sample_backward_cpu", [&] {
      const auto g = geometry<scalar_t>(planes_cl, M, box_warp, axes, reduce);
      backward<scalar_t>(g, go.const_data_ptr<scalar_t>(), pts.const_data_ptr<scalar_t>(),
                         planes_cl.const_data_ptr<scalar_t>(),
                         grad_cl.defined() && grad_cl.numel() > 0 ? grad_cl.mutable_data_ptr<scalar_t>() : nullptr,
                         points_work ? grad_points.mutable_data_ptr<scalar_t>() : nullptr);
    });
  }
  if (grad_cl.defined()) grad_planes = grad_cl.permute({0, 1, 4, 2, 3});
  return {grad_planes, grad_points};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) {
  m.impl("triplane_sample", &triplane_sample_cpu);
  m.impl("triplane_sample_backward", &triplane_sample_backward_cpu);
}

}  // namespace oneshot
