"""The tri-plane decoder and EG3D's importance renderer (oneshot.models.decoder / volume)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oneshot import cameras
from oneshot.models.decoder import EqualLinear, TriplaneDecoder
from oneshot.models.volume import RenderSettings, VolumeRenderer, sample_pdf
from oneshot.ops import reference


def test_equal_linear_scales_at_run_time():
    torch.manual_seed(0)
    layer = EqualLinear(32, 64)
    x = torch.randn(5, 32)
    assert torch.allclose(layer(x), x @ (layer.weight / math.sqrt(32)).T + layer.bias, atol=1e-6)
    assert layer.weight.std() > 0.8  # stored unscaled, ~N(0, 1)


def test_decoder_layout_and_output_range():
    dec = TriplaneDecoder()
    sd = dec.state_dict()
    # GOHA's decoder keys and shapes.
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"net.0.weight": (64, 32), "net.0.bias": (64,),
                                                          "net.2.weight": (33, 64), "net.2.bias": (33,)}
    sigma, feats = dec(torch.randn(2, 7, 32) * 10)
    assert sigma.shape == (2, 7) and feats.shape == (2, 7, 32)
    assert feats.min() >= -0.001 and feats.max() <= 1.001
    x = torch.randn(3, 32)
    h = F.softplus(x @ (dec.net[0].weight / math.sqrt(32)).T + dec.net[0].bias)
    out = h @ (dec.net[2].weight / 8).T + dec.net[2].bias
    s, f = dec(x)
    assert torch.allclose(s, out[:, 0], atol=1e-5) and torch.allclose(f, torch.sigmoid(out[:, 1:]) * 1.002 - 0.001, atol=1e-6)
    with pytest.raises(ValueError, match=r"features must be \[\.\.\., 32\], got \[3, 16\]"):
        dec(torch.randn(3, 16))


def test_sample_pdf_follows_the_weights():
    g = torch.Generator().manual_seed(0)
    bins = torch.linspace(0, 1, 11).expand(2, 11)
    w = torch.zeros(2, 10)
    w[0, 3] = 1  # all mass in [0.3, 0.4]
    w[1] = 1  # uniform
    s = sample_pdf(bins, w, 4000, generator=g)
    assert ((s[0] >= 0.3 - 1e-6) & (s[0] <= 0.4 + 1e-6)).float().mean() > 0.99
    assert abs(s[1].mean().item() - 0.5) < 0.02 and s[1].min() >= 0 and s[1].max() <= 1


def _straightforward(planes, decoder, c2w, intr, res, settings, seed):
    """EG3D's ImportanceRenderer written out with the reference ops and the same random draws."""
    g = torch.Generator().manual_seed(seed)
    origins, dirs = cameras.rays(c2w, intr, res)
    B, R, _ = origins.shape
    n, n_imp = settings.samples, settings.importance_samples
    t = torch.linspace(settings.ray_start, settings.ray_end, n).reshape(1, 1, n).repeat(B, R, 1)
    t = t + torch.rand(B, R, n, generator=g) * (settings.ray_end - settings.ray_start) / (n - 1)

    def run(depths):
        pts = (origins[:, :, None] + depths[..., None] * dirs[:, :, None]).reshape(B, -1, 3)
        sig, col = decoder(reference.triplane_sample(planes, pts, 1.0, ((0, 1), (0, 2), (2, 1)), "mean"))
        return col.reshape(B, R, depths.shape[-1], -1), sig.reshape(B, R, -1)

    col, sig = run(t)
    _, _, _, w = reference.ray_march(col, sig, t, -1.0, False)
    w = w.reshape(B * R, 1, n - 1)
    w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
    z = t.reshape(B * R, n)
    mids = 0.5 * (z[:, 1:] + z[:, :-1])
    # EG3D's sample_pdf, written out.
    ww = w[:, 1:-1] + 1e-5
    pdf = ww / ww.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = torch.rand(B * R, n_imp, generator=g)
    inds = torch.searchsorted(cdf, u, right=True)
    below, above = torch.clamp_min(inds - 1, 0), torch.clamp_max(inds, cdf.shape[1] - 1)
    idx = torch.stack([below, above], -1).view(B * R, 2 * n_imp)
    cdf_g = torch.gather(cdf, 1, idx).view(B * R, n_imp, 2)
    bins_g = torch.gather(mids, 1, idx).view(B * R, n_imp, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom[denom < 1e-5] = 1
    fine = (bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])).reshape(B, R, n_imp)
    col_f, sig_f = run(fine)
    all_t, order = torch.sort(torch.cat([t, fine], -1), -1)
    all_c = torch.gather(torch.cat([col, col_f], -2), 2, order[..., None].expand(-1, -1, -1, col.shape[-1]))
    all_s = torch.gather(torch.cat([sig, sig_f], -1), 2, order)
    f, d, o, _ = reference.ray_march(all_c, all_s, all_t, -1.0, False)
    return f * 2 - 1, d, o


@pytest.mark.parametrize("backend", ["reference", None])
def test_renderer_matches_a_straightforward_recomputation(backend):
    torch.manual_seed(1)
    planes = torch.randn(2, 3, 8, 16, 16) * 0.5
    planes[:, :, 0] += 2  # some density
    decoder = TriplaneDecoder(8, 16, 8)
    settings = RenderSettings(samples=12, importance_samples=10)
    r = VolumeRenderer(settings, backend=backend)
    cam = cameras.orbit_labels(2)
    res = (5, 7)
    out = r(planes, decoder, cam, res, generator=torch.Generator().manual_seed(3))
    c2w, intr = cameras.split_label(cam)
    f, d, o = _straightforward(planes, decoder, c2w, intr, res, settings, seed=3)
    assert out.features.shape == (2, 8, 5, 7) and out.depth.shape == (2, 1, 5, 7) and out.opacity.shape == (2, 1, 5, 7)
    assert torch.allclose(out.features, f.reshape(2, 5, 7, 8).permute(0, 3, 1, 2), atol=1e-5)
    assert torch.allclose(out.depth[:, 0], d.reshape(2, 5, 7), atol=1e-5)
    assert torch.allclose(out.opacity[:, 0], o.reshape(2, 5, 7), atol=1e-5)
    # A seed reproduces the output exactly; another seed draws other samples.
    again = r(planes, decoder, cam, res, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.features, out.features)
    other = r(planes, decoder, cam, res, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other.depth, out.depth)


def test_renderer_gradients_and_chunks():
    torch.manual_seed(2)
    planes = (torch.randn(1, 3, 4, 8, 8) * 0.5).requires_grad_()
    decoder = TriplaneDecoder(4, 8, 4)
    r = VolumeRenderer(RenderSettings(samples=6, importance_samples=6, chunk=7))
    out = r(planes, decoder, cameras.frontal_label(), 6, generator=torch.Generator().manual_seed(0))
    assert out.features.shape == (1, 4, 6, 6)
    out.features.sum().backward()
    assert planes.grad is not None and planes.grad.abs().sum() > 0
    assert all(p.grad is not None for p in decoder.parameters())
    # The depth of a hit ray lies inside [ray_start, ray_end].
    assert out.depth.min() >= 2.25 and out.depth.max() <= 3.3


def test_renderer_errors():
    r = VolumeRenderer(RenderSettings(samples=4, importance_samples=0))
    dec = TriplaneDecoder(4, 8, 4)
    with pytest.raises(ValueError, match=r"planes must be \[B, 3, C, H, W\]"):
        r(torch.zeros(1, 2, 4, 8, 8), dec, cameras.frontal_label(), 4)
    with pytest.raises(ValueError, match=r"camera must be \[25\] or \[B, 25\] with B = 2"):
        r(torch.zeros(2, 3, 4, 8, 8), dec, cameras.orbit_labels(3), 4)
    with pytest.raises(ValueError, match=r"need samples >= 2"):
        RenderSettings(samples=1)
    with pytest.raises(ValueError, match=r"ray_start < ray_end"):
        RenderSettings(ray_start=3.0, ray_end=2.0)


def test_unstratified_rendering_is_deterministic_without_a_generator():
    torch.manual_seed(3)
    planes = torch.randn(1, 3, 4, 8, 8)
    decoder = TriplaneDecoder(4, 8, 4)
    r = VolumeRenderer(RenderSettings(samples=8, importance_samples=8, stratified=False))
    a = r(planes, decoder, cameras.frontal_label(), 5)
    torch.rand(100)  # the global RNG moves; the render does not depend on it
    b = r(planes, decoder, cameras.frontal_label(), 5)
    assert torch.equal(a.features, b.features) and torch.equal(a.depth, b.depth)
    jittered = VolumeRenderer(RenderSettings(samples=8, importance_samples=8))(planes, decoder, cameras.frontal_label(), 5)
    assert not torch.equal(jittered.features, a.features)
    # Evenly spaced u: the importance samples are EG3D's det=True inverse CDF.
    bins = torch.linspace(0, 1, 5).expand(1, 5)
    assert torch.allclose(sample_pdf(bins, torch.ones(1, 4), 5, deterministic=True), torch.linspace(0, 1, 5)[None],
                          atol=1e-4)


def test_clip_to_box_empties_space_outside_the_planes_box():
    def dense(feats):  # raw density 10 everywhere, grey
        return torch.full(feats.shape[:-1], 10.0), torch.full((*feats.shape[:-1], 3), 0.5)

    planes = torch.zeros(1, 3, 3, 4, 4)
    # Along +z from z = -2.7: one ray through the box's centre (inside for depths in [2.2, 3.2]), one at x = 0.8
    # (never inside the box [-0.5, 0.5]^3).
    origins = torch.tensor([[[0.0, 0.0, -2.7], [0.8, 0.0, -2.7]]])
    dirs = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    kw = dict(samples=32, importance_samples=0, stratified=False)
    _, _, plain = VolumeRenderer(RenderSettings(**kw)).render_rays(planes, dense, origins, dirs)
    feats, depth, clipped = VolumeRenderer(RenderSettings(**kw, clip_to_box=True)).render_rays(planes, dense, origins,
                                                                                               dirs)
    assert plain.min() > 0.99  # without clipping the whole ray range is dense
    assert clipped[0, 1] == 0 and torch.equal(feats[0, 1], torch.full((3,), -1.0))  # empty: the background
    assert clipped[0, 0] > 0.99 and depth[0, 0] < 2.5  # inside the box, the centre ray still hits at the front
    # A box that holds the whole ray range clips nothing.
    _, _, wide = VolumeRenderer(RenderSettings(**kw, clip_to_box=True, box_warp=8.0)).render_rays(planes, dense,
                                                                                                  origins, dirs)
    torch.testing.assert_close(wide, plain)
