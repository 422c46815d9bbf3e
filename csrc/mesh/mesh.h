// rasterize_mesh: which triangle covers each pixel centre, its screen-space barycentrics and view depth.
//
//   vertices [B, V, 3] in pixel coordinates (x to the right, y down; pixel (i, j) is centred at
//   (j + 0.5, i + 0.5)) with z the positive view depth; faces [F, 3] vertex indices.
//   A pixel centre p is covered by triangle (a, b, c) when every edge function is positive, or zero on an edge
//   the triangle owns. Triangles of either winding are normalised to positive area first, so an edge shared by
//   two triangles is walked in opposite directions and exactly one of them owns it (top-left style rule; the
//   same argument makes a pixel centre on a shared vertex belong to exactly one triangle of a closed fan).
//   Degenerate triangles (zero area), triangles with a vertex at z <= 0 and non-finite vertices are skipped.
//   depth = 1 / (b0 / z0 + b1 / z1 + b2 / z2) (perspective-correct); the smallest depth wins, equal depths go
//   to the lower face index.
//
// The arithmetic is pinned (double, each operation rounded, no fused multiply-add) so that every backend
// makes the same coverage decisions: these functions ARE the contract.
#pragma once

#include "common/macros.h"

namespace oneshot {
namespace mesh {

// (b - a) x (p - a): positive when p lies on the inner side of a -> b for a positive-area triangle.
ONESHOT_HD double edge(double ax, double ay, double bx, double by, double px, double py) {
  const double l = (bx - ax) * (py - ay);
  const double r = (by - ay) * (px - ax);
  return l - r;
}

// Whether a pixel centre exactly on edge a -> b (walked in the positive orientation, which is clockwise on
// screen since y points down) belongs to the triangle: the top-left rule. Left edges are walked upwards
// (dy < 0), top edges to the right (dy == 0, dx > 0).
ONESHOT_HD bool owns_edge(double ax, double ay, double bx, double by) {
  const double dy = by - ay, dx = bx - ax;
  return dy < 0 || (dy == 0 && dx > 0);
}

ONESHOT_HD bool inside_edge(double e, double ax, double ay, double bx, double by) {
  return e > 0 || (e == 0 && owns_edge(ax, ay, bx, by));
}

// 1 / depth at barycentrics (b0, b1, b2) from the vertices' inverse depths iz_k = 1 / z_k, summed in this order.
ONESHOT_HD double inv_depth(double b0, double b1, double b2, double iz0, double iz1, double iz2) {
  const double s = b0 * iz0 + b1 * iz1;
  return s + b2 * iz2;
}

}  // namespace mesh
}  // namespace oneshot
