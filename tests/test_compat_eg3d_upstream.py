"""Optional: the drop-in against EG3D's own code, for whoever has a checkout (EG3D's licence keeps it out of this
repository, and the default suite never needs it). Point ONESHOT_EG3D_ROOT at the ``eg3d/`` folder of an
NVlabs/eg3d checkout (the one holding ``training/`` and ``torch_utils/``)::

    ONESHOT_EG3D_ROOT=~/src/eg3d/eg3d python -m pytest tests/test_compat_eg3d_upstream.py

Checks: EG3D's ImportanceRenderer with EG3D's OSGDecoder, and the composed reference, against the drop-in (same
seed: the same images and gradients, the same RNG state afterwards); patch() before EG3D's modules are imported,
a TriPlaneGenerator rendering the same images patched and unpatched, and its pickle naming EG3D's class.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from oneshot.compat import eg3d
from oneshot.compat.eg3d_reference import ReferenceRenderer

ROOT = os.environ.get("ONESHOT_EG3D_ROOT")
pytestmark = pytest.mark.skipif(not ROOT or not (Path(ROOT) / "training" / "triplane.py").is_file(),
                                reason="set ONESHOT_EG3D_ROOT to the eg3d/ folder of an NVlabs/eg3d checkout")
PREFIXES = ("training", "torch_utils", "dnnlib", "requests")


@pytest.fixture
def upstream(monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] in PREFIXES]:
        monkeypatch.delitem(sys.modules, name)
    if "requests" not in sys.modules:  # dnnlib imports it for downloads only
        monkeypatch.setitem(sys.modules, "requests", types.ModuleType("requests"))
    monkeypatch.syspath_prepend(ROOT)
    yield
    eg3d.unpatch()
    for name in [n for n in sys.modules if n.split(".")[0] in PREFIXES]:
        del sys.modules[name]


def _scene(B=2, N=300, C=32, P=64):
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(B, 3, C, P, P, generator=g)
    o = torch.tensor([0.1, -0.05, 2.7]).expand(B, N, 3).contiguous()
    d = F.normalize((torch.rand(B, N, 3, generator=g) - 0.5) * 0.7 - o, dim=-1)
    return planes, o, d


OPTIONS = [dict(depth_resolution=48, depth_resolution_importance=48),
           dict(ray_start=0.1, ray_end=2.6, box_warp=1.6, white_back=True),
           dict(disparity_space_sampling=True, density_noise=0.5), dict(depth_resolution_importance=0)]


@pytest.mark.parametrize("extra", OPTIONS, ids=["ffhq", "shapenet", "disparity-noise", "coarse-only"])
def test_eg3ds_renderer_and_the_drop_in_agree(upstream, extra):
    from training.triplane import OSGDecoder
    from training.volumetric_rendering.renderer import ImportanceRenderer

    opts = dict(ray_start=2.25, ray_end=3.3, box_warp=1, depth_resolution=16, depth_resolution_importance=16,
                disparity_space_sampling=False, clamp_mode="softplus")
    opts.update(extra)
    torch.manual_seed(3)
    dec = OSGDecoder(32, {"decoder_lr_mul": 1, "decoder_output_dim": 32})
    planes, o, d = _scene()
    results = {}
    for name, r in [("eg3d", ImportanceRenderer()), ("reference", ReferenceRenderer()),
                    ("drop-in", eg3d.ImportanceRenderer()), ("drop-in composed", eg3d.ImportanceRenderer(fused=False))]:
        p = planes.clone().requires_grad_()
        torch.manual_seed(123)
        out = r(p, dec, o, d, opts)
        rng = torch.get_rng_state()
        loss = sum((x * torch.linspace(-1, 1, x.numel()).reshape(x.shape)).sum() for x in out)
        results[name] = (out, rng, torch.autograd.grad(loss, [p] + list(dec.parameters())))
    ref_out, ref_rng, ref_grads = results.pop("eg3d")
    for name, (out, rng, grads) in results.items():
        assert torch.equal(rng, ref_rng), f"{name}: another RNG state than EG3D's renderer"
        exact = name == "reference"  # the same operations: bitwise
        for a, b, n in zip(out, ref_out, ("rgb", "depth", "weights_sum")):
            assert_close(a, b, rtol=0 if exact else 2e-5, atol=0 if exact else 2e-5, name=f"{name} {n}")
        for a, b in zip(grads, ref_grads):
            assert_close(a, b, rtol=0 if exact else 2e-4, atol=0 if exact else 2e-4 * float(b.abs().max()),
                         name=f"{name} gradient")


def test_patch_eg3ds_generator(upstream):
    assert eg3d.patch() == []  # before EG3D's modules are imported
    from training.triplane import TriPlaneGenerator
    import training.volumetric_rendering.renderer as R

    assert eg3d.patched_modules() == ["training.volumetric_rendering.renderer"]
    rk = dict(image_resolution=128, disparity_space_sampling=False, clamp_mode="softplus",
              superresolution_module="training.superresolution.SuperresolutionHybrid2X", c_gen_conditioning_zero=False,
              gpc_reg_prob=0.5, c_scale=1.0, superresolution_noise_mode="none", density_reg=0.25,
              density_reg_p_dist=0.004, reg_type="l1", decoder_lr_mul=1.0, sr_antialias=True, depth_resolution=24,
              depth_resolution_importance=24, ray_start=2.25, ray_end=3.3, box_warp=1, avg_camera_radius=2.7,
              avg_camera_pivot=[0, 0, 0.2])
    torch.manual_seed(0)
    G = TriPlaneGenerator(z_dim=64, c_dim=25, w_dim=512, img_resolution=128, img_channels=3, rendering_kwargs=rk,
                          mapping_kwargs={"num_layers": 2}, channel_base=2048, channel_max=64,
                          sr_kwargs=dict(channel_base=2048, channel_max=64, fused_modconv_default="inference_only"))
    G.neural_rendering_resolution = 32
    original = R.ImportanceRenderer._oneshot_original
    z = torch.randn(2, 64)
    c = torch.zeros(2, 25)
    c[:, :16] = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1.0]]).reshape(16)
    c[:, 16:] = torch.tensor([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]).reshape(9)
    torch.manual_seed(7)
    patched = G(z, c)
    rng = torch.get_rng_state()
    blob = io.BytesIO()
    pickle.dump(G, blob)
    eg3d.unpatch()
    assert type(G.renderer) is original and R.ImportanceRenderer is original
    torch.manual_seed(7)
    plain = G(z, c)
    assert torch.equal(rng, torch.get_rng_state())
    for k in ("image", "image_raw", "image_depth"):
        assert_close(patched[k], plain[k], rtol=1e-4, atol=1e-4, name=k)
    assert type(pickle.loads(blob.getvalue()).renderer) is original
