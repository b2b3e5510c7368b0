"""Pose encoding <-> extrinsics/intrinsics and depth -> world points against synthetic ground
truth."""

import math

import numpy as np
import torch

from pipeline.algo.models import (
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    pose_encoding_to_extri_intri,
)
from pipeline.algo.models.camera import matrix_to_quaternion, quaternion_to_matrix


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_quaternion_of_known_rotations():
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45)
    q = matrix_to_quaternion(torch.tensor(_rotation([0, 0, 1], math.pi / 2), dtype=torch.float64))
    assert torch.allclose(
        q, torch.tensor([0, 0, math.sqrt(0.5), math.sqrt(0.5)], dtype=torch.float64), atol=1e-12
    )
    R = quaternion_to_matrix(
        torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    )  # 180 deg about x
    assert torch.allclose(R, torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)))


def test_quaternion_round_trip_including_near_180_degrees():
    gen = np.random.default_rng(0)
    mats = [_rotation(gen.normal(size=3), a) for a in np.linspace(0.0, math.pi, 9)]
    R = torch.tensor(np.stack(mats))
    q = matrix_to_quaternion(R)
    assert torch.allclose(q.norm(dim=-1), torch.ones(9, dtype=R.dtype))
    assert (q[:, 3] >= 0).all()
    assert torch.allclose(quaternion_to_matrix(q), R, atol=1e-10)


def test_pose_encoding_round_trip_and_intrinsics():
    h, w = 294, 392
    R = torch.tensor(_rotation([0.3, -1.0, 0.2], 0.7), dtype=torch.float32)
    t = torch.tensor([0.5, -0.2, 1.5])
    extr = torch.cat([R, t[:, None]], dim=1)[None, None]
    K = torch.tensor([[300.0, 0.0, w / 2], [0.0, 310.0, h / 2], [0.0, 0.0, 1.0]])[None, None]
    enc = extri_intri_to_pose_encoding(extr, K, (h, w))
    assert enc.shape == (1, 1, 9)
    assert math.isclose(float(enc[0, 0, 7]), 2 * math.atan(h / 2 / 310.0), rel_tol=1e-6)
    extr2, K2 = pose_encoding_to_extri_intri(enc, (h, w))
    assert torch.allclose(extr2, extr, atol=1e-5)
    assert torch.allclose(K2, K, atol=1e-3)
    assert pose_encoding_to_extri_intri(enc, (h, w), build_intrinsics=False)[1] is None


def test_depth_to_world_points_reprojects_onto_the_depth_pixels():
    h, w = 6, 8
    K = np.array([[10.0, 0, w / 2], [0, 12.0, h / 2], [0, 0, 1]])
    R = _rotation([1.0, 2.0, 0.5], 0.4)
    t = np.array([0.3, -0.1, 2.0])
    extr = np.concatenate([R, t[:, None]], axis=1)
    depth = 1.0 + np.random.default_rng(1).random((1, h, w, 1))
    pts = depth_to_world_points(depth, extr[None], K[None])
    assert pts.shape == (1, h, w, 3) and pts.dtype == np.float32
    cam = pts[0].reshape(-1, 3).astype(np.float64) @ R.T + t  # back to the camera
    assert np.allclose(cam[:, 2], depth.reshape(-1), atol=1e-5)
    uv = cam @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    v, u = np.mgrid[0:h, 0:w]
    assert np.allclose(
        uv, np.stack([u.ravel(), v.ravel()], -1), atol=1e-4
    )  # reference: pixel (i, j) at (j, i)
    shifted = depth_to_world_points(
        torch.from_numpy(depth),
        torch.from_numpy(extr[None]),
        torch.from_numpy(K[None]),
        pixel_center=0.5,
    )
    uv = (shifted[0].reshape(-1, 3).astype(np.float64) @ R.T + t) @ K.T
    assert np.allclose(uv[:, :2] / uv[:, 2:], np.stack([u.ravel(), v.ravel()], -1) + 0.5, atol=1e-4)


def test_identity_camera_plane():
    K = np.array([[2.0, 0, 2.0], [0, 2.0, 2.0], [0, 0, 1]])
    pts = depth_to_world_points(np.full((1, 4, 4), 3.0), np.eye(3, 4)[None], K[None])
    assert np.allclose(pts[0, :, :, 2], 3.0)
    assert np.allclose(pts[0, 0, 0], [-3.0, -3.0, 3.0])
