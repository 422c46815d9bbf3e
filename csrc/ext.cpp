// Every schema of the oneshot namespace, in one place. Kernels are registered per backend in the op folders
// (TORCH_LIBRARY_IMPL(oneshot, CPU, ...) in *_cpu.cpp, CUDA in *_cuda.cu); fake (meta) kernels and autograd
// are registered from Python (oneshot/ops), so torch.compile and torch.library.opcheck work.
//
// Tensor shapes (documented in full in oneshot/ops and the op headers):
//   triplane_sample:   planes [B, 3, C, H, W], points [B, M, 3] -> [B, M, C] ("mean"/"sum") or [B, 3, M, C]
//   ray_march:         colors [..., S, C], densities [..., S], depths [..., S]
//                      -> features [..., C], depth [...], opacity [...], weights [..., S-1]
//   render_triplane:   planes [B, 3, C, H, W], origins/directions [B, R, 3], depths [B, R, S], decoder w1 [Hd, C],
//                      b1 [Hd], w2 [1 + Co, Hd], b2 [1 + Co] -> features [B, R, Co], depth [B, R], opacity [B, R],
//                      weights [B, R, S-1]  (triplane_sample -> decoder -> ray_march, fused; render/render.h)
//   rasterize_points:  points [B, N, 3], features [B, N, C], valid [B, N] bool
//                      -> planes [B, 3, C, H, W], index [B, 3, H, W] int64 (-1 = empty)
//   rasterize_mesh:    vertices [B, V, 3] (pixel x, y; view depth z), faces [F, 3] int
//                      -> face_index [B, H, W] int64 (-1 = empty), bary [B, H, W, 3], depth [B, H, W] (inf = empty)
#include <torch/library.h>

#include "common/cpu_buffers.h"

#ifndef ONESHOT_TORCH_VERSION
#define ONESHOT_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(oneshot, m) {
  m.def("triplane_sample(Tensor planes, Tensor points, float box_warp, int[] axes, str reduce) -> Tensor");
  m.def(
      "triplane_sample_backward(Tensor grad_out, Tensor planes, Tensor points, float box_warp, int[] axes, "
      "str reduce, bool planes_requires_grad, bool points_requires_grad) -> (Tensor, Tensor)");

  m.def(
      "ray_march(Tensor colors, Tensor densities, Tensor depths, float density_bias, bool white_background) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "ray_march_backward(Tensor? grad_features, Tensor? grad_depth, Tensor? grad_opacity, Tensor? grad_weights, "
      "Tensor colors, Tensor densities, Tensor depths, float density_bias, bool white_background) "
      "-> (Tensor, Tensor)");

  m.def(
      "render_triplane(Tensor planes, Tensor origins, Tensor directions, Tensor depths, Tensor w1, Tensor b1, "
      "Tensor w2, Tensor b2, float box_warp, int[] axes, bool clip_to_box, float density_bias) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "render_triplane_backward(Tensor? grad_features, Tensor? grad_depth, Tensor? grad_opacity, "
      "Tensor? grad_weights, Tensor planes, Tensor origins, Tensor directions, Tensor depths, Tensor w1, Tensor b1, "
      "Tensor w2, Tensor b2, float box_warp, int[] axes, bool clip_to_box, float density_bias) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  m.def(
      "rasterize_points(Tensor points, Tensor features, int height, int width, float box_warp, int[] axes, "
      "Tensor? valid, float? max_distance, bool align_corners) -> (Tensor, Tensor)");
  m.def("rasterize_points_backward(Tensor grad_planes, Tensor index, int num_points) -> Tensor");

  m.def("rasterize_mesh(Tensor vertices, Tensor faces, int height, int width) -> (Tensor, Tensor, Tensor)");

  // Frees the large CPU output buffers kept for reuse (common/cpu_buffers.h); returns the bytes freed.
  m.def("_empty_cpu_cache() -> int", []() -> int64_t { return oneshot::cpu::LargeBufferCache::get().clear(); });

  // The torch version this library was compiled against, for diagnostics (oneshot.ops.backend_info()).
  m.def("_build_torch_version() -> str", []() -> std::string { return ONESHOT_TORCH_VERSION; });
}
