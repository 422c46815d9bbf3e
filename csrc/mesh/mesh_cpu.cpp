// CPU kernel of oneshot::rasterize_mesh.
//
// Per batch, every face is set up once (in parallel): its winding normalised to positive area, its inverse
// depths and the rows and columns of the pixel centres its bounding box can cover. The image is then split
// into bands of rows processed in parallel; each band walks the faces in index order and tests the pixel
// centres of its rows inside each face's box with the pinned edge functions of mesh.h, keeping per pixel the
// smallest depth (strict <, so equal depths keep the lower face index). Bands own disjoint pixels: no races,
// and the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "mesh/mesh.h"

namespace oneshot {
namespace {

struct Face {
  double x[3], y[3], iz[3];  // positive winding
  double area;
  int slot[3];  // original vertex slot of each normalised slot
  int64_t i0, i1, j0, j1;  // candidate pixel rows and columns (inclusive); i0 > i1: covers nothing
};

template <typename T, typename I>
void setup_faces(const T* verts, const I* faces, int64_t V, int64_t F, int64_t H, int64_t W, Face* out) {
  at::parallel_for(0, F, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t f = begin; f < end; ++f) {
      Face& t = out[f];
      t.i0 = 1;
      t.i1 = 0;
      bool ok = true;
      for (int k = 0; k < 3; ++k) {
        const T* v = verts + int64_t(faces[f * 3 + k]) * 3;
        t.x[k] = double(v[0]);
        t.y[k] = double(v[1]);
        const double z = double(v[2]);
        ok = ok && std::isfinite(t.x[k]) && std::isfinite(t.y[k]) && std::isfinite(z) && z > 0;
        t.iz[k] = ok ? 1.0 / z : 0.0;
        t.slot[k] = k;
      }
      if (!ok) continue;
      double area = mesh::edge(t.x[0], t.y[0], t.x[1], t.y[1], t.x[2], t.y[2]);
      if (!(area != 0)) continue;  // degenerate (or NaN)
      if (area < 0) {  // normalise the winding: swap slots 1 and 2 (the edge function then negates exactly)
        std::swap(t.x[1], t.x[2]);
        std::swap(t.y[1], t.y[2]);
        std::swap(t.iz[1], t.iz[2]);
        std::swap(t.slot[1], t.slot[2]);
        area = -area;
      }
      t.area = area;
      const double xmin = std::min({t.x[0], t.x[1], t.x[2]}), xmax = std::max({t.x[0], t.x[1], t.x[2]});
      const double ymin = std::min({t.y[0], t.y[1], t.y[2]}), ymax = std::max({t.y[0], t.y[1], t.y[2]});
      // Pixel centre j + 0.5 in [xmin, xmax] <=> j in [ceil(xmin - 0.5), floor(xmax - 0.5)] (exact in double);
      // clamped to the image before the conversion to int.
      auto clampd = [](double v, int64_t n) { return int64_t(std::min(double(n), std::max(-1.0, v))); };
      t.j0 = std::max<int64_t>(0, clampd(std::ceil(xmin - 0.5), W));
      t.j1 = std::min<int64_t>(W - 1, clampd(std::floor(xmax - 0.5), W));
      t.i0 = std::max<int64_t>(0, clampd(std::ceil(ymin - 0.5), H));
      t.i1 = std::min<int64_t>(H - 1, clampd(std::floor(ymax - 0.5), H));
      if (t.j0 > t.j1) {
        t.i0 = 1;
        t.i1 = 0;
      }
    }
  });
}

struct Hit {
  double depth;
  double b[3];  // in the original vertex order of the face
};

// Rows [r0, r1) of one image: every face in index order.
void raster_band(const std::vector<Face>& faces, int64_t W, int64_t r0, int64_t r1, int64_t* index, Hit* hit) {
  const int64_t F = static_cast<int64_t>(faces.size());
  for (int64_t f = 0; f < F; ++f) {
    const Face& t = faces[f];
    const int64_t i0 = std::max(t.i0, r0), i1 = std::min(t.i1, r1 - 1);
    if (i0 > i1) continue;
    for (int64_t i = i0; i <= i1; ++i) {
      const double py = double(i) + 0.5;
      for (int64_t j = t.j0; j <= t.j1; ++j) {
        const double px = double(j) + 0.5;
        const double e0 = mesh::edge(t.x[1], t.y[1], t.x[2], t.y[2], px, py);
        if (!mesh::inside_edge(e0, t.x[1], t.y[1], t.x[2], t.y[2])) continue;
        const double e1 = mesh::edge(t.x[2], t.y[2], t.x[0], t.y[0], px, py);
        if (!mesh::inside_edge(e1, t.x[2], t.y[2], t.x[0], t.y[0])) continue;
        const double e2 = mesh::edge(t.x[0], t.y[0], t.x[1], t.y[1], px, py);
        if (!mesh::inside_edge(e2, t.x[0], t.y[0], t.x[1], t.y[1])) continue;
        const double b0 = e0 / t.area, b1 = e1 / t.area, b2 = e2 / t.area;
        const double depth = 1.0 / mesh::inv_depth(b0, b1, b2, t.iz[0], t.iz[1], t.iz[2]);
        Hit& h = hit[i * W + j];
        if (depth < h.depth) {
          h.depth = depth;
          h.b[t.slot[0]] = b0;
          h.b[t.slot[1]] = b1;
          h.b[t.slot[2]] = b2;
          index[i * W + j] = f;
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rasterize_mesh_cpu(const at::Tensor& vertices, const at::Tensor& faces,
                                                                  int64_t height, int64_t width) {
  check_dim(vertices, 3, "vertices", "[B, V, 3]");
  TORCH_CHECK_VALUE(vertices.size(2) == 3, "vertices must be [B, V, 3], got ", shape_str(vertices));
  check_dim(faces, 2, "faces", "[F, 3]");
  TORCH_CHECK_VALUE(faces.size(1) == 3, "faces must be [F, 3], got ", shape_str(faces));
  check_float(vertices, "vertices");
  TORCH_CHECK_TYPE(faces.scalar_type() == at::kLong || faces.scalar_type() == at::kInt,
                   "faces must be int32 or int64, got ", dtype_str(faces.scalar_type()));
  check_same_device(vertices, faces, "vertices", "faces");
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "resolution must be >= 1, got (", height, ", ", width, ")");
  const int64_t B = vertices.size(0), V = vertices.size(1), F = faces.size(0), H = height, W = width;
  const at::Tensor vc = vertices.contiguous(), fc = faces.contiguous();
  auto opts = vertices.options();
  at::Tensor index = at::empty({B, H, W}, opts.dtype(at::kLong));
  at::Tensor bary = at::empty({B, H, W, 3}, opts);
  at::Tensor depth = at::empty({B, H, W}, opts);
  AT_DISPATCH_INDEX_TYPES(faces.scalar_type(), "rasterize_mesh_cpu_faces", [&] {
    const index_t* fp = fc.const_data_ptr<index_t>();
    for (int64_t k = 0; k < F * 3; ++k) {
      TORCH_CHECK_VALUE(fp[k] >= 0 && fp[k] < V, "faces must index vertices 0 .. ", V - 1, ", got ", int64_t(fp[k]),
                        " in face ", k / 3);
    }
  });
  if (B == 0) return {index, bary, depth};
  const int64_t bands = std::min<int64_t>(H, std::max<int64_t>(1, at::get_num_threads() * 4));
  AT_DISPATCH_FLOATING_TYPES(vertices.scalar_type(), "rasterize_mesh_cpu", [&] {
    using T = scalar_t;
    AT_DISPATCH_INDEX_TYPES(faces.scalar_type(), "rasterize_mesh_cpu_faces", [&] {
      std::vector<Face> tris(static_cast<size_t>(F));
      std::vector<Hit> hits(static_cast<size_t>(H * W));
      for (int64_t b = 0; b < B; ++b) {
        setup_faces<T, index_t>(vc.const_data_ptr<T>() + b * V * 3, fc.const_data_ptr<index_t>(), V, F, H, W,
                                tris.data());
        int64_t* ib = index.mutable_data_ptr<int64_t>() + b * H * W;
        for (int64_t p = 0; p < H * W; ++p) {
          ib[p] = -1;
          hits[p].depth = std::numeric_limits<double>::infinity();
        }
        at::parallel_for(0, bands, 1, [&](int64_t begin, int64_t end) {
          for (int64_t k = begin; k < end; ++k) {
            raster_band(tris, W, (H * k) / bands, (H * (k + 1)) / bands, ib, hits.data());
          }
        });
        T* bb = bary.mutable_data_ptr<T>() + b * H * W * 3;
        T* db = depth.mutable_data_ptr<T>() + b * H * W;
        for (int64_t p = 0; p < H * W; ++p) {
          const bool hit = ib[p] >= 0;
          for (int k = 0; k < 3; ++k) bb[p * 3 + k] = hit ? T(hits[p].b[k]) : T(0);
          db[p] = hit ? T(hits[p].depth) : std::numeric_limits<T>::infinity();
        }
      }
    });
  });
  return {index, bary, depth};
}

}  // namespace

TORCH_LIBRARY_IMPL(oneshot, CPU, m) { m.impl("rasterize_mesh", &rasterize_mesh_cpu); }

}  // namespace oneshot
