"""Tests of the synthetic renderer (pipeline.io.synthetic) and of the bundled data in
testdata/synthetic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from conftest import TESTDATA as DATA
from pipeline.core.geometry import camera_centers
from pipeline.io import synthetic
from pipeline.io.synthetic import (
    RenderOptions,
    SceneOptions,
    camera_path,
    load_ground_truth,
    load_images,
    render_sequence,
    write_sequence,
)

# Tolerances, measured on the bundled data (seed 0) with margin: the correct pixel convention gives
# a median colour difference of ~4-5 / 255 and >= 0.92 depth-consistent pixels; a half-pixel error
# gives ~14 / 255, so PHOTO_MEDIAN_MAX separates the two.
PHOTO_MEDIAN_MAX = 8.0
PHOTO_GOOD_DIFF = 30.0
PHOTO_GOOD_FRACTION = 0.93
DEPTH_AGREE_REL = 0.01
VISIBLE_FRACTION_MIN = 0.85
FLOAT16_REL = 2.0**-11


@pytest.fixture(scope="module")
def bundled() -> tuple[synthetic.SceneTruth, np.ndarray]:
    """Ground truth and (N, H, W, 3) frames of the bundled data."""
    gt = load_ground_truth(DATA)
    return gt, load_images(DATA, gt.names)


@pytest.fixture(scope="module")
def rendered() -> synthetic.SyntheticSequence:
    """The default sequence rendered afresh (the bundled data must equal it); ~3 s."""
    return render_sequence(RenderOptions())


def _backproject(K, cam_from_world, depth, shift=0.0) -> np.ndarray:
    """(H * W, 3) world points of all pixel centres (+ ``shift`` pixels) of one depth map (H, W)."""
    h, w = depth.shape
    rows, cols = np.mgrid[0:h, 0:w]
    pix = np.stack([cols + 0.5 + shift, rows + 0.5 + shift, np.ones((h, w))], axis=-1).reshape(
        -1, 3
    )
    x_cam = (pix @ np.linalg.inv(K).T) * depth.reshape(-1, 1).astype(np.float64)
    R, t = cam_from_world[:, :3], cam_from_world[:, 3]
    return (x_cam - t) @ R


def _warp_stats(gt, images, i, j, shift=0.0) -> tuple[float, float, float]:
    """Reproject frame i into frame j with depth i: (visible fraction, median and good fraction of
    colour diff)."""
    points = _backproject(gt.K, gt.cam_from_world[i], gt.depth[i], shift)
    x_j = points @ gt.cam_from_world[j, :, :3].T + gt.cam_from_world[j, :, 3]
    z = x_j[:, 2]
    uv = x_j @ gt.K.T
    col, row = uv[:, 0] / z - 0.5, uv[:, 1] / z - 0.5  # array indices of the continuous position
    inside = (z > 0) & (col >= 0) & (col <= gt.width - 1) & (row >= 0) & (row <= gt.height - 1)
    coords = [row[inside], col[inside]]
    depth_j = ndimage.map_coordinates(gt.depth[j], coords, order=1)
    visible = np.abs(depth_j - z[inside]) < DEPTH_AGREE_REL * z[inside]
    colour_j = np.stack(
        [
            ndimage.map_coordinates(images[j][..., c].astype(float), coords, order=1)
            for c in range(3)
        ],
        axis=-1,
    )
    diff = np.abs(colour_j - images[i].reshape(-1, 3)[inside]).max(axis=1)[visible]
    return visible.mean(), float(np.median(diff)), float(np.mean(diff < PHOTO_GOOD_DIFF))


def test_regeneration_equals_bundled_data(bundled, rendered):
    gt, images = bundled
    assert rendered.names == gt.names
    assert images.shape == rendered.images.shape == (24, 240, 320, 3)
    differing = np.count_nonzero(np.any(images != rendered.images, axis=-1))
    assert differing == 0, f"{differing} pixels differ: rerun testdata/make_testdata.py if intended"
    np.testing.assert_array_equal(gt.K, rendered.K)
    # poses are computed with libm's sin/cos, which differ in the last bit between CPUs
    np.testing.assert_allclose(gt.cam_from_world, rendered.cam_from_world, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(gt.depth, rendered.depth.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(gt.depth, rendered.depth, rtol=FLOAT16_REL, atol=0)


def test_rendering_is_deterministic_and_seed_changes_textures_only():
    small = dict(num_frames=2, width=64, height=48, supersample=1)
    a = render_sequence(RenderOptions(**small))
    b = render_sequence(RenderOptions(**small))
    c = render_sequence(RenderOptions(**small, scene=SceneOptions(seed=1)))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.depth, c.depth)
    assert np.mean(a.images != c.images) > 0.5


def test_conventions(bundled):
    gt, images = bundled
    K = gt.K
    assert K[0, 0] == K[1, 1] and K[0, 1] == 0
    assert (K[0, 2], K[1, 2]) == (gt.width / 2, gt.height / 2)
    R = gt.cam_from_world[:, :, :3]
    np.testing.assert_allclose(
        R @ np.transpose(R, (0, 2, 1)), np.broadcast_to(np.eye(3), R.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    assert np.all(R[:, 1, 2] < -0.9)  # camera y (down) points down in the z-up world
    assert np.all(R[:, 0, 2] == pytest.approx(0.0, abs=1e-12))  # no roll
    assert np.all(gt.depth > 0.5) and np.all(np.isfinite(gt.depth))
    assert 30 < images.mean() < 220 and images.std() > 40  # textured, not washed out


@pytest.mark.parametrize("frame", [0, 11, 23])
def test_depth_lies_on_scene_surfaces(rendered, frame):
    points = _backproject(rendered.K, rendered.cam_from_world[frame], rendered.depth[frame])
    z = rendered.depth[frame].reshape(-1)
    residual = synthetic.distance_to_surfaces(points, rendered.options.scene) / z
    assert residual.max() < 1e-5
    # A half-pixel error in the pixel convention moves most points off the surfaces (slanted floor).
    shifted = _backproject(
        rendered.K, rendered.cam_from_world[frame], rendered.depth[frame], shift=0.5
    )
    assert np.mean(synthetic.distance_to_surfaces(shifted, rendered.options.scene) / z < 1e-5) < 0.5


@pytest.mark.parametrize(("i", "j"), [(0, 1), (0, 3), (10, 14), (20, 23), (0, 7)])
def test_reprojection_is_photo_and_depth_consistent(bundled, i, j):
    gt, images = bundled
    visible, median, good = _warp_stats(gt, images, i, j)
    assert visible >= VISIBLE_FRACTION_MIN, (
        f"only {visible:.3f} of reprojected pixels agree in depth"
    )
    assert median <= PHOTO_MEDIAN_MAX
    assert good >= PHOTO_GOOD_FRACTION


def test_reprojection_check_detects_half_pixel_error(bundled):
    gt, images = bundled
    _, median, _ = _warp_stats(gt, images, 0, 3, shift=0.5)
    assert median > PHOTO_MEDIAN_MAX


def test_loop_path_returns_to_start():
    poses = camera_path(RenderOptions(num_frames=120, path="loop"))
    centres = camera_centers(poses)
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    closing = np.linalg.norm(centres[-1] - centres[0])
    assert np.ptp(centres[:, :2], axis=0).min() > 5.0  # a real loop, metres
    assert closing <= 1.5 * np.median(steps)
    angles = Rotation.from_matrix(
        poses[1:, :, :3] @ np.transpose(poses[:-1, :, :3], (0, 2, 1))
    ).magnitude()
    closing_angle = Rotation.from_matrix(poses[0, :, :3] @ poses[-1, :, :3].T).magnitude()
    assert closing_angle <= 1.5 * np.median(angles)


def test_arc_path_is_smooth_and_open():
    centres = camera_centers(camera_path(RenderOptions(num_frames=24)))
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert 0.08 < steps.min() and steps.max() < 0.2  # metres per frame
    assert np.linalg.norm(centres[-1] - centres[0]) > 2.5


def test_write_and_load_round_trip(tmp_path):
    seq = render_sequence(RenderOptions(num_frames=3, width=64, height=48, supersample=1))
    write_sequence(seq, tmp_path / "seq")
    for path in (tmp_path / "seq", tmp_path / "seq" / "ground_truth.npz"):
        gt = load_ground_truth(path)
        assert gt.names == seq.names == ["frame_000.png", "frame_001.png", "frame_002.png"]
        assert (gt.width, gt.height) == (64, 48)
        np.testing.assert_array_equal(gt.K, seq.K)
        np.testing.assert_array_equal(gt.cam_from_world, seq.cam_from_world)
        np.testing.assert_allclose(gt.depth, seq.depth, rtol=FLOAT16_REL)
    np.testing.assert_array_equal(load_images(tmp_path / "seq"), seq.images)
    summary = json.loads((tmp_path / "seq" / "ground_truth.json").read_text())
    np.testing.assert_allclose(summary["cam_from_world"], seq.cam_from_world, atol=1e-12)
    assert summary["names"] == seq.names and summary["options"]["num_frames"] == 3
    tum = np.loadtxt(tmp_path / "seq" / "trajectory_tum.txt")
    np.testing.assert_array_equal(tum[:, 0], [0, 1, 2])
    np.testing.assert_allclose(tum[:, 1:4], camera_centers(seq.cam_from_world), atol=1e-8)
    world_from_cam = Rotation.from_quat(tum[:, 4:]).as_matrix()
    np.testing.assert_allclose(
        world_from_cam, np.transpose(seq.cam_from_world[:, :, :3], (0, 2, 1)), atol=1e-8
    )
    with pytest.raises(FileNotFoundError):
        load_ground_truth(tmp_path / "missing")


@pytest.mark.parametrize(
    "options",
    [
        RenderOptions(path="zigzag"),
        RenderOptions(orbit_radius=6.0),  # camera outside the room
        RenderOptions(
            path="loop", num_frames=60, orbit_radius=1.0, camera_height=0.2
        ),  # through boxes
        RenderOptions(supersample=0),
        RenderOptions(num_frames=0),
    ],
)
def test_invalid_options_raise(options):
    with pytest.raises(ValueError):
        render_sequence(options)


# ------------------------------------------------------------------------------------------------
# Real COLMAP on the bundled data
# ------------------------------------------------------------------------------------------------


def _umeyama_ate(estimated: np.ndarray, reference: np.ndarray) -> float:
    """RMSE (reference units) of (N, 3) estimated points after the best Sim(3) onto reference."""
    mu_e, mu_r = estimated.mean(0), reference.mean(0)
    e, r = estimated - mu_e, reference - mu_r
    U, S, Vt = np.linalg.svd(r.T @ e / len(e))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U) * np.linalg.det(Vt))])
    R = U @ D @ Vt
    scale = np.trace(np.diag(S) @ D) / (e**2).sum(axis=1).mean()
    aligned = scale * e @ R.T + mu_r
    return float(np.sqrt(((aligned - reference) ** 2).sum(axis=1).mean()))


def _colmap_window(tmp_path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Camera centres {name: (3,)} of the largest COLMAP model of ``names`` (pycolmap 4.2)."""
    pycolmap = pytest.importorskip("pycolmap")
    if tmp_path.exists():
        shutil.rmtree(tmp_path)
    tmp_path.mkdir(parents=True)
    db = tmp_path / "database.db"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 2
    extraction.sift.max_num_features = 4096
    pycolmap.extract_features(
        db,
        DATA / "images",
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = 8
    pycolmap.match_sequential(
        db,
        matching_options=pycolmap.FeatureMatchingOptions(),
        pairing_options=pairing,
        device=pycolmap.Device.cpu,
    )
    models = pycolmap.incremental_mapping(
        db, DATA / "images", tmp_path / "sparse", options=pycolmap.IncrementalPipelineOptions()
    )
    assert models, "COLMAP reconstructed nothing"
    best = max(models.values(), key=lambda rec: rec.num_reg_images())
    return {img.name: img.projection_center() for img in best.images.values() if img.has_pose}


def _check_colmap(tmp_path: Path, start: int, stop: int) -> None:
    gt = load_ground_truth(DATA)
    names = gt.names[start:stop]
    centres = _colmap_window(tmp_path, names)
    assert len(centres) == len(names), f"registered {len(centres)} of {len(names)}"
    reference = np.stack([gt.camera_centers[gt.names.index(n)] for n in centres])
    ate = _umeyama_ate(np.stack(list(centres.values())), reference)
    extent = np.linalg.norm(np.ptp(reference, axis=0))
    assert ate <= 0.01 * extent, f"ATE {ate:.4f} m > 1% of extent {extent:.3f} m"


def test_colmap_reconstructs_first_window(tmp_path):
    _check_colmap(tmp_path / "w", 0, 8)


@pytest.mark.slow
@pytest.mark.parametrize(("start", "stop"), [(4, 12), (8, 16), (12, 20), (16, 24), (0, 24)])
def test_colmap_reconstructs_windows(tmp_path, start, stop):
    _check_colmap(tmp_path / "w", start, stop)
