"""Tests of pipeline.core.geometry: Sim(3) fits, pose transforms, quaternions, ATE and RPE."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.core.geometry import (
    Sim3,
    ate,
    camera_centers,
    invert_pose,
    nearest_rotation,
    quat_wxyz_to_rotmat,
    quat_xyzw_to_rotmat,
    relative_pose,
    robust_sim3,
    rotation_angle_deg,
    rotmat_to_quat_wxyz,
    rotmat_to_quat_xyzw,
    rpe,
    umeyama_sim3,
)

KNOWN = Sim3(scale=2.5,
             rotation=Rotation.from_euler("zyx", [40, -25, 70], degrees=True).as_matrix(),
             translation=np.array([1.0, -3.0, 0.5]))


def _rotation_error_deg(a, b):
    return rotation_angle_deg(a.T @ b)


def _assert_sim3_close(a: Sim3, b: Sim3, tol: float):
    assert abs(a.scale - b.scale) <= tol * b.scale
    assert _rotation_error_deg(a.rotation, b.rotation) <= np.degrees(tol)
    np.testing.assert_allclose(a.translation, b.translation, atol=tol * 10, rtol=0)


def _random_poses(rng, n):
    """(n, 3, 4) camera-from-world poses along a wobbly arc, looking roughly at the origin."""
    rots = Rotation.from_euler("xyz", rng.uniform(-60, 60, size=(n, 3)), degrees=True).as_matrix()
    centres = np.stack([np.cos(np.linspace(0, 2, n)) * 4, np.sin(np.linspace(0, 2, n)) * 4,
                        rng.uniform(-0.5, 0.5, n)], axis=1)
    t = -np.einsum("nij,nj->ni", rots, centres)
    return np.concatenate([rots, t[..., None]], axis=2)


# ---- Sim3 ------------------------------------------------------------------------------------

def test_sim3_inverse_compose_matrix():
    pts = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(KNOWN.inverse().apply(KNOWN.apply(pts)), pts, atol=1e-12)
    np.testing.assert_allclose(KNOWN.compose(KNOWN.inverse()).as_matrix(), np.eye(4), atol=1e-12)
    other = Sim3(scale=0.3, rotation=Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix(),
                 translation=np.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(KNOWN.compose(other).apply(pts), KNOWN.apply(other.apply(pts)),
                               atol=1e-12)
    homog = np.c_[pts, np.ones(10)] @ KNOWN.as_matrix().T
    np.testing.assert_allclose(homog[:, :3], KNOWN.apply(pts), atol=1e-12)
    _assert_sim3_close(Sim3.from_matrix(KNOWN.as_matrix()), KNOWN, 1e-12)


def test_sim3_rejects_bad_values():
    with pytest.raises(ValueError, match="scale"):
        Sim3(scale=-1.0)
    with pytest.raises(ValueError, match="rotation"):
        Sim3(rotation=np.eye(4))


def test_transform_poses_keeps_projections_and_moves_centres():
    rng = np.random.default_rng(1)
    poses = _random_poses(rng, 6)
    points = rng.normal(size=(50, 3)) * 0.5  # near the origin, in front of the cameras
    new_poses = KNOWN.transform_poses(poses)
    new_points = KNOWN.apply(points)

    def project(p, x):
        cam = x @ p[:3, :3].T + p[:, 3]
        return cam[:, :2] / cam[:, 2:]

    for old, new in zip(poses, new_poses):
        np.testing.assert_allclose(project(new, new_points), project(old, points), atol=1e-10)
        np.testing.assert_allclose(new[:, :3] @ new[:, :3].T, np.eye(3), atol=1e-12)
        assert np.linalg.det(new[:, :3]) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(camera_centers(new_poses), KNOWN.apply(camera_centers(poses)),
                               atol=1e-12)
    # camera-frame depths scale by s: the rigid pose keeps metric consistency with the new world
    depth_old = (points @ poses[0, :, :3].T + poses[0, :, 3])[:, 2]
    depth_new = (new_points @ new_poses[0, :, :3].T + new_poses[0, :, 3])[:, 2]
    np.testing.assert_allclose(depth_new, KNOWN.scale * depth_old, rtol=1e-12)


# ---- Umeyama ---------------------------------------------------------------------------------

def test_umeyama_recovers_known_sim3_exactly():
    src = np.random.default_rng(2).normal(size=(20, 3))
    _assert_sim3_close(umeyama_sim3(src, KNOWN.apply(src)), KNOWN, 1e-9)


def test_umeyama_weighted_ignores_zero_weight_points():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(20, 3))
    dst = KNOWN.apply(src)
    dst[:5] += rng.normal(size=(5, 3)) * 10  # corrupt points that get weight 0
    weights = np.r_[np.zeros(5), rng.uniform(0.5, 2.0, 15)]
    _assert_sim3_close(umeyama_sim3(src, dst, weights), KNOWN, 1e-9)
    assert abs(umeyama_sim3(src, dst).scale - KNOWN.scale) > 1e-3  # the weights matter


def test_umeyama_without_scale_and_reflection_case():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(15, 3))
    rigid = Sim3(rotation=KNOWN.rotation, translation=KNOWN.translation)
    fit = umeyama_sim3(src, rigid.apply(src) * 1.0, with_scale=False)
    _assert_sim3_close(fit, rigid, 1e-9)
    # dst is a mirror image: the best *proper* rotation is returned, never a reflection
    mirrored = src * np.array([1.0, 1.0, -1.0])
    fit = umeyama_sim3(src, mirrored)
    assert np.linalg.det(fit.rotation) == pytest.approx(1.0, abs=1e-12)


def test_umeyama_collinear_points_still_align():
    src = np.outer(np.linspace(-1, 1, 7), [1.0, 2.0, 0.5])
    fit = umeyama_sim3(src, KNOWN.apply(src))
    np.testing.assert_allclose(fit.apply(src), KNOWN.apply(src), atol=1e-9)


@pytest.mark.parametrize("src, dst, weights, message", [
    (np.zeros((2, 3)), np.zeros((2, 3)), None, "at least 3"),
    (np.zeros((4, 3)), np.zeros((5, 3)), None, "shape"),
    (np.zeros((4, 2)), np.zeros((4, 2)), None, "shape"),
    (np.ones((4, 3)), np.arange(12.0).reshape(4, 3), None, "coincide"),
    (np.arange(12.0).reshape(4, 3), np.arange(12.0).reshape(4, 3), np.array([1, 1, 0, 0]),
     "positive weight"),
    (np.arange(12.0).reshape(4, 3), np.arange(12.0).reshape(4, 3), np.array([1, 1, -1, 1]),
     "non-negative"),
    (np.full((4, 3), np.nan), np.zeros((4, 3)), None, "finite"),
])
def test_umeyama_rejects_bad_input(src, dst, weights, message):
    with pytest.raises(ValueError, match=message):
        umeyama_sim3(src, dst, weights)


@pytest.mark.parametrize("loss", ["huber", "cauchy"])
def test_robust_sim3_rejects_gross_outliers(loss):
    rng = np.random.default_rng(5)
    n, n_out = 100, 20
    src = rng.uniform(-2, 2, size=(n, 3))
    dst = KNOWN.apply(src) + rng.normal(scale=1e-3, size=(n, 3))
    outliers = rng.choice(n, n_out, replace=False)
    dst[outliers] += rng.normal(size=(n_out, 3)) * 5 + np.array([8.0, -6.0, 4.0])

    plain = umeyama_sim3(src, dst)
    result = robust_sim3(src, dst, loss=loss, max_iters=50)
    assert _rotation_error_deg(plain.rotation, KNOWN.rotation) > 1.0
    assert abs(plain.scale / KNOWN.scale - 1) > 0.05
    assert _rotation_error_deg(result.sim3.rotation, KNOWN.rotation) < 0.01
    assert abs(result.sim3.scale / KNOWN.scale - 1) < 1e-3
    np.testing.assert_allclose(result.sim3.translation, KNOWN.translation, atol=5e-3)
    expected_inliers = np.ones(n, bool)
    expected_inliers[outliers] = False
    np.testing.assert_array_equal(result.inliers, expected_inliers)
    assert result.weights[outliers].max() < 0.01 and result.converged


def test_robust_sim3_options():
    src = np.random.default_rng(6).normal(size=(10, 3))
    result = robust_sim3(src, KNOWN.apply(src), scale_param=0.1, loss="cauchy")
    _assert_sim3_close(result.sim3, KNOWN, 1e-9)
    assert result.scale_param == 0.1 and result.inliers.all()
    with pytest.raises(ValueError, match="loss"):
        robust_sim3(src, src, loss="l1")
    with pytest.raises(ValueError, match="scale_param"):
        robust_sim3(src, src, scale_param=0.0)


# ---- pose helpers ----------------------------------------------------------------------------

def test_quaternion_round_trips_and_orders():
    rots = Rotation.random(20, random_state=7).as_matrix()
    q_xyzw = rotmat_to_quat_xyzw(rots)
    assert (q_xyzw[:, 3] >= 0).all()
    np.testing.assert_allclose(quat_xyzw_to_rotmat(q_xyzw), rots, atol=1e-12)
    q_wxyz = rotmat_to_quat_wxyz(rots)
    np.testing.assert_allclose(q_wxyz[:, 0], q_xyzw[:, 3])
    np.testing.assert_allclose(quat_wxyz_to_rotmat(q_wxyz), rots, atol=1e-12)
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45)
    rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(rotmat_to_quat_xyzw(rz), [0, 0, np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(rotmat_to_quat_wxyz(rz), [np.sqrt(0.5), 0, 0, np.sqrt(0.5)])
    with pytest.raises(ValueError, match="non-zero"):
        quat_xyzw_to_rotmat(np.zeros(4))


def test_rotation_angle_is_accurate_for_tiny_and_large_angles():
    for angle in (1e-9, 1e-4, 30.0, 179.9999, 180.0):
        r = Rotation.from_rotvec(np.radians(angle) * np.array([0.6, 0.0, 0.8])).as_matrix()
        assert rotation_angle_deg(r) == pytest.approx(angle, rel=1e-6, abs=1e-12)
    assert rotation_angle_deg(np.eye(3)) == 0.0


def test_centres_relative_pose_and_inverse():
    poses = _random_poses(np.random.default_rng(8), 4)
    c = camera_centers(poses)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", poses[:, :, :3], c) + poses[:, :, 3], 0,
                               atol=1e-12)
    rel = relative_pose(poses[0], poses[1])
    x_world = np.array([0.3, -0.2, 1.0])
    x_a = poses[0, :, :3] @ x_world + poses[0, :, 3]
    x_b = poses[1, :, :3] @ x_world + poses[1, :, 3]
    np.testing.assert_allclose(rel[:, :3] @ x_a + rel[:, 3], x_b, atol=1e-12)
    assert np.linalg.norm(rel[:, 3]) == pytest.approx(np.linalg.norm(c[1] - c[0]))
    np.testing.assert_allclose(invert_pose(invert_pose(poses)), poses, atol=1e-12)
    noisy = poses[0, :, :3] + 1e-3 * np.random.default_rng(9).normal(size=(3, 3))
    fixed = nearest_rotation(noisy)
    np.testing.assert_allclose(fixed @ fixed.T, np.eye(3), atol=1e-12)


# ---- ATE / RPE -------------------------------------------------------------------------------

def test_ate_zero_for_similar_copy_and_known_for_perturbation():
    rng = np.random.default_rng(10)
    gt = _random_poses(rng, 12)
    pred = KNOWN.inverse().transform_poses(gt)  # the same trajectory in another world frame
    res = ate(camera_centers(pred), camera_centers(gt))
    assert res.rmse < 1e-9 and res.max < 1e-9
    _assert_sim3_close(res.alignment, KNOWN, 1e-9)
    # perturb the GT centres with zero-mean offsets orthogonal to everything else: with
    # align="none" the error is exactly the offset norm
    c = camera_centers(gt)
    offsets = np.zeros_like(c)
    offsets[::2, 2] = 0.1
    offsets[1::2, 2] = -0.1
    res = ate(c + offsets, c, align="none")
    assert res.rmse == pytest.approx(0.1, abs=1e-12) and res.max == pytest.approx(0.1)
    assert res.extent == pytest.approx(np.linalg.norm(c.max(0) - c.min(0)))
    assert res.rmse_fraction == pytest.approx(0.1 / res.extent)


def test_ate_known_value_after_sim3_alignment():
    # unit square in the plane z=0; the prediction lifts alternate corners by +-h (a twist no
    # rotation or translation can undo). Rigid alignment leaves exactly h per frame. A similarity
    # also shrinks the prediction: with a = 0.5 (mean squared distance of the corners to their
    # centroid) the optimum is s = a / (a + h^2), leaving h * sqrt(a / (a + h^2)) per frame.
    gt = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    h, a = 0.05, 0.5
    pred = gt + np.array([[0, 0, h], [0, 0, -h], [0, 0, h], [0, 0, -h]])
    res = ate(KNOWN.apply(pred), gt, align="sim3")
    np.testing.assert_allclose(res.errors, h * np.sqrt(a / (a + h * h)), rtol=1e-9)
    assert res.rmse == pytest.approx(h * np.sqrt(a / (a + h * h)), rel=1e-9)
    assert res.alignment.scale == pytest.approx(a / (a + h * h) / KNOWN.scale, rel=1e-9)
    se3 = ate(pred, gt, align="se3")
    np.testing.assert_allclose(se3.errors, h, rtol=1e-9)
    assert se3.alignment.scale == 1.0
    with pytest.raises(ValueError, match="align"):
        ate(pred, gt, align="affine")


def test_rpe_zero_for_similar_copy_and_known_perturbation():
    rng = np.random.default_rng(11)
    gt = _random_poses(rng, 10)
    pred = KNOWN.transform_poses(gt)
    res = rpe(pred, gt, delta=2)
    assert len(res.trans_errors) == 8
    assert res.trans["max"] < 1e-9 and res.rot["max"] < 1e-7
    assert res.scale == pytest.approx(1 / KNOWN.scale, rel=1e-9)
    # rotate camera 5 about its own centre by 3 degrees: two pairs see 3 degrees of error
    bumped = gt.copy()
    extra = Rotation.from_rotvec(np.radians(3.0) * np.array([0.0, 1.0, 0.0])).as_matrix()
    centre = camera_centers(gt[5])
    bumped[5, :, :3] = extra @ gt[5, :, :3]
    bumped[5, :, 3] = -bumped[5, :, :3] @ centre
    res = rpe(bumped, gt, delta=1, scale=1.0)
    np.testing.assert_allclose(res.rot_errors_deg[[4, 5]], 3.0, rtol=1e-9)
    assert np.delete(res.rot_errors_deg, [4, 5]).max() < 1e-7
    # translation of cam_b_from_cam_a is -R_b (c_b - c_a): only pair (4, 5), where camera 5 is
    # the target, sees its baseline vector v rotated by 3 degrees about the camera y axis, an
    # error of 2 |v_xz| sin(1.5 deg) (v_xz: the part of v orthogonal to the axis)
    v = gt[5, :, :3] @ (centre - camera_centers(gt[4]))
    expected = 2 * np.linalg.norm(v[[0, 2]]) * np.sin(np.radians(1.5))
    assert res.trans_errors[4] == pytest.approx(expected, rel=1e-9)
    assert res.trans_errors[5] < 1e-9
    with pytest.raises(ValueError, match="delta"):
        rpe(gt, gt, delta=10)
