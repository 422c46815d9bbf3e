"""Smoke test of the CMake (pure libtorch) build: load liboneshot_cpu.so into a bare torch and run the ops.

    python .ci/cmake_smoke.py build/cmake/liboneshot_cpu.so

Does NOT import the oneshot package (its extension would register the same schemas a second time): the
expectations are computed here, in a few lines of plain torch. Prints "cmake smoke: ok"; exits non-zero on failure.
"""

import sys

import torch
import torch.nn.functional as F

AXES = [0, 1, 0, 2, 2, 1]  # the default ((0, 1), (0, 2), (2, 1)), flattened as the schema wants


def close(name, got, want, atol=1e-5, rtol=1e-5):
    if got.shape != want.shape or got.dtype != want.dtype:
        raise AssertionError(f"{name}: got {got.dtype}{list(got.shape)}, want {want.dtype}{list(want.shape)}")
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        raise AssertionError(f"{name}: max abs err {(got - want).abs().max().item():.3g}")


def ray_march_expected(colors, densities, depths, bias, white):
    """EG3D's MipRayMarcher2, as documented in csrc/raymarch/raymarch.h."""
    deltas = depths[..., 1:] - depths[..., :-1]
    cbar = (colors[..., :-1, :] + colors[..., 1:, :]) / 2
    sigma = F.softplus((densities[..., :-1] + densities[..., 1:]) / 2 + bias)
    alpha = 1 - torch.exp(-sigma * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha + 1e-10], -1), -1)[..., :-1]
    w = alpha * trans
    opacity = w.sum(-1)
    feats = (w.unsqueeze(-1) * cbar).sum(-2) + ((1 - opacity).unsqueeze(-1) if white else 0)
    num = (w * (depths[..., :-1] + depths[..., 1:]) / 2).sum(-1)
    depth = torch.where(opacity > 0, num / torch.where(opacity > 0, opacity, torch.ones_like(opacity)), depths[..., -1])
    return feats, torch.clamp(depth, depths[..., 0], depths[..., -1]), opacity, w


def check_ray_march(g):
    R, S, C = 7, 16, 3
    colors = torch.rand(R, S, C, generator=g)
    densities = torch.randn(R, S, generator=g) * 3
    depths = torch.sort(torch.rand(R, S, generator=g) * 4 + 0.5, dim=-1).values
    for white in (False, True):
        got = torch.ops.oneshot.ray_march(colors, densities, depths, -1.0, white)
        want = ray_march_expected(colors, densities, depths, -1.0, white)
        for name, a, b in zip(("features", "depth", "opacity", "weights"), got, want):
            close(f"ray_march.{name} (white={white})", a, b)
        close("ray_march: opacity == sum(weights)", got[2], got[3].sum(-1))
    # Backward against autograd through the expectation.
    c, s = colors.clone().requires_grad_(), densities.clone().requires_grad_()
    outs = ray_march_expected(c, s, depths, -1.0, False)
    grads = [torch.randn(o.shape, generator=g) for o in outs]
    want_gc, want_gs = torch.autograd.grad(outs, (c, s), grads)
    got_gc, got_gs = torch.ops.oneshot.ray_march_backward(*grads, colors, densities, depths, -1.0, False)
    close("ray_march_backward.colors", got_gc, want_gc, atol=1e-4, rtol=1e-4)
    close("ray_march_backward.densities", got_gs, want_gs, atol=1e-4, rtol=1e-4)


def check_triplane_sample(g):
    B, C, H, W, M = 2, 4, 8, 8, 50
    box_warp = 2.0  # normalised coordinates = points
    # Constant planes: every point well inside the box (|c| <= 1 - 1/W) reads exactly the plane's constant.
    k = torch.tensor([1.5, -2.0, 4.0]).view(1, 3, 1, 1, 1)
    planes = (k * torch.arange(1, C + 1, dtype=torch.float32).view(1, 1, C, 1, 1)).expand(B, 3, C, H, W).contiguous()
    points = (torch.rand(B, M, 3, generator=g) * 2 - 1) * (1 - 1 / W)
    per_plane = planes[:, :, :, 0, 0].unsqueeze(2).expand(B, 3, M, C)  # [B, 3, M, C]
    close("triplane_sample(constant, none)", torch.ops.oneshot.triplane_sample(planes, points, box_warp, AXES, "none"),
          per_plane)
    close("triplane_sample(constant, sum)", torch.ops.oneshot.triplane_sample(planes, points, box_warp, AXES, "sum"),
          per_plane.sum(1))
    close("triplane_sample(constant, mean)", torch.ops.oneshot.triplane_sample(planes, points, box_warp, AXES, "mean"),
          per_plane.mean(1))
    # Random planes, points partly outside the box (zero padding): bilinear grid_sample, align_corners=False.
    planes = torch.randn(B, 3, C, H, W, generator=g)
    points = torch.rand(B, M, 3, generator=g) * 2.4 - 1.2
    c = points * (2.0 / box_warp)
    grid = torch.stack([c[..., [a, b]] for a, b in zip(AXES[0::2], AXES[1::2])], 1)  # [B, 3, M, 2]
    want = F.grid_sample(planes.reshape(B * 3, C, H, W), grid.reshape(B * 3, 1, M, 2), mode="bilinear",
                         padding_mode="zeros", align_corners=False).reshape(B, 3, C, M).transpose(2, 3)
    close("triplane_sample(random, mean)", torch.ops.oneshot.triplane_sample(planes, points, box_warp, AXES, "mean"),
          want.mean(1))


def check_rasterize_points(g):
    n, C = 4, 5  # a 4 x 4 grid on each plane
    centres = (torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1  # -0.75, -0.25, 0.25, 0.75: exact
    # Point k = (i, j) sits at (x, y, z) = (u_j, v_i, u_{(i + j) % n}): a Latin square, so on every plane each
    # cell holds exactly one point, at distance 0.
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    ids = torch.arange(n * n)
    pts = torch.stack([centres[j], centres[i], centres[(i + j) % n]], -1).unsqueeze(0)  # [1, N, 3]
    feats = torch.randn(1, n * n, C, generator=g)
    planes, index = torch.ops.oneshot.rasterize_points(pts, feats, n, n, 2.0, AXES, None, None, False)
    want = torch.full((1, 3, n, n), -1, dtype=torch.long)
    for p, (a, b) in enumerate(zip(AXES[0::2], AXES[1::2])):
        col = ((pts[0, :, a] + 1) * n / 2 - 0.5).round().long()  # cell of each point's projection
        row = ((pts[0, :, b] + 1) * n / 2 - 0.5).round().long()
        want[0, p, row, col] = ids
    if not torch.equal(index, want):
        raise AssertionError(f"rasterize_points: index\n{index}\nwant\n{want}")
    close("rasterize_points.planes", planes, feats[0][index].permute(0, 1, 4, 2, 3), atol=0, rtol=0)
    # Point 0 invalid and max_distance below the grid spacing: its cells (one per plane) become empty.
    valid = torch.ones(1, n * n, dtype=torch.bool)
    valid[0, 0] = False
    planes, index = torch.ops.oneshot.rasterize_points(pts, feats, n, n, 2.0, AXES, valid, 0.1, False)
    want[want == 0] = -1
    if not torch.equal(index, want):
        raise AssertionError(f"rasterize_points(valid, max_distance): index\n{index}\nwant\n{want}")
    if not (planes.permute(0, 1, 3, 4, 2)[index < 0] == 0).all():
        raise AssertionError("rasterize_points: empty cells must be 0")
    # Random points: nearest cell centre by brute force (ties have probability 0 here).
    B, N, H, W = 2, 30, 6, 9
    pts = torch.rand(B, N, 3, generator=g) * 2 - 1
    feats = torch.randn(B, N, C, generator=g)
    _, index = torch.ops.oneshot.rasterize_points(pts, feats, H, W, 2.0, AXES, None, None, False)
    u = (torch.arange(W, dtype=torch.float32) * 2 + 1) / W - 1
    v = (torch.arange(H, dtype=torch.float32) * 2 + 1) / H - 1
    for p, (a, b) in enumerate(zip(AXES[0::2], AXES[1::2])):
        d2 = (u.view(1, 1, W, 1) - pts[:, None, None, :, a]) ** 2 + (v.view(1, H, 1, 1) - pts[:, None, None, :, b]) ** 2
        if not torch.equal(index[:, p], d2.argmin(-1)):
            raise AssertionError(f"rasterize_points(random): plane {p} index differs from brute force")
    if not ((index >= 0) & (index < N)).all():
        raise AssertionError("rasterize_points(random): index out of range")


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} path/to/liboneshot_cpu.so")
    torch.ops.load_library(sys.argv[1])
    built = torch.ops.oneshot._build_torch_version()
    if not torch.__version__.startswith(built):
        raise AssertionError(f"library built against torch {built}, running {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    check_ray_march(g)
    check_triplane_sample(g)
    check_rasterize_points(g)
    print("cmake smoke: ok")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - one line, non-zero exit
        print(f"cmake smoke: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
