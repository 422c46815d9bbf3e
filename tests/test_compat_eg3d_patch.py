"""patch() / unpatch() on a small code base laid out like EG3D's (written here: ``training/volumetric_rendering/
renderer.py`` with EG3D's names and semantics, ``training/triplane.py`` with a generator and its own OSGDecoder), a
GOHA-like layout and modified renderers: the same images patched and unpatched, exact restoration, pickles, and
the renderers that must be refused."""

from __future__ import annotations

import copy
import importlib
import inspect
import pickle
import sys
import textwrap

import pytest
import torch

from conftest import assert_close
from oneshot import cameras, ops
from oneshot.compat import eg3d
from oneshot.compat.eg3d_reference import ReferenceRenderer
from test_compat_eg3d_support import options

pytestmark = pytest.mark.skipif(not ops.backend_info()["native_cpu"], reason="the native extension is not built")

_XY, _XZ = [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
EG3D_PLANES = str([_XY, _XZ, [[0, 0, 1], [1, 0, 0], [0, 1, 0]]])  # EG3D's generate_planes(): zx third
GOHA_PLANES = str([_XY, _XZ, [[0, 0, 1], [0, 1, 0], [1, 0, 0]]])  # GOHA's: zy third

RENDERER = '''
"""A renderer module laid out like EG3D's: its names, its semantics (oneshot's composed reference)."""
import torch
from oneshot.compat.eg3d_reference import ReferenceRenderer


def generate_planes():
    return torch.tensor({planes}, dtype=torch.float32)


class ImportanceRenderer(ReferenceRenderer):
    def __init__(self):
        super().__init__()
        self.plane_axes = generate_planes()

    def normal_forward(self, planes, decoder, coordinates, directions, options):  # a method EG3D lacks (Next3D)
        coordinates = coordinates.detach().requires_grad_()
        with torch.enable_grad():
            sigma = self.run_model(planes, decoder, coordinates, directions, options)["sigma"]
            return -torch.autograd.grad(sigma.sum(), coordinates)[0]
{extra}
'''

# Modified copies, as other code bases have them.
FOUR_OUTPUTS = '''
    def forward(self, planes, decoder, ray_origins, ray_directions, rendering_options):
        rgb, depth, weights_sum = super().forward(planes, decoder, ray_origins, ray_directions, rendering_options)
        return rgb, depth, weights_sum, weights_sum > 0
'''
EXTRA_DRAW = '''
    def forward(self, planes, decoder, ray_origins, ray_directions, rendering_options):
        out = super().forward(planes, decoder, ray_origins, ray_directions, rendering_options)
        torch.rand(1)
        return out
'''
NEEDS_ARGUMENTS = '''
    def __init__(self, hp):
        super().__init__()
'''

TRIPLANE = '''
"""A generator module laid out like EG3D's training/triplane.py (its own decoder, EG3D's semantics)."""
import math
import torch
from torch import nn
from {package}.volumetric_rendering.renderer import ImportanceRenderer
from oneshot.compat.eg3d import RaySampler


class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features, out_features, lr_multiplier=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros([out_features]))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = "linear"

    def forward(self, x):
        return torch.addmm((self.bias * self.bias_gain).unsqueeze(0), x, (self.weight * self.weight_gain).t())


class OSGDecoder(nn.Module):
    def __init__(self, n_features, options):
        super().__init__()
        self.net = nn.Sequential(FullyConnectedLayer(n_features, 64, options["decoder_lr_mul"]), nn.Softplus(),
                                 FullyConnectedLayer(64, 1 + options["decoder_output_dim"], options["decoder_lr_mul"]))

    def forward(self, sampled_features, ray_directions):
        x = sampled_features.mean(1)
        N, M, C = x.shape
        x = self.net(x.view(N * M, C)).view(N, M, -1)
        return {{"rgb": torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001, "sigma": x[..., 0:1]}}


class TriPlaneGenerator(nn.Module):
    def __init__(self, rendering_kwargs, channels=6, plane_res=12):
        super().__init__()
        self.planes = nn.Parameter(torch.randn(1, 3, channels, plane_res, plane_res))
        self.renderer = ImportanceRenderer()
        self.ray_sampler = RaySampler()
        self.decoder = OSGDecoder(channels, {{"decoder_lr_mul": 1, "decoder_output_dim": 4}})
        self.rendering_kwargs = rendering_kwargs
        self.neural_rendering_resolution = 6

    def forward(self, c):
        B, H = c.shape[0], self.neural_rendering_resolution
        o, d = self.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3), H)
        planes = self.planes.expand(B, -1, -1, -1, -1)
        rgb, depth, _ = self.renderer(planes, self.decoder, o, d, self.rendering_kwargs)
        return rgb.permute(0, 2, 1).reshape(B, -1, H, H), depth.permute(0, 2, 1).reshape(B, 1, H, H)

    def sample(self, coordinates, directions):
        planes = self.planes.expand(coordinates.shape[0], -1, -1, -1, -1)
        return self.renderer.run_model(planes, self.decoder, coordinates, directions, self.rendering_kwargs)
'''

PACKAGES = ("training", "models", "mypkg")


def write_layout(root, package="training", planes=EG3D_PLANES, extra=""):
    base = root
    for part in package.split("."):
        base = base / part
        base.mkdir(exist_ok=True)
        (base / "__init__.py").write_text("")
    (base / "volumetric_rendering").mkdir()
    (base / "volumetric_rendering" / "__init__.py").write_text("")
    (base / "volumetric_rendering" / "renderer.py").write_text(RENDERER.format(planes=planes, extra=extra))
    (base / "triplane.py").write_text(TRIPLANE.format(package=package))


def _drop_modules():
    for name in [n for n in sys.modules if n.split(".")[0] in PACKAGES]:
        del sys.modules[name]


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A fresh tmp directory on sys.path for a code base; afterwards: unpatched, its modules forgotten."""
    _drop_modules()
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    eg3d.unpatch()
    _drop_modules()


def _labels(B=2):
    c2w = cameras.look_at(torch.linspace(-0.3, 0.3, B), torch.zeros(B))
    return cameras.camera_label(c2w, cameras.intrinsics(batch=B))


def _render(G, seed=0):
    torch.manual_seed(seed)
    out = G(_labels())
    return out, torch.get_rng_state()


def _is_patched(obj_or_cls):
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return "_oneshot_original" in cls.__dict__


def test_patch_before_import_then_unpatch_same_images_exact_restoration(layout):
    write_layout(layout)
    assert eg3d.patch() == []
    finder = sys.meta_path[0]
    triplane = importlib.import_module("training.triplane")
    renderer_mod = sys.modules["training.volumetric_rendering.renderer"]
    patched = renderer_mod.ImportanceRenderer
    assert _is_patched(patched) and triplane.ImportanceRenderer is patched
    original = patched._oneshot_original
    assert eg3d.patched_modules() == ["training.volumetric_rendering.renderer"]
    assert "def generate_planes" in inspect.getsource(renderer_mod)  # the import hook kept the loader's services
    importlib.reload(renderer_mod)  # a reloaded module's new class is patched too
    assert _is_patched(renderer_mod.ImportanceRenderer) and renderer_mod.ImportanceRenderer is not patched
    importlib.reload(triplane)
    patched = renderer_mod.ImportanceRenderer
    original = patched._oneshot_original
    assert triplane.ImportanceRenderer is patched

    torch.manual_seed(0)
    G = triplane.TriPlaneGenerator(options())
    assert type(G.renderer) is patched and isinstance(G.renderer, original)
    (img, depth), rng = _render(G, seed=3)
    assert G.renderer.oneshot_path(G.planes.expand(2, -1, -1, -1, -1), G.decoder, *_rays(G), options())[0] == "fused"

    eg3d.unpatch()
    assert renderer_mod.ImportanceRenderer is original and triplane.ImportanceRenderer is original
    assert type(G.renderer) is original and finder not in sys.meta_path and eg3d.patched_modules() == []
    (img0, depth0), rng0 = _render(G, seed=3)
    assert torch.equal(rng, rng0)
    assert_close(img, img0, rtol=2e-5, atol=2e-5, name="image")
    assert_close(depth, depth0, rtol=2e-5, atol=2e-5, name="depth")


def _rays(G):
    c = _labels()
    return G.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3), G.neural_rendering_resolution)


def test_patch_after_import_updates_every_module_holding_the_class(layout):
    write_layout(layout)
    triplane = importlib.import_module("training.triplane")
    renderer_mod = sys.modules["training.volumetric_rendering.renderer"]
    original = renderer_mod.ImportanceRenderer
    assert eg3d.patch() == ["training.volumetric_rendering.renderer"]
    assert _is_patched(renderer_mod.ImportanceRenderer)
    assert triplane.ImportanceRenderer is renderer_mod.ImportanceRenderer
    G = triplane.TriPlaneGenerator(options())
    assert _is_patched(G.renderer)
    # the generator's run_model path (EG3D's density regularisation: G.sample) and extra methods still work
    pts = torch.rand(1, 50, 3) - 0.5
    dirs = torch.nn.functional.normalize(torch.randn(1, 50, 3), dim=-1)
    sigma = G.sample(pts, dirs)["sigma"]
    normals = G.renderer.normal_forward(G.planes, G.decoder, pts, dirs, options())
    eg3d.unpatch()
    assert renderer_mod.ImportanceRenderer is original and triplane.ImportanceRenderer is original
    assert_close(G.sample(pts, dirs)["sigma"], sigma, rtol=1e-5, atol=1e-5, name="run_model sigma")
    assert_close(G.renderer.normal_forward(G.planes, G.decoder, pts, dirs, options()), normals, rtol=1e-4, atol=1e-4,
                 name="normals")


def test_patch_a_built_generator_in_place(layout):
    write_layout(layout)
    triplane = importlib.import_module("training.triplane")
    original = sys.modules["training.volumetric_rendering.renderer"].ImportanceRenderer
    torch.manual_seed(1)
    G = triplane.TriPlaneGenerator(options())
    renderer, state = G.renderer, dict(G.renderer.__dict__)
    (img0, _), rng0 = _render(G, seed=5)
    assert eg3d.patch(G) is G
    assert G.renderer is renderer and _is_patched(renderer) and renderer.__dict__ == state
    assert sys.modules["training.volumetric_rendering.renderer"].ImportanceRenderer is original  # modules untouched
    (img, _), rng = _render(G, seed=5)
    assert torch.equal(rng, rng0)
    assert_close(img, img0, rtol=2e-5, atol=2e-5, name="image")
    eg3d.unpatch(G)
    assert type(G.renderer) is original and G.renderer.__dict__ == state


def test_pickles_name_the_original_class_and_deepcopies_stay_patched(layout):
    write_layout(layout)
    triplane = importlib.import_module("training.triplane")
    original = sys.modules["training.volumetric_rendering.renderer"].ImportanceRenderer
    eg3d.patch()
    G = triplane.TriPlaneGenerator(options())
    assert _is_patched(copy.deepcopy(G).renderer) and _is_patched(copy.copy(G.renderer))
    blob = pickle.dumps(G)
    assert _is_patched(pickle.loads(blob).renderer)  # loaded while patched: the drop-in
    loaded_while_patched = pickle.loads(blob)
    eg3d.unpatch()
    assert type(loaded_while_patched.renderer) is original  # unpatch() reaches unpickled renderers too
    assert type(pickle.loads(blob).renderer) is original  # the snapshot is EG3D's, with or without oneshot
    H = triplane.TriPlaneGenerator(options())
    eg3d.patch(H)  # object patch only: the pickle still names the original, which the module holds
    assert type(pickle.loads(pickle.dumps(H)).renderer) is original


def test_goha_layout_keeps_its_plane_axes(layout):
    write_layout(layout, package="models", planes=GOHA_PLANES)
    triplane = importlib.import_module("models.triplane")
    torch.manual_seed(2)
    G = triplane.TriPlaneGenerator(options())
    (img0, _), _ = _render(G, seed=1)
    assert eg3d.patch() == ["models.volumetric_rendering.renderer"]
    eg3d.patch(G)
    assert G.renderer.oneshot_axes() == eg3d.PLANE_AXES_GOHA
    (img, _), _ = _render(G, seed=1)
    assert_close(img, img0, rtol=2e-5, atol=2e-5, name="image")
    G.renderer.__class__ = eg3d.ImportanceRenderer  # oneshot's with EG3D's own planes: another image
    G.renderer._oneshot_settings = eg3d.Settings()
    G.renderer.plane_axes = eg3d.generate_planes()
    (img_eg3d, _), _ = _render(G, seed=1)
    assert (img_eg3d - img0).abs().max() > 1e-2


@pytest.mark.parametrize("extra,why", [(FOUR_OUTPUTS, "returns 4 values"), (EXTRA_DRAW, "global RNG differently"),
                                       (NEEDS_ARGUMENTS, "cannot be built without arguments")])
def test_modified_renderers_are_left_alone(layout, extra, why):
    write_layout(layout, extra=extra)
    with pytest.warns(eg3d.EG3DCompatWarning, match=why):
        triplane = importlib.import_module("training.triplane")
        assert eg3d.patch() == []
    assert not _is_patched(triplane.ImportanceRenderer)
    with pytest.raises(eg3d.PatchError, match=why):
        eg3d.patch(modules="training.volumetric_rendering.renderer")
    if extra is not NEEDS_ARGUMENTS:  # (that generator cannot even be built)
        G = triplane.TriPlaneGenerator(options())
        with pytest.raises(eg3d.PatchError, match=why):
            eg3d.patch(G)
        assert not _is_patched(G.renderer)
        eg3d.patch(G, verify=False)  # forced
        assert _is_patched(G.renderer)


def test_another_module_path_by_name(layout):
    write_layout(layout, package="mypkg.gen")
    assert eg3d.patch(modules=["mypkg.gen.volumetric_rendering.renderer"]) == []
    triplane = importlib.import_module("mypkg.gen.triplane")
    assert _is_patched(triplane.ImportanceRenderer)
    assert eg3d.patched_modules() == ["mypkg.gen.volumetric_rendering.renderer"]
    eg3d.unpatch()
    assert not _is_patched(triplane.ImportanceRenderer)
    assert eg3d.patch("mypkg.gen.volumetric_rendering.renderer") == ["mypkg.gen.volumetric_rendering.renderer"]
    with pytest.raises(eg3d.PatchError, match="has no ImportanceRenderer class"):
        eg3d.patch(modules=["mypkg.gen"])


def test_switches_through_patch(layout, monkeypatch):
    write_layout(layout)
    eg3d.patch(deterministic=True, clip_to_box=True)
    triplane = importlib.import_module("training.triplane")
    G = triplane.TriPlaneGenerator(options())
    o, d = _rays(G)
    planes = G.planes.expand(2, -1, -1, -1, -1)
    before = torch.get_rng_state()
    out = G.renderer(planes, G.decoder, o, d, options())
    assert torch.equal(before, torch.get_rng_state())
    ref = ReferenceRenderer(deterministic=True, clip_to_box=True)(planes, G.decoder, o, d, options())
    for a, b, n in zip(out, ref, ("rgb", "depth", "weights_sum")):
        assert_close(a, b, rtol=2e-5, atol=2e-5, name=n)
    eg3d.patch()  # again, switches off: the modules start over from the originals
    assert G.renderer._oneshot_settings.deterministic  # renderers built before keep theirs
    assert not triplane.TriPlaneGenerator(options()).renderer._oneshot_settings.deterministic


def test_patch_errors(layout):
    with pytest.raises(eg3d.PatchError, match="no EG3D ImportanceRenderer"):
        eg3d.patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="takes None, a module path or an nn.Module"):
        eg3d.patch(5)
    with pytest.raises(ValueError, match="fused must be"):
        eg3d.patch(fused="sometimes")
    mod = eg3d.ImportanceRenderer()
    assert eg3d.patch(torch.nn.Sequential(mod))[0] is mod  # oneshot's own renderer counts, untouched


def test_the_import_hook_leaves_other_modules_alone(layout):
    eg3d.patch()
    import json.decoder  # noqa: F401 - an unrelated import goes through the normal machinery

    assert type(sys.modules["json.decoder"].__loader__).__name__ != "_Loader"
    (layout / "plain.py").write_text(textwrap.dedent("X = 1\n"))
    assert importlib.import_module("plain").X == 1
    del sys.modules["plain"]
