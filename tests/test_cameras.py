"""Cameras and rays (oneshot.cameras) against values computed by hand from the EG3D conventions."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_close
from oneshot import cameras as cam

F64 = torch.float64


def test_frontal_camera_by_hand():
    # At (0, 0, 2.7) looking at (0, 0, 0.2): forward = -z, right = +x, down = -y (OpenCV axes in a y-up world).
    want = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]], dtype=F64)
    assert_close(cam.look_at(0.0, 0.0, dtype=F64)[0], want, atol=1e-12)
    label = cam.frontal_label(dtype=F64)
    assert label.shape == (1, 25)
    assert_close(label[0, 16:], torch.tensor([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1], dtype=F64), atol=1e-12)


def test_focal_and_field_of_view():
    # EG3D's formula with its own constants: 18.837 degrees -> 4.2634 (the labels carry 4.2647).
    assert cam.fov_to_focal(18.837) == pytest.approx(1 / (math.tan(18.837 * 3.14159 / 360) * 1.414))
    assert cam.fov_to_focal(18.837) == pytest.approx(4.2634, abs=1e-4)
    assert cam.focal_to_fov(cam.fov_to_focal(30.0)) == pytest.approx(30.0)


def test_look_at_yaw_moves_the_camera_to_plus_x_and_keeps_looking_at_the_pivot():
    yaw = 0.4
    c2w = cam.look_at(yaw, 0.0, dtype=F64)[0]
    origin = c2w[:3, 3]
    assert_close(origin, torch.tensor([2.7 * math.sin(yaw), 0.0, 2.7 * math.cos(yaw)], dtype=F64), atol=1e-12)
    forward = c2w[:3, 2]
    to_pivot = torch.tensor(cam.PIVOT, dtype=F64) - origin
    assert_close(forward, to_pivot / to_pivot.norm(), atol=1e-12)
    assert_close(c2w[:3, :3].T @ c2w[:3, :3], torch.eye(3, dtype=F64), atol=1e-12)
    assert c2w[1, 1] < 0 and abs(float(c2w[1, 0])) < 1e-12  # no roll: camera y points down, x stays level


def test_look_at_pitch_uses_eg3ds_parameterisation():
    pitch = 0.2
    c2w = cam.look_at(0.0, pitch, dtype=F64)[0]
    phi = math.acos(-2 * pitch / math.pi)
    assert_close(c2w[:3, 3], torch.tensor([0.0, 2.7 * math.cos(phi), 2.7 * math.sin(phi)], dtype=F64), atol=1e-12)
    assert c2w[1, 3] < 0  # positive pitch: below the head


def test_batched_angles_and_errors():
    c2w = cam.look_at(torch.tensor([0.0, 0.1, -0.1]), 0.05)
    assert c2w.shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"yaw and pitch must have the same number of values, got 2 and 3"):
        cam.look_at([0.0, 0.1], [0.0, 0.1, 0.2])
    with pytest.raises(ValueError, match=r"radius must be a positive number"):
        cam.look_at(0.0, 0.0, radius=0)
    with pytest.raises(ValueError, match=r"yaw must be finite"):
        cam.look_at(float("nan"), 0.0)


def test_label_round_trip_and_validation():
    labels = cam.orbit_labels(5)
    c2w, intr = cam.split_label(labels)
    assert torch.equal(cam.camera_label(c2w, intr), labels)
    with pytest.raises(ValueError, match=r"camera label must be \[B, 25\] or \[25\].*got \[2, 24\]"):
        cam.split_label(torch.zeros(2, 24))
    bad = labels.clone()
    bad[0, 0] = 2.0  # not a rotation
    with pytest.raises(ValueError, match=r"cam2world must be a rigid transform"):
        cam.split_label(bad)
    bad = labels.clone()
    bad[0, 16] = -1.0
    with pytest.raises(ValueError, match=r"intrinsics must be"):
        cam.split_label(bad)


def test_rays_by_hand():
    c2w = cam.look_at(0.0, 0.0, dtype=F64)
    intr = cam.intrinsics(dtype=F64)
    origins, dirs = cam.rays(c2w, intr, 2)
    assert origins.shape == dirs.shape == (1, 4, 3)
    assert_close(origins[0], torch.tensor([[0, 0, 2.7]] * 4, dtype=F64), atol=1e-12)
    # Pixel (0, 0): image (0.25, 0.25) -> camera (-0.25 / f, -0.25 / f, 1) -> world (-0.25 / f, +0.25 / f, -1):
    # the top-left pixel looks left (-x) and up (+y).
    f = cam.FOCAL
    d = torch.tensor([-0.25 / f, 0.25 / f, -1.0], dtype=F64)
    assert_close(dirs[0, 0], d / d.norm(), atol=1e-12)
    # Row-major: ray 1 is pixel (0, 1), to the right.
    d = torch.tensor([0.25 / f, 0.25 / f, -1.0], dtype=F64)
    assert_close(dirs[0, 1], d / d.norm(), atol=1e-12)
    assert_close(dirs.norm(dim=-1), torch.ones(1, 4, dtype=F64), atol=1e-12)


def test_rays_non_square_and_centre_ray():
    c2w = cam.look_at(0.3, -0.1, dtype=F64)
    origins, dirs = cam.rays(c2w, cam.intrinsics(dtype=F64), (3, 5))
    assert dirs.shape == (1, 15, 3)
    # The centre pixel (1, 2) of a 3 x 5 image looks along the camera's forward axis.
    assert_close(dirs[0, 1 * 5 + 2], c2w[0, :3, 2], atol=1e-12)


def test_project_inverts_rays():
    c2w = cam.look_at(torch.tensor([0.2, -0.3]), torch.tensor([0.1, 0.0]), dtype=F64)
    intr = cam.intrinsics(dtype=F64)
    origins, dirs = cam.rays(c2w, intr, (4, 6))
    depth = torch.linspace(2.0, 3.0, 24, dtype=F64)
    pts = origins + dirs * depth[None, :, None]
    uv, z = cam.project(pts, c2w, intr, (4, 6))
    i, j = torch.meshgrid(torch.arange(4, dtype=F64), torch.arange(6, dtype=F64), indexing="ij")
    want = torch.stack([j.reshape(-1) + 0.5, i.reshape(-1) + 0.5], dim=-1).expand(2, 24, 2)
    assert_close(uv, want, atol=1e-9)
    assert (z > 0).all()


def test_orbit_labels_look_at_their_pivot():
    pivot = (0.0, 0.05, -0.15)
    c2w, _ = cam.split_label(cam.orbit_labels(8, pivot=pivot))
    origin, forward = c2w[:, :3, 3], c2w[:, :3, 2]
    to_pivot = torch.tensor(pivot) - origin
    to_pivot = to_pivot / to_pivot.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(forward, to_pivot)  # every camera's axis goes through the pivot
    torch.testing.assert_close(origin.norm(dim=-1), torch.full((8,), 2.7))  # on EG3D's orbit about the origin
    assert torch.equal(cam.orbit_labels(8), cam.orbit_labels(8, pivot=cam.PIVOT))
    assert not torch.equal(cam.orbit_labels(8), cam.orbit_labels(8, pivot=pivot))
