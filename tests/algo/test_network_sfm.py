"""Tests of the SfM stage (pipeline/sfm.py) against an oracle built from the synthetic ground truth.

The oracle exists only here: its "predictions" are the ground-truth cameras of testdata's first
frames, perturbed (rotation, translation, focal length), and its "tracks" are ground-truth 3D
points (back-projected from the ground-truth depth at a few query frames) projected into every
frame with the ground-truth cameras, with pixel noise, visibility from a depth test, and a few
gross outliers. Every random draw is seeded.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from scipy.spatial.transform import Rotation

from conftest import TESTDATA
from pipeline.algo.network_sfm import (
    SfmOptions,
    Tracks,
    WindowPredictions,
    build_reconstruction,
    bundle_adjust,
    points_from_depth,
    run_sfm,
    write_sfm_result,
)
from pipeline.core.geometry import (
    ate,
    camera_centers,
    compose_poses,
    invert_pose,
    relative_pose,
    rotation_angle_deg,
)
from pipeline.io.synthetic import load_ground_truth, load_images

NUM_FRAMES = 8
CAMERA_CASES = [(t, s) for t in ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL")
                for s in (False, True)]


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------

class Oracle:
    """Ground truth of the first frames (world = frame 0's camera) and noisy predictions."""

    def __init__(self, *, seed: int = 0, rot_deg: float = 1.5, trans_frac: float = 0.03,
                 focal_err: float = 0.03, pix_noise: float = 0.5, outlier_frac: float = 0.03,
                 points_per_query: int = 500, query_frames: tuple[int, ...] = (0, 3, 6)) -> None:
        gt = load_ground_truth(TESTDATA)
        self.rng = np.random.default_rng(seed)
        self.K = gt.K
        self.size = np.array([gt.width, gt.height])
        self.names = list(gt.names[:NUM_FRAMES])
        self.depth = gt.depth[:NUM_FRAMES].astype(np.float64)
        poses = gt.cam_from_world[:NUM_FRAMES]
        self.poses = compose_poses(poses, invert_pose(poses[0]))  # world = frame 0's camera
        self.points = self._sample_points(points_per_query, query_frames)
        self.query = np.repeat(query_frames, points_per_query)
        self.xy_true, self.visible = self._project(self.points)
        self.pred_poses = self._perturb_poses(rot_deg, trans_frac)
        self.pred_K = self.K.copy()
        self.pred_K[0, 0] *= 1 + focal_err
        self.pred_K[1, 1] *= 1 + focal_err
        self.xy, self.vis, self.outlier = self._noisy_tracks(pix_noise, outlier_frac)

    def unproject(self, frame: int, col: np.ndarray, row: np.ndarray) -> np.ndarray:
        """World points of GT depth pixels (col, row) of ``frame`` (COLMAP pixel centres)."""
        rays = np.c_[col + 0.5, row + 0.5, np.ones(len(col))] @ np.linalg.inv(self.K).T
        cam = rays * self.depth[frame, row, col][:, None]
        pose = self.poses[frame]
        return (cam - pose[:, 3]) @ pose[:, :3]

    def _sample_points(self, count: int, query_frames: tuple[int, ...]) -> np.ndarray:
        w, h = self.size
        out = []
        for q in query_frames:
            col = self.rng.integers(4, w - 4, count)
            row = self.rng.integers(4, h - 4, count)
            out.append(self.unproject(q, col, row))
        return np.concatenate(out)

    def _project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S, N, 2) GT pixels and (S, N) visibility from a depth test against the GT depth."""
        s, n = len(self.poses), len(points)
        xy, visible = np.zeros((s, n, 2)), np.zeros((s, n), bool)
        for i, pose in enumerate(self.poses):
            cam = points @ pose[:, :3].T + pose[:, 3]
            xy[i] = (cam[:, :2] / cam[:, 2:]) * self.K[[0, 1], [0, 1]] + self.K[:2, 2]
            inside = (cam[:, 2] > 0) & (xy[i] >= 0.5).all(1) & (xy[i] < self.size - 0.5).all(1)
            col = np.clip(xy[i, :, 0].astype(int), 0, self.size[0] - 1)
            row = np.clip(xy[i, :, 1].astype(int), 0, self.size[1] - 1)
            visible[i] = inside & (np.abs(self.depth[i, row, col] - cam[:, 2])
                                   < 0.02 * cam[:, 2])
        return xy, visible

    def _perturb_poses(self, rot_deg: float, trans_frac: float) -> np.ndarray:
        centres = camera_centers(self.poses)
        extent = np.linalg.norm(np.ptp(centres, axis=0))
        out = self.poses.copy()
        for i in range(1, len(out)):  # frame 0 is the world: predicted exactly
            axis = self.rng.normal(size=3)
            rot = Rotation.from_rotvec(np.radians(rot_deg) * axis / np.linalg.norm(axis))
            r_new = rot.as_matrix() @ self.poses[i, :, :3]
            c_new = centres[i] + trans_frac * extent * self.rng.normal(size=3) / np.sqrt(3)
            out[i] = np.c_[r_new, -r_new @ c_new]
        return out

    def _noisy_tracks(self, pix_noise: float, outlier_frac: float):
        xy = self.xy_true + self.rng.normal(scale=pix_noise, size=self.xy_true.shape)
        outlier = self.visible & (self.rng.random(self.visible.shape) < outlier_frac)
        angle = self.rng.uniform(0, 2 * np.pi, outlier.sum())
        radius = self.rng.uniform(20, 60, outlier.sum())
        xy[outlier] += np.c_[np.cos(angle), np.sin(angle)] * radius[:, None]
        xy = np.clip(xy, 0, self.size - 1e-3)
        vis = np.where(self.visible, self.rng.uniform(0.6, 1.0, self.visible.shape),
                       self.rng.uniform(0.0, 0.15, self.visible.shape))
        return xy, vis, outlier

    def predictions(self, **kwargs) -> WindowPredictions:
        s = len(self.names)
        return WindowPredictions(names=self.names, image_sizes=np.tile(self.size, (s, 1)),
                                 cam_from_world=self.pred_poses,
                                 intrinsics=np.tile(self.pred_K, (s, 1, 1)), **kwargs)

    def tracks(self, **kwargs) -> Tracks:
        return Tracks(xy=self.xy, visibility=self.vis, query_frame=self.query, **kwargs)


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle()


def pose_errors(poses: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(centre RMSE after Sim(3) alignment / path extent, mean relative rotation error in deg
    over all frame pairs)."""
    centre = ate(camera_centers(poses), camera_centers(gt)).rmse_fraction
    rot = [rotation_angle_deg(relative_pose(poses[i], poses[j])[:, :3]
                              @ relative_pose(gt[i], gt[j])[:, :3].T)
           for i, j in itertools.combinations(range(len(gt)), 2)]
    return float(centre), float(np.mean(rot))


def model_poses(rec: pycolmap.Reconstruction, s: int) -> np.ndarray:
    return np.stack([rec.images[i + 1].cam_from_world().matrix() for i in range(s)])


def observation_mask(rec: pycolmap.Reconstruction, candidate: np.ndarray) -> np.ndarray:
    """(S, N) bool: observations attached to a point (keypoints are the candidates in track
    order, as pipeline.algo.network_sfm lays them out)."""
    mask = np.zeros(candidate.shape, bool)
    for i in range(len(candidate)):
        tracks_of_kp = np.flatnonzero(candidate[i])
        image = rec.images[i + 1]
        assert image.num_points2D() == len(tracks_of_kp)
        for idx in image.get_observation_point2D_idxs():
            mask[i, tracks_of_kp[idx]] = True
    return mask


# --------------------------------------------------------------------------------------------
# Bundle adjustment
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("camera_type,shared", CAMERA_CASES)
def test_ba_reduces_reprojection_and_pose_error(oracle: Oracle, camera_type: str,
                                                shared: bool) -> None:
    options = SfmOptions(camera_type=camera_type, shared_camera=shared)
    result = run_sfm(oracle.predictions(), oracle.tracks(), options)
    rec = result.reconstruction
    centre_before, rot_before = pose_errors(oracle.pred_poses, oracle.poses)
    centre_after, rot_after = pose_errors(model_poses(rec, NUM_FRAMES), oracle.poses)
    print(f"{camera_type} shared={shared}: reprojection {result.error_before:.2f} -> "
          f"{result.error_after:.3f} px, centre {centre_before:.4f} -> {centre_after:.5f} of the "
          f"path, relative rotation {rot_before:.3f} -> {rot_after:.4f} deg, "
          f"{result.timings['ba']:.2f} s")
    assert result.flagged_frames == {}
    assert result.registered_frames == oracle.names
    assert result.error_before > 3.0  # the perturbation is visible
    assert result.error_after < 0.75  # ~ the 0.5 px noise (mean norm of 2D noise: 0.63 px)
    assert centre_after < centre_before / 5
    assert rot_after < rot_before / 5
    assert len(rec.cameras) == (1 if shared else NUM_FRAMES)
    assert all(c.model_name == camera_type for c in rec.cameras.values())
    assert np.allclose(rec.images[1].cam_from_world().matrix(), np.eye(3, 4), atol=1e-6)
    # most of the inliers are kept, and hardly any gross outlier
    cand = oracle.vis >= options.vis_thresh
    kept = observation_mask(rec, cand)
    assert kept[oracle.visible & ~oracle.outlier].mean() > 0.9
    assert kept[oracle.outlier].mean() < 0.1


def test_filtering_drops_low_visibility_and_large_errors() -> None:
    """Exact cameras and points: what survives is decided by the thresholds alone."""
    o = Oracle(seed=1, rot_deg=0.0, trans_frac=0.0, focal_err=0.0)
    options = SfmOptions(vis_thresh=0.8, max_reproj_error=1.0)
    rec = build_reconstruction(o.predictions(), o.tracks(points3D=o.points), options)
    cand = o.vis >= 0.8
    for i in range(NUM_FRAMES):  # keypoints: exactly the candidates
        assert rec.images[i + 1].num_points2D() == cand[i].sum()
    err = np.linalg.norm(o.xy - o.xy_true, axis=2)
    expected = cand & (err <= 1.0)
    long = expected.sum(axis=0) >= 2  # tracks keeping their given point
    kept = observation_mask(rec, cand)
    assert (kept & ~cand).sum() == 0  # nothing below vis_thresh
    assert np.array_equal(kept[:, long], expected[:, long])
    # the others were re-triangulated from their candidates (checked by the error bound below)
    assert kept[:, ~long].sum() < 0.05 * kept.sum()
    rec.update_point_3d_errors()
    errors = [np.linalg.norm(rec.images[el.image_id].project_point(p.xyz)
                             - rec.images[el.image_id].points2D[el.point2D_idx].xy)
              for p in rec.points3D.values() for el in p.track.elements]
    assert max(errors) <= 1.0 + 1e-9
    assert rec.compute_num_observations() == kept.sum()
    assert 0.6 * cand.sum() < kept.sum() < 0.9 * cand.sum()  # both thresholds bite


def test_weak_frame_keeps_predicted_pose_and_is_flagged(oracle: Oracle) -> None:
    weak = 5
    vis = oracle.vis.copy()
    vis[weak, 5:] = 0.0  # frame 5 sees at most 5 tracks
    tracks = Tracks(xy=oracle.xy, visibility=vis, query_frame=oracle.query)
    result = run_sfm(oracle.predictions(), tracks, SfmOptions())
    assert list(result.flagged_frames) == [oracle.names[weak]]
    assert "min_inlier_tracks" in result.flagged_frames[oracle.names[weak]]
    poses = model_poses(result.reconstruction, NUM_FRAMES)
    assert np.allclose(poses[weak], oracle.pred_poses[weak], atol=1e-9)
    others = [i for i in range(NUM_FRAMES) if i != weak]
    before = pose_errors(oracle.pred_poses[others], oracle.poses[others])
    after = pose_errors(poses[others], oracle.poses[others])
    assert after[0] < before[0] / 5 and after[1] < before[1] / 5
    assert result.error_after < 0.75


def test_depth_initialised_points(oracle: Oracle) -> None:
    """Without initial points, tracks start from the (predicted) depth at their query frame."""
    preds = oracle.predictions(depth=oracle.depth)
    rec = build_reconstruction(preds, oracle.tracks(), SfmOptions())
    assert rec.num_points3D() > 0.9 * len(oracle.points)
    report = bundle_adjust(rec, SfmOptions(), tracks=oracle.tracks())
    assert report.final_error < 0.75 < report.initial_error
    after = pose_errors(model_poses(rec, NUM_FRAMES), oracle.poses)
    assert after[1] < pose_errors(oracle.pred_poses, oracle.poses)[1] / 5


def test_output_is_in_original_pixels_colmap_convention() -> None:
    """Exact predicted intrinsics kept fixed, noisy poses adjusted: GT points must project onto
    their GT pixels (a short window leaves focal length and depth ambiguous, hence fixed)."""
    oracle = Oracle(seed=2, focal_err=0.0)
    options = SfmOptions(camera_type="PINHOLE", shared_camera=True)
    options.ba_options.refine_focal_length = False
    rec = run_sfm(oracle.predictions(), oracle.tracks(), options).reconstruction
    assert {(c.width, c.height) for c in rec.cameras.values()} == {(320, 240)}
    assert np.allclose(rec.cameras[1].params, oracle.K[[0, 1, 0, 1], [0, 1, 2, 2]])
    poses = model_poses(rec, NUM_FRAMES)
    # both worlds are frame 0's camera: they differ by a scale only
    scale = (np.linalg.norm(camera_centers(poses), axis=1).sum()
             / np.linalg.norm(camera_centers(oracle.poses), axis=1).sum())
    points = scale * oracle.points
    errors = []
    for i in range(NUM_FRAMES):
        vis = oracle.visible[i]
        proj = rec.cameras[rec.images[i + 1].camera_id].img_from_cam(
            points[vis] @ poses[i, :, :3].T + poses[i, :, 3])
        errors.append(np.linalg.norm(proj - oracle.xy_true[i, vis], axis=1))
    errors = np.concatenate(errors)
    print(f"GT points -> GT pixels: median {np.median(errors):.3f} px, "
          f"p95 {np.percentile(errors, 95):.3f} px")
    assert np.median(errors) < 0.35  # a half-pixel convention slip would give >= 0.5
    assert np.percentile(errors, 95) < 0.8


# --------------------------------------------------------------------------------------------
# Without BA: points from depth
# --------------------------------------------------------------------------------------------

def test_points_from_depth_threshold_cap_and_round_trip(oracle: Oracle, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    conf = rng.uniform(0, 10, oracle.depth.shape)
    colors = load_images(TESTDATA, oracle.names)
    preds = oracle.predictions(depth=oracle.depth, depth_conf=conf, colors=colors)
    options = SfmOptions(use_ba=False, conf_thres_value=5.0, max_points=10**9)
    assert points_from_depth(preds, options).num_points3D() == (conf >= 5.0).sum()
    capped = replace(options, max_points=5000)
    result = run_sfm(preds, None, capped)
    assert result.num_points3D == 5000
    write_sfm_result(result, tmp_path / "sparse")
    back = pycolmap.Reconstruction(tmp_path / "sparse")
    assert back.num_points3D() == 5000 and back.num_images() == NUM_FRAMES
    assert (tmp_path / "sparse" / "points.ply").stat().st_size > 5000 * 15
    assert np.allclose(back.images[1].cam_from_world().matrix(), np.eye(3, 4), atol=1e-6)
    assert [back.images[i + 1].name for i in range(NUM_FRAMES)] == oracle.names
    assert any(p.color.any() for p in back.points3D.values())
    # each point is seen by the frame its depth came from, exactly where it projects
    observed = {back.images[i + 1].name: back.images[i + 1].num_points3D
                for i in range(NUM_FRAMES)}
    assert sum(observed.values()) == 5000 and min(observed.values()) > 0
    assert back.compute_mean_reprojection_error() < 1e-6
    for point in list(back.points3D.values())[:50]:
        [element] = point.track.elements
        assert 0 < element.image_id <= NUM_FRAMES


def test_points_from_depth_lands_on_pixel_centres(oracle: Oracle) -> None:
    """Points of frame 0 (world = its camera) project back onto pixel centres at their depth."""
    conf = np.zeros(oracle.depth.shape)
    conf[0, 100:110, 200:220] = 10.0
    preds = WindowPredictions(names=oracle.names, image_sizes=np.tile(oracle.size, (8, 1)),
                              cam_from_world=oracle.poses,
                              intrinsics=np.tile(oracle.K, (8, 1, 1)), depth=oracle.depth,
                              depth_conf=conf)
    rec = points_from_depth(preds, SfmOptions(use_ba=False, camera_type="PINHOLE"))
    xyz = np.array([p.xyz for p in rec.points3D.values()])
    assert len(xyz) == 200
    pix = xyz[:, :2] / xyz[:, 2:] * oracle.K[[0, 1], [0, 1]] + oracle.K[:2, 2]
    assert np.allclose(np.sort(np.unique(np.round(pix[:, 0] - 0.5, 6))), np.arange(200, 220))
    assert np.allclose(np.sort(np.unique(np.round(pix[:, 1] - 0.5, 6))), np.arange(100, 110))
    col, row = (pix - 0.5).round().astype(int).T
    assert np.allclose(xyz[:, 2], oracle.depth[0, row, col], rtol=1e-9)


def test_predictions_are_reanchored_on_the_first_frame(oracle: Oracle) -> None:
    """Poses given in another world (e.g. the room's) come out with frame 0 at the identity."""
    gt = load_ground_truth(TESTDATA)
    preds = WindowPredictions(names=oracle.names, image_sizes=np.tile(oracle.size, (8, 1)),
                              cam_from_world=gt.cam_from_world[:NUM_FRAMES],
                              intrinsics=np.tile(oracle.K, (8, 1, 1)),
                              depth=oracle.depth)
    rec = points_from_depth(preds, SfmOptions(use_ba=False, max_points=1000))
    assert np.allclose(model_poses(rec, NUM_FRAMES), oracle.poses, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------

def test_invalid_inputs_raise_value_error(oracle: Oracle) -> None:
    with pytest.raises(ValueError, match="camera_type"):
        SfmOptions(camera_type="OPENCV")
    with pytest.raises(ValueError, match="intrinsics"):
        WindowPredictions(names=["a", "b"], image_sizes=[[320, 240]] * 2,
                          cam_from_world=np.tile(np.eye(3, 4), (2, 1, 1)),
                          intrinsics=np.eye(3)[None])
    with pytest.raises(ValueError, match="visibility"):
        Tracks(xy=np.zeros((2, 5, 2)), visibility=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="tracks"):
        run_sfm(oracle.predictions(), None, SfmOptions())
    with pytest.raises(ValueError, match="frames"):
        build_reconstruction(oracle.predictions(),
                             Tracks(xy=oracle.xy[:3], visibility=oracle.vis[:3]))
    with pytest.raises(ValueError, match="depth"):
        points_from_depth(oracle.predictions())
