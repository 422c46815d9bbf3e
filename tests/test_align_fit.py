"""Head pose <-> camera label, Deep3DFaceRecon's 5-point alignment, landmark fitting and the portrait
preprocessing (oneshot.face3d.pose / align / fit)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from oneshot import cameras
from oneshot.face3d import (RECON_FOCAL, Coeffs, ReconNet, align_face, builtin_model, camera_to_pose,
                            estimate_face, euler_rotation, fit_landmarks, five_points, pose_to_camera,
                            project_landmarks, render, rotation_to_euler, standard_landmarks)


@pytest.fixture(scope="module")
def model():
    return builtin_model()


def _rot_err_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r = euler_rotation(a.double()).transpose(1, 2) @ euler_rotation(b.double())
    return torch.rad2deg(torch.arccos(((r.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))


def _random_coeffs(model, B, seed, yaw=0.6):
    g = torch.Generator().manual_seed(seed)
    c = Coeffs.zeros(model, B)
    c.identity = torch.randn(B, model.num_identity, generator=g) * 0.8
    c.expression = torch.rand(B, model.num_expression, generator=g) * (torch.rand(B, model.num_expression, generator=g) < 0.4)
    c.rotation = (torch.rand(B, 3, generator=g) * 2 - 1) * torch.tensor([0.3, yaw, 0.15])
    c.translation = (torch.rand(B, 3, generator=g) * 2 - 1) * torch.tensor([0.3, 0.3, 1.0])
    return c, g


# -- rotations and the pose <-> camera conversion ------------------------------------------------------------

def test_euler_rotation_hand_values():
    a = 0.3
    rx = euler_rotation(torch.tensor([[a, 0.0, 0.0]], dtype=torch.float64))[0]
    assert torch.allclose(rx, torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]],
                                           dtype=torch.float64))
    ry = euler_rotation(torch.tensor([0.0, a, 0.0], dtype=torch.float64))[0]
    assert torch.allclose(ry, torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                                           dtype=torch.float64))
    # Order: Rz Ry Rx.
    ang = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    parts = [euler_rotation(ang * torch.tensor(mask, dtype=torch.float64)) for mask in ([0, 0, 1], [0, 1, 0], [1, 0, 0])]
    assert torch.allclose(euler_rotation(ang), parts[0] @ parts[1] @ parts[2])


# Rz(c) Ry(b) Rx(a) from Rodrigues' formula about each axis, R = I + sin(t) K + (1 - cos(t)) K^2 with K the axis's
# cross-product matrix: a reference for rotation_to_euler that calls neither it nor euler_rotation.
_AXES = torch.tensor([[[0, 0, 0], [0, 0, -1], [0, 1, 0]],  # x
                      [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],  # y
                      [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], dtype=torch.float64)  # z


def _rodrigues(angles: torch.Tensor) -> torch.Tensor:  # [B, 3] (a, b, c) -> [B, 3, 3]
    def about(k):
        t = angles[:, k, None, None]
        K = _AXES[k]
        return torch.eye(3, dtype=torch.float64) + torch.sin(t) * K + (1 - torch.cos(t)) * (K @ K)

    return about(2) @ about(1) @ about(0)


def _wrap(x: torch.Tensor) -> torch.Tensor:  # to (-pi, pi]
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def _assert_angles(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    d = _wrap(got - want).abs()  # -pi and pi are one angle
    assert float(d.max()) < atol, (got, want)


@settings(max_examples=40, deadline=None)
@example(0.3, 1.5707, -2.0)  # cos(b) = 1e-4: the regular branch at its worst conditioning
@example(-3.14, -1.5707, 3.14)
@given(st.floats(-3.14, 3.14), st.floats(-1.5707, 1.5707), st.floats(-3.14, 3.14))
def test_rotation_to_euler_recovers_the_angles_of_a_rotation_built_independently(a, b, c):
    """Away from gimbal lock (|b| < pi/2) the angles are unique with b in [-pi/2, pi/2]: they come back."""
    ang = torch.tensor([[a, b, c]], dtype=torch.float64)
    got = rotation_to_euler(_rodrigues(ang))
    _assert_angles(got, ang, 1e-12 + 1e-14 / math.cos(b))  # cos(b) small: a and c are ill-conditioned
    assert torch.allclose(_rodrigues(got), _rodrigues(ang), atol=1e-10)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rotation_to_euler_in_gimbal_lock_keeps_the_rotation(sign):
    """b = +-pi/2: only a - c (b = pi/2) or a + c (b = -pi/2) is defined; the function returns c = 0 and puts the
    whole rotation about the locked axis into a. Closed form: with b = pi/2, Rz(c) Ry(pi/2) Rx(a) = Ry(pi/2) Rx(a - c);
    with b = -pi/2 it is Ry(-pi/2) Rx(a + c). Inputs: exact matrices (cos b = 0) and ones built by
    Rodrigues' formula (cos b ~ 1e-17, rounding noise in the entries the regular branch would divide)."""
    g = torch.Generator().manual_seed(0 if sign > 0 else 1)
    a = (torch.rand(16, generator=g, dtype=torch.float64) * 2 - 1) * 3
    c = (torch.rand(16, generator=g, dtype=torch.float64) * 2 - 1) * 3
    ang = torch.stack([a, torch.full_like(a, sign * math.pi / 2), c], 1)
    want = torch.stack([_wrap(a - sign * c), ang[:, 1], torch.zeros_like(a)], 1)
    s, co = torch.sin(a - sign * c), torch.cos(a - sign * c)
    z = torch.zeros_like(a)
    # Ry(sign pi/2) Rx(t), written out: rows [0, sign sin t, sign cos t], [0, cos t, -sin t], [-sign, 0, 0]
    exact = torch.stack([torch.stack([z, sign * s, sign * co], 1), torch.stack([z, co, -s], 1),
                         torch.stack([z - sign, z, z], 1)], 1)
    assert torch.allclose(exact, _rodrigues(ang), atol=1e-12)
    for rot in (exact, _rodrigues(ang)):
        got = rotation_to_euler(rot)
        _assert_angles(got, want, 1e-9)
        assert torch.allclose(_rodrigues(got), rot, atol=1e-12)
    # just inside the lock threshold (cos b = 1e-7): the same convention, the rotation kept to ~1e-7
    near = ang.clone()
    near[:, 1] = sign * (math.pi / 2 - 1e-7)
    got = rotation_to_euler(_rodrigues(near))
    _assert_angles(got, want, 1e-6)
    assert torch.allclose(_rodrigues(got), _rodrigues(near), atol=1e-6)


def test_rotation_to_euler_of_random_rotations_composes_back():
    """Any rotation (uniform on SO(3), QR of Gaussians): the returned angles rebuild it."""
    g = torch.Generator().manual_seed(2)
    q, r = torch.linalg.qr(torch.randn(64, 3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :]
    q = q * torch.det(q)[:, None, None]  # det +1
    got = rotation_to_euler(q)
    assert float(got[:, 1].abs().max()) <= math.pi / 2
    assert torch.allclose(_rodrigues(got), q, atol=1e-12)


def test_identity_pose_is_the_frontal_camera_at_radius_2_7():
    label = pose_to_camera(torch.zeros(1, 3), torch.zeros(1, 3))
    c2w, intr = cameras.split_label(label)
    # Deep3DFaceRecon's camera at (0, 0, 10) x 0.27, looking down -z: OpenCV axes x right, y down, z forward.
    assert torch.allclose(c2w[0], torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]]))
    assert torch.allclose(intr[0], cameras.intrinsics())
    # Without its pivot offset, EG3D's frontal look-at camera is this one up to the tilt towards (0, 0, 0.2).
    frontal = cameras.look_at(0.0, 0.0, pivot=(0, 0, 0))[0]
    assert torch.allclose(frontal, c2w[0], atol=1e-5)


def test_pose_to_camera_matches_deep3dfacerecon_projection(model):
    """Projecting with the label (oneshot.cameras) equals Deep3DFaceRecon's own formula: u = 112 + 1015 x / (10 - z),
    v = 112 - 1015 y / (10 - z) for the posed head q = R v + t in its units."""
    c, _ = _random_coeffs(model, 3, seed=1)
    verts = model.vertices(c.identity, c.expression).double()
    label = pose_to_camera(c.rotation.double(), c.translation.double(), focal=RECON_FOCAL)
    c2w, intr = cameras.split_label(label)
    uv, depth = cameras.project(verts, c2w, intr, 224)
    q = (verts / 0.27) @ euler_rotation(c.rotation.double()).transpose(1, 2) + c.translation.double()[:, None]
    u = 112 + 1015 * q[..., 0] / (10 - q[..., 2])
    v = 112 - 1015 * q[..., 1] / (10 - q[..., 2])
    assert torch.allclose(uv, torch.stack([u, v], -1), atol=1e-8)
    assert torch.allclose(depth, (10 - q[..., 2]) * 0.27, atol=1e-10)


def test_camera_to_pose_inverts_and_coeffs_helpers(model):
    c, _ = _random_coeffs(model, 4, seed=2)
    label = pose_to_camera(c.rotation.double(), c.translation.double())
    rot, trans = camera_to_pose(label)
    assert torch.allclose(rot, c.rotation.double(), atol=1e-9) and torch.allclose(trans, c.translation.double(), atol=1e-9)
    # An EG3D orbit camera round-trips through the pose too (it has no roll, but any rigid camera works).
    orbit = cameras.orbit_labels(5).double()
    assert torch.allclose(pose_to_camera(*camera_to_pose(orbit)), orbit, atol=1e-9)
    assert torch.allclose(c.camera(), pose_to_camera(c.rotation, c.translation))
    c2 = Coeffs.zeros(model, 5).with_camera(orbit.float())
    assert torch.allclose(c2.camera(), orbit.float(), atol=1e-5)
    with pytest.raises(ValueError, match=r"camera must be \[1, 25\]"):
        Coeffs.zeros(model, 1).with_camera(orbit)
    with pytest.raises(ValueError, match=r"rotation must be \[B, 3\] or \[3\], got \[2, 4\]"):
        pose_to_camera(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"one batch size, got 2 and 3"):
        pose_to_camera(torch.zeros(2, 3), torch.zeros(3, 3))


# -- alignment ---------------------------------------------------------------------------------------------

def test_five_points_from_68():
    lm = torch.arange(68 * 2, dtype=torch.float32).reshape(1, 68, 2)
    p5 = five_points(lm)
    assert torch.equal(p5[0, 0], (lm[0, 36] + lm[0, 39]) / 2) and torch.equal(p5[0, 2], lm[0, 30])
    assert torch.equal(p5[0, 4], lm[0, 54])
    assert five_points(p5) is p5
    with pytest.raises(ValueError, match=r"landmarks must be \[B, 68, 2\] \(iBUG\) or \[B, 5, 2\].*got \[1, 7, 2\]"):
        five_points(torch.zeros(1, 7, 2))


def test_alignment_puts_the_standard_points_at_their_places(model):
    """A face seen from the canonical distance: after the 224 alignment its five points sit where the standard
    landmarks' weak-perspective projection (102 px per unit around the centre) puts them, whatever the framing
    of the input photo."""
    std = standard_landmarks(model)
    want = torch.stack([112 + 102 * std[:, 0], 112 - 102 * std[:, 1]], -1)
    c = Coeffs.zeros(model, 1)
    for res, focal, shift in ((640, 3.0, (0.2, -0.1)), (300, 6.0, (0.0, 0.3))):
        c.translation = torch.tensor([[shift[0], shift[1], 0.0]])
        lm = project_landmarks(model, c, res, focal=focal)
        image = torch.rand(1, 3, res, res)
        out = align_face(image, lm)
        assert out.image.shape == (1, 3, 224, 224)
        got = five_points(out.landmarks)[0].double()
        assert (got - want).norm(dim=-1).max() < 2.0, (got - want)
        # matrix maps the input landmarks to the returned ones.
        assert torch.allclose(out.landmarks.double(), lm.double() @ out.matrix[0, :, :2].T + out.matrix[0, :, 2], atol=1e-4)


def test_alignment_crop_samples_the_image_where_the_matrix_says():
    # A smooth image: the crop's pixel values equal the image function at the mapped points.
    H, W = 200, 260
    yy, xx = torch.meshgrid(torch.arange(H).double() + 0.5, torch.arange(W).double() + 0.5, indexing="ij")
    # A linear image: bilinear sampling is exact, and so is the antialiasing filter of a shrink away from the
    # borders (its weights are symmetric there).
    f = lambda x, y: torch.stack([x / W, y / H, 0.5 + 0.0 * x])  # noqa: E731
    image = f(xx, yy)[None].double()
    lm = standard_landmarks()[None, :, :2] * torch.tensor([60.0, -60.0]) + torch.tensor([130.0, 100.0])
    for size, focal in ((224, RECON_FOCAL), (96, cameras.FOCAL)):
        out = align_face(image, lm.double(), size=size, focal=focal)
        a = out.matrix[0]
        inv = torch.linalg.inv(torch.cat([a, torch.tensor([[0, 0, 1.0]], dtype=a.dtype)]))
        cy, cx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        src = torch.stack([cx, cy, torch.ones_like(cx)], -1).double() @ inv.T
        m = 1 if a[0, 0] >= 1 else 2 / float(a[0, 0])  # the filter's reach
        inside = (src[..., 0] > m) & (src[..., 0] < W - m) & (src[..., 1] > m) & (src[..., 1] < H - m)
        expect = f(src[..., 0], src[..., 1])
        assert inside.float().mean() > 0.3
        assert (out.image[0] - expect).abs()[:, inside].max() < 1e-9


def test_alignment_shrinks_with_antialiasing():
    # A fine checkerboard shrunk 8x: antialiased, it averages to grey instead of aliasing.
    H = W = 800
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image = ((xx + yy) % 2).float().expand(1, 3, H, W)
    lm = standard_landmarks()[None, :, :2].float() * torch.tensor([150.0, -150.0]) + 400  # 5x shrink
    out = align_face(image, lm, size=64)
    assert out.matrix[0, 0, 0] < 0.2
    assert (out.image[0, :, 16:48, 16:48] - 0.5).abs().max() < 0.05


def test_alignment_errors():
    img = torch.rand(1, 3, 64, 64)
    lm = torch.rand(1, 5, 2) * 64
    with pytest.raises(ValueError, match=r"image must be a float tensor \[B, C, H, W\]"):
        align_face(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), lm)
    with pytest.raises(ValueError, match=r"landmarks must have the image's batch size 1, got 2"):
        align_face(img, torch.rand(2, 5, 2))
    with pytest.raises(ValueError, match=r"landmarks must be finite"):
        align_face(img, torch.full((1, 5, 2), float("nan")))
    with pytest.raises(ValueError, match=r"degenerate"):
        align_face(img, torch.full((1, 5, 2), 3.0))
    with pytest.raises(ValueError, match=r"standard must be \[5, 3\]"):
        align_face(img, lm, standard=torch.zeros(4, 3))


def test_canonical_framing_is_the_builtin_face_and_eg3d_s(model):
    """The canonical five points are the built-in model's (made symmetric), and a frontal face at the canonical
    distance puts eyes and mouth corners where EG3D's 512 crops have them (y = 178 and 324)."""
    from oneshot.face3d.align import CANONICAL_FIVE

    assert float((standard_landmarks(model) - CANONICAL_FIVE).norm(dim=1).max()) < 0.03
    c = Coeffs.zeros(model, 1)
    lm5 = five_points(project_landmarks(model, c, 512))[0]
    assert abs(float(lm5[:2, 1].mean()) - 178) < 3 and abs(float(lm5[3:, 1].mean()) - 324) < 3
    # and a synthetic sample's frontal camera (the canonical pivot, EG3D's radius) is the same view
    from oneshot.data.synth import SYNTH_PIVOT

    cam = cameras.camera_label(cameras.look_at(0.0, 0.0, pivot=SYNTH_PIVOT), cameras.intrinsics())
    torch.testing.assert_close(cam, c.camera(), atol=1e-5, rtol=0)


# -- fitting --------------------------------------------------------------------------------------------------

def test_fit_recovers_the_pose_of_exact_landmarks(model):
    c, _ = _random_coeffs(model, 6, seed=0)
    lm = project_landmarks(model, c, 512)
    # priors turned down (the pose prior is a deliberate bias towards frontal): exact landmarks, exact fit
    fit = fit_landmarks(model, lm, 512, identity_weight=1e-3, expression_weight=1e-3, pose_weight=0)
    assert fit.error.max() < 0.3  # pixels at 512
    assert _rot_err_deg(fit.coeffs.rotation, c.rotation).max() < 0.3
    # The camera label is the fitted pose's, and reprojects the landmarks.
    assert torch.allclose(fit.camera, fit.coeffs.camera(), atol=1e-5)
    assert (project_landmarks(model, fit.coeffs, 512) - lm).norm(dim=-1).mean(-1).max() < 0.3
    assert fit.coeffs.check(model) is fit.coeffs


def test_fit_with_noisy_landmarks_and_pose_only(model):
    c, g = _random_coeffs(model, 6, seed=3, yaw=0.78)  # up to 45 degrees of yaw
    lm = project_landmarks(model, c, 512) + torch.randn(6, 68, 2, generator=g) * 0.5
    fit = fit_landmarks(model, lm, 512)
    assert _rot_err_deg(fit.coeffs.rotation, c.rotation).max() < 1.5
    c2w_true = cameras.split_label(c.camera())[0]
    c2w_fit = cameras.split_label(fit.camera)[0]
    assert (c2w_true[:, :3, 3] - c2w_fit[:, :3, 3]).norm(dim=-1).max() < 0.25  # of radius 2.7: depth ~ identity scale
    assert fit.error.max() < 2.0
    # Pose only, on the mean face: the rigid fit still finds the rotation.
    c.identity.zero_()
    c.expression.zero_()
    lm = project_landmarks(model, c, 512)
    rigid = fit_landmarks(model, lm, 512, fit_identity=False, fit_expression=False, pose_weight=0)
    assert _rot_err_deg(rigid.coeffs.rotation, c.rotation).max() < 0.05 and rigid.error.max() < 0.05
    assert torch.equal(rigid.coeffs.identity, torch.zeros_like(rigid.coeffs.identity))


def test_fit_keeps_coefficients_in_the_model_ranges(model):
    """Landmarks of an exaggerated face (expression weights up to 2.5, identity up to 4.5) pull an unbounded fit
    out of the model's range; the default fit stays in it and reports the distances it leaves."""
    c, _ = _random_coeffs(model, 4, seed=7)
    c.expression = c.expression * 2.5
    c.identity = c.identity * 2.5
    lm = project_landmarks(model, c, 512)
    free = fit_landmarks(model, lm, 512, bounded=False, identity_weight=1e-4, expression_weight=1e-4)
    lo_e, hi_e = model.expression_range
    lo_i, hi_i = model.identity_range
    assert (free.coeffs.expression > hi_e).any() or (free.coeffs.expression < lo_e).any() \
        or (free.coeffs.identity.abs() > hi_i).any()
    fit = fit_landmarks(model, lm, 512, identity_weight=1e-4, expression_weight=1e-4)
    assert (fit.coeffs.expression >= lo_e).all() and (fit.coeffs.expression <= hi_e).all()
    assert (fit.coeffs.identity >= lo_i).all() and (fit.coeffs.identity <= hi_i).all()
    # the bounds are active (some weight sits on them) and the reported distances are the real ones
    assert ((fit.coeffs.expression == hi_e) | (fit.coeffs.identity.abs() == hi_i).any(-1, keepdim=True)).any()
    d = (project_landmarks(model, fit.coeffs, 512) - lm).norm(dim=-1)
    torch.testing.assert_close(fit.mean_error, d.mean(-1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fit.max_error, d.amax(-1), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fit.error, d.pow(2).mean(-1).sqrt(), rtol=1e-3, atol=1e-3)


def test_pitch_prior_leans_towards_level(model):
    c, g = _random_coeffs(model, 4, seed=11)
    c.rotation[:, 0] = 0.35  # 20 degrees of pitch
    lm = project_landmarks(model, c, 512) + torch.randn(4, 68, 2, generator=g) * 2.0
    pitch = [fit_landmarks(model, lm, 512, pose_weight=w).coeffs.rotation[:, 0] for w in (0.0, 1.0, 20.0)]
    assert (pitch[0] > pitch[1]).all() and (pitch[1] > pitch[2]).all()
    yaw = [fit_landmarks(model, lm, 512, pose_weight=w).coeffs.rotation[:, 1] for w in (0.0, 20.0)]
    assert (yaw[0] - yaw[1]).abs().max() < math.radians(2)  # the prior holds the pitch only


def test_fit_errors(model):
    with pytest.raises(ValueError, match=r"landmarks must be a float tensor \[B, 68, 2\].*got \[1, 5, 2\]"):
        fit_landmarks(model, torch.zeros(1, 5, 2), 512)
    with pytest.raises(ValueError, match=r"square image"):
        fit_landmarks(model, torch.rand(1, 68, 2), (512, 256))
    with pytest.raises(ValueError, match=r"weights must be 68 non-negative"):
        fit_landmarks(model, torch.rand(1, 68, 2), 512, weights=torch.ones(5))
    with pytest.raises(ValueError, match=r"landmarks must be finite"):
        fit_landmarks(model, torch.full((1, 68, 2), float("inf")), 512)
    with pytest.raises(ValueError, match=r"pose_weight must be >= 0, got -1"):
        fit_landmarks(model, torch.rand(1, 68, 2) * 100, 512, pose_weight=-1)


# -- the whole preprocessing -----------------------------------------------------------------------------------

def test_estimate_face_crop_and_camera_agree_with_a_render(model):
    """Render a posed face in a photo framed differently from EG3D's; estimate_face crops it and returns a camera
    under which a render of the fitted face covers the crop's face (the face region, which the landmarks
    determine; the rest of the head's silhouette depends on identity modes the landmarks do not see)."""
    c, _ = _random_coeffs(model, 2, seed=5, yaw=0.5)
    res, focal = 400, 3.2
    verts = model.vertices(c.identity, c.expression)
    photo = render(model, verts, pose_to_camera(c.rotation, c.translation, focal=focal), res)
    lm = project_landmarks(model, c, res, focal=focal)
    est = estimate_face(photo.image, lm, model=model, size=128)
    assert est.image.shape == (2, 3, 128, 128) and est.camera.shape == (2, 25) and est.error.max() < 1.0
    again = render(model, model.vertices(est.coeffs.identity, est.coeffs.expression), est.camera, 128)
    crop_face = align_face(photo.regions["face"], lm, size=128, focal=cameras.FOCAL).image[:, 0] > 0.5
    fit_face = again.regions["face"][:, 0] > 0.5
    iou = (crop_face & fit_face).sum((1, 2)) / (crop_face | fit_face).sum((1, 2))
    assert iou.min() > 0.97
    # (How well the pose itself is recovered is the fitting tests' business: with identity and expression free,
    # landmarks alone leave some of the rotation to trade against the shape.)


def test_estimate_face_with_the_regressor_uses_its_pose(tmp_path):
    from test_face3d import write_bfm

    from oneshot.face3d import from_bfm

    write_bfm(tmp_path / "bfm.mat")
    bfm = from_bfm(tmp_path / "bfm.mat")
    net = ReconNet().eval()
    with torch.no_grad():
        net.final_layers[3].bias.copy_(torch.tensor([0.1, -0.2, 0.05]))  # angles
        net.final_layers[5].bias.copy_(torch.tensor([0.3, -0.1]))  # tx, ty
    std = standard_landmarks(bfm)
    lm = (std[None, :, :2] * torch.tensor([80.0, -80.0]) + 150).float()
    est = estimate_face(torch.rand(1, 3, 300, 300), lm, model=bfm, recon=net, size=64)
    assert est.error is None and est.image.shape == (1, 3, 64, 64)
    assert torch.allclose(est.coeffs.rotation, torch.tensor([[0.1, -0.2, 0.05]]))
    assert torch.allclose(est.camera, pose_to_camera(torch.tensor([[0.1, -0.2, 0.05]]), torch.tensor([[0.3, -0.1, 0.0]])))
    # RGB and a matte channel (what data prepare passes): the matte is cropped along, the regressor sees the RGB
    rgba = torch.cat([torch.rand(1, 3, 300, 300), torch.ones(1, 1, 300, 300)], 1)
    est4 = estimate_face(rgba, lm, model=bfm, recon=net, size=64)
    assert est4.image.shape == (1, 4, 64, 64) and torch.allclose(est4.image[:, 3:], torch.ones(1, 1, 64, 64))
    assert torch.equal(est4.image[:, :3], estimate_face(rgba[:, :3], lm, model=bfm, recon=net, size=64).image)
    with pytest.raises(ValueError, match=r"landmark fitting needs the 68 iBUG landmarks"):
        estimate_face(torch.rand(1, 3, 300, 300), lm, model=bfm, size=64)
