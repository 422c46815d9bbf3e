"""The ``fused`` render setting (issue 24): one type (None / True / False) and one default (None, automatic) in
RenderSettings and AvatarConfig; the automatic choice made in oneshot.ops (``use_fused_render``), condition by
condition; the error when fused=True cannot run; old configs and checkpoints (``fused_render``, "always"); and the
decoder-weights protocol (``effective_weights()``, ``ops.decoder_weights``, ``ops.FusableDecoder``).

Which path a render takes is observed with spies on the ops the renderer calls, not by comparing outputs (both
paths compute the same values).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from oneshot import cameras, ops
from oneshot.models import AvatarConfig, OneShotAvatar, RenderSettings, TriplaneDecoder, VolumeRenderer
from oneshot.models import volume as volume_module
from oneshot.ops import _backend

pytestmark = pytest.mark.skipif(not ops.backend_info()["native_cpu"], reason="the native extension is not built")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


class PlainDecoder(nn.Module):
    """EG3D's decoder without effective_weights(): the fused op cannot evaluate it."""

    def __init__(self, c=4, hidden=8, co=4):
        super().__init__()
        self.inner = TriplaneDecoder(c, hidden, co)

    def forward(self, features):
        return self.inner(features)


class OwnDecoder(nn.Module):
    """Not a TriplaneDecoder: plain nn.Linear layers, EG3D's forward, and the protocol method."""

    def __init__(self, c=4, hidden=8, co=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, 1 + co)

    def effective_weights(self):
        return self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias

    def forward(self, features):
        y = self.fc2(nn.functional.softplus(self.fc1(features)))
        return y[..., 0], torch.sigmoid(y[..., 1:]) * 1.002 - 0.001


def decide(fused, device=CPU, dtype=torch.float32, decoder=None, backend=None):
    return ops.use_fused_render(fused, device=device, dtype=dtype, backend=backend,
                                decoder=TriplaneDecoder(4, 8, 4) if decoder is None else decoder)


@pytest.fixture
def cuda_kernel(monkeypatch):
    """Pretend this build has CUDA render_triplane kernels, so that only the measured-device rule is left."""
    kernels = set(_backend._KERNELS) | {("render_triplane", "CUDA"), ("render_triplane_backward", "CUDA")}
    monkeypatch.setattr(_backend, "_KERNELS", frozenset(kernels))


@pytest.fixture
def no_render_kernel(monkeypatch):
    """Pretend this build predates render_triplane (an extension without the op)."""
    monkeypatch.setattr(_backend, "_KERNELS", frozenset(k for k in _backend._KERNELS if not k[0].startswith("render")))


# ---------------------------------------------------------------------------------------------------------- #
# the automatic choice, one condition at a time


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_automatic_is_fused_on_cpu_with_eg3d_decoder_and_a_kernel(dtype):
    assert decide(None, dtype=dtype) is True
    assert decide(None, dtype=dtype, backend="native") is True
    assert decide(None, dtype=dtype, backend="auto") is True


def test_automatic_is_composed_for_a_decoder_without_effective_weights():
    assert decide(None, decoder=PlainDecoder()) is False


def test_automatic_follows_the_decoder_protocol_not_the_class():
    assert decide(None, decoder=OwnDecoder()) is True


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_automatic_is_composed_when_the_backend_is_forced_elsewhere(backend):
    assert decide(None, backend=backend) is False


def test_automatic_is_composed_without_a_native_kernel(no_render_kernel):
    assert decide(None) is False


def test_automatic_keeps_cuda_composed_until_its_kernel_is_measured(cuda_kernel, monkeypatch):
    assert _backend.has_native_kernel("render_triplane", CUDA)
    assert decide(None, device=CUDA) is False
    # the rule, not the missing kernel, is what keeps it composed: a measured device would take it
    monkeypatch.setattr(_backend, "FUSED_AUTO_DEVICES", ("cpu", "cuda"))
    assert decide(None, device=CUDA) is True
    assert decide(True, device=CUDA) is True  # True takes the (unmeasured) kernel


def test_false_is_always_composed(cuda_kernel):
    for device in (CPU, CUDA):
        assert decide(False, device=device) is False
    assert decide(False, decoder=PlainDecoder()) is False


# ---------------------------------------------------------------------------------------------------------- #
# fused=True: fused, or an error that says why


def test_true_is_fused_where_it_can_run():
    assert decide(True) is True
    assert decide(True, dtype=torch.float64, backend="native") is True
    assert decide(True, backend="reference") is True  # render_triplane's reference backend, as asked


def test_true_without_effective_weights_says_so():
    with pytest.raises(TypeError, match=r"fused=True needs EG3D's decoder: a module with effective_weights\(\).*"
                                        r"got PlainDecoder"):
        decide(True, decoder=PlainDecoder())


def test_true_without_a_kernel_says_so(no_render_kernel):
    with pytest.raises(RuntimeError, match=r"fused=True: no fused render_triplane kernel for cpu torch.float32 planes "
                                           r"\(this build has no cpu kernel for render_triplane\)"):
        decide(True)


def test_true_on_a_device_without_a_kernel_says_so():
    if _backend.has_native_kernel("render_triplane", CUDA):
        pytest.skip("this build has a CUDA render_triplane kernel")
    with pytest.raises(RuntimeError, match=r"fused=True: no fused render_triplane kernel for cuda"):
        decide(True, device=CUDA)


def test_true_with_a_backend_that_cannot_run_says_so(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"backend='triton' is unavailable for render_triplane"):
        decide(True, backend="triton")


@pytest.mark.parametrize("bad", ["yes", 1, "auto"])
def test_the_setting_takes_none_true_false(bad):
    with pytest.raises(TypeError, match=r"fused must be None \(automatic\), True or False"):
        decide(bad)
    with pytest.raises(ValueError, match=r"fused must be None \(automatic\), True \(fused\) or False"):
        RenderSettings(fused=bad)
    with pytest.raises(ValueError, match=r"fused must be None"):
        AvatarConfig(fused=bad)


# ---------------------------------------------------------------------------------------------------------- #
# the renderer takes the path that was decided (spies on the ops it calls)


@pytest.fixture
def spy(monkeypatch):
    calls = {"render_triplane": 0, "ray_march": 0, "triplane_sample": 0}
    for name in calls:
        real = getattr(volume_module, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(volume_module, name, wrapped)
    return calls


def _render(settings, decoder=None, backend=None):
    torch.manual_seed(0)
    planes = torch.randn(1, 3, 4, 8, 8) * 0.5
    decoder = TriplaneDecoder(4, 8, 4) if decoder is None else decoder
    return VolumeRenderer(settings, backend=backend)(planes, decoder, cameras.orbit_labels(1), 6,
                                                     generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fused,decoder,want_fused", [
    (None, None, True), (True, None, True), (False, None, False),
    (None, PlainDecoder(), False), (None, OwnDecoder(), True), (True, OwnDecoder(), True),
])
def test_renderer_calls_the_op_that_was_decided(spy, fused, decoder, want_fused):
    _render(RenderSettings(samples=4, importance_samples=4, fused=fused), decoder)
    if want_fused:
        assert spy == {"render_triplane": 2, "ray_march": 0, "triplane_sample": 0}  # coarse pass + final pass
    else:
        assert spy["render_triplane"] == 0 and spy["ray_march"] == 2 and spy["triplane_sample"] == 2


def test_renderer_with_fused_true_and_a_plain_decoder_raises(spy):
    with pytest.raises(TypeError, match=r"fused=True needs EG3D's decoder.*got PlainDecoder"):
        _render(RenderSettings(samples=4, importance_samples=4, fused=True), PlainDecoder())


def test_renderer_forced_reference_backend_stays_composed_unless_asked(spy):
    _render(RenderSettings(samples=4, importance_samples=0), backend="reference")
    assert spy["render_triplane"] == 0 and spy["ray_march"] == 1


def test_fused_and_composed_renders_agree_for_a_protocol_decoder():
    """The protocol is all the fused op needs: a decoder of another class renders the same fused and composed."""
    torch.manual_seed(3)
    dec = OwnDecoder().double()
    planes = (torch.randn(1, 3, 4, 8, 8, dtype=torch.float64) * 0.5).requires_grad_()
    outs = []
    for fused in (True, False):
        r = VolumeRenderer(RenderSettings(samples=6, importance_samples=6, stratified=False, fused=fused))
        out = r(planes, dec, cameras.orbit_labels(1).double(), 5)
        grads = torch.autograd.grad(out.features.square().sum() + out.depth.sum(), [planes, *dec.parameters()])
        outs.append((out.features, out.depth, out.opacity, *grads))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------------------- #
# AvatarConfig: the same setting, passed to the renderer; old names and values still load


def test_one_default_and_one_type():
    assert RenderSettings().fused is None and AvatarConfig().fused is None
    assert AvatarConfig.preset_config("paper").fused is None
    assert AvatarConfig.preset_config("goha-release").fused is None
    assert AvatarConfig.preset_config("tiny").fused is False  # measured: composed is faster at this size
    for value in (None, True, False):
        cfg = AvatarConfig(fused=value)
        assert cfg.render_settings().fused is value
        assert AvatarConfig.from_json(cfg.to_json()).fused is value


@pytest.fixture(scope="module")
def face():
    from oneshot.face3d import builtin_model

    return builtin_model()


@pytest.mark.parametrize("fused,want_fused", [(None, True), (True, True), (False, False)])
def test_avatar_config_reaches_the_renderer(face, spy, fused, want_fused):
    avatar = OneShotAvatar(AvatarConfig.preset_config("tiny", fused=fused), face).eval()
    assert avatar.renderer.settings == avatar.config.render_settings()
    assert avatar.renderer.settings.fused is fused
    planes = torch.randn(1, 3, avatar.config.plane_channels, 8, 8) * 0.3
    with torch.no_grad():
        avatar.render(planes, cameras.orbit_labels(1), 4)
    assert (spy["render_triplane"] > 0) is want_fused
    assert (spy["ray_march"] > 0) is (not want_fused)


@pytest.mark.parametrize("old,new", [(True, None), (False, False), ("always", True)])
def test_old_configs_with_fused_render_load(old, new):
    data = json.loads(AvatarConfig.preset_config("paper").to_json())
    del data["fused"]
    data["fused_render"] = old
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning spam
        cfg = AvatarConfig.from_json(json.dumps(data))
        assert cfg.fused is new
        assert AvatarConfig.preset_config("tiny", fused_render=old).fused is new
    written = json.loads(cfg.to_json())
    assert "fused_render" not in written and written["fused"] is new


def test_both_names_at_once_is_an_error():
    with pytest.raises(ValueError, match=r"give fused \(fused_render is its old name\), not both"):
        AvatarConfig.preset_config("tiny", fused=True, fused_render=False)


def test_always_is_taken_as_true_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert RenderSettings(fused="always").fused is True
        assert AvatarConfig(fused="always").fused is True


def test_an_old_checkpoint_with_fused_render_loads(face, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    avatar = OneShotAvatar("tiny", face)
    path = tmp_path / "new.safetensors"
    avatar.save(path)
    data = json.loads(avatar.config.to_json())
    del data["fused"]
    data["fused_render"] = "always"
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={"format": "oneshot-avatar", "config": json.dumps(data)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = OneShotAvatar.load(old, face)
    assert loaded.config.fused is True and loaded.renderer.settings.fused is True


# ---------------------------------------------------------------------------------------------------------- #
# the decoder-weights protocol


def test_triplane_decoder_effective_weights_are_what_its_forward_applies():
    torch.manual_seed(0)
    dec = TriplaneDecoder(5, 7, 3, lr_multiplier=0.5).double()
    assert isinstance(dec, ops.FusableDecoder) and not isinstance(PlainDecoder(), ops.FusableDecoder)
    w1, b1, w2, b2 = dec.effective_weights()
    assert [tuple(w.shape) for w in (w1, b1, w2, b2)] == [(7, 5), (7,), (4, 7), (4,)]
    l1 = dec.net[0]
    torch.testing.assert_close(w1, l1.weight * 0.5 / 5 ** 0.5, rtol=1e-15, atol=0)
    torch.testing.assert_close(b1, l1.bias * 0.5, rtol=1e-15, atol=0)
    f = torch.randn(11, 5, dtype=torch.float64)
    y = nn.functional.linear(nn.functional.softplus(nn.functional.linear(f, w1, b1)), w2, b2)
    sigma, color = dec(f)
    torch.testing.assert_close(sigma, y[..., 0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(color, torch.sigmoid(y[..., 1:]) * 1.002 - 0.001, rtol=1e-12, atol=1e-14)
    # differentiable w.r.t. the stored parameters, with the gain in the chain
    (g,) = torch.autograd.grad(w1.sum(), [l1.weight])
    torch.testing.assert_close(g, torch.full_like(g, 0.5 / 5 ** 0.5))


def test_decoder_weights_reads_the_protocol():
    dec = TriplaneDecoder(4, 8, 4)
    for a, b in zip(ops.decoder_weights(dec), dec.effective_weights()):
        assert torch.equal(a, b)
    own = OwnDecoder()
    assert ops.decoder_weights(own)[0] is own.fc1.weight


def test_decoder_weights_refuses_other_modules_clearly():
    with pytest.raises(TypeError, match=r"decoder must have effective_weights\(\).*got PlainDecoder"):
        ops.decoder_weights(PlainDecoder())

    class ThreeTensors(nn.Module):
        def effective_weights(self):
            return torch.zeros(2, 3), torch.zeros(2), torch.zeros(3, 2)

    with pytest.raises(TypeError, match=r"ThreeTensors.effective_weights\(\) must return four tensors"):
        ops.decoder_weights(ThreeTensors())

    class Mismatched(nn.Module):
        def effective_weights(self):
            return torch.zeros(2, 3), torch.zeros(2), torch.zeros(3, 5), torch.zeros(3)

    with pytest.raises(ValueError, match=r"w1 \[hidden, C\], b1 \[hidden\], w2 \[1 \+ Co, hidden\].*"
                                         r"got \[\[2, 3\], \[2\], \[3, 5\], \[3\]\]"):
        ops.decoder_weights(Mismatched())
