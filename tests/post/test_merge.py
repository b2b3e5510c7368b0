"""Joining windows: known Sim(3) frames are undone, gaps split segments, outputs are valid."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from scipy.spatial.transform import Rotation

from pipeline.cli.merge import main
from pipeline.core.geometry import Sim3, ate, camera_centers
from pipeline.core.windows import create_windows
from pipeline.io.synthetic import RenderOptions, camera_path, intrinsics
from pipeline.post.evaluate import evaluate_output
from pipeline.post.merge import merge_output
from pipeline.post.merge_options import MergeOptions
from tests.helpers import finish_window, write_test_plan

N_FRAMES = 60
NAMES = [f"frame_{i:03d}.png" for i in range(N_FRAMES)]
GT = camera_path(RenderOptions(num_frames=N_FRAMES, path="loop"))
K = intrinsics(320, 240, 60.0)


def random_sim3(rng: np.random.Generator) -> Sim3:
    return Sim3(scale=float(rng.uniform(0.3, 3.0)),
                rotation=Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(),
                translation=rng.normal(0, 5, 3))


def noisy(poses: np.ndarray, rng: np.random.Generator, rot_deg: float, trans: float) -> np.ndarray:
    """Poses with their orientation turned by ~rot_deg and their centre moved by ~trans."""
    out = poses.copy()
    for pose, centre in zip(out, camera_centers(poses)):
        turn = Rotation.from_rotvec(rng.normal(0, np.radians(rot_deg), 3)).as_matrix()
        pose[:, :3] = turn @ pose[:, :3]
        pose[:, 3] = -pose[:, :3] @ (centre + rng.normal(0, trans, 3))
    return out


def write_depth(folder: Path, names, scale: float) -> None:
    """Depth maps as vggt --save-depth writes them; any depth is consistent between windows
    (each window back-projects the same pixel with its own copy of the same depth)."""
    (folder / "depth").mkdir(parents=True)
    rows, cols = np.mgrid[0:240, 0:320]
    for name in names:
        depth = (2.0 + 0.004 * cols + 0.002 * rows + 0.1 * (NAMES.index(name) % 3)) * scale
        np.savez_compressed(folder / "depth" / f"{Path(name).stem}.npz",
                            depth=depth.astype(np.float16),
                            confidence=np.full((240, 320), 3.0, np.float16))


def write_window(out: Path, window, poses: np.ndarray, points: np.ndarray,
                 status: str = "ok") -> None:
    """A window folder as the pipeline writes it: sparse/ and window_info.json."""
    folder = out / window.relative_dir
    (folder / "sparse").mkdir(parents=True, exist_ok=True)
    rec = pycolmap.Reconstruction()
    for i, (name, pose) in enumerate(zip(window.items, poses)):
        cam = pycolmap.Camera(model="PINHOLE", width=320, height=240, camera_id=i + 1,
                              params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
        rec.add_camera_with_trivial_rig(cam)
        image = pycolmap.Image(name=name, keypoints=np.zeros((0, 2)), camera_id=i + 1,
                               image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pose))
    for xyz in points:
        rec.add_point3D(xyz, pycolmap.Track(), np.array([200, 100, 50], np.uint8))
    rec.write(folder / "sparse")
    finish_window(out, window, status=status)


def make_output(out: Path, *, stride: int = 4, failed=(), garbage=(), seed: int = 0,
                rot_deg: float = 0.02, trans: float = 0.001, depth: bool = False) -> None:
    """Windows of the loop, each in its own random Sim(3) world with a little pose noise."""
    rng = np.random.default_rng(seed)
    world_points = rng.uniform([-4, -4, 0], [4, 4, 3], (200, 3))
    windows = create_windows(NAMES, 8, stride)
    write_test_plan(out, windows)
    for window in windows:
        frames = [NAMES.index(n) for n in window.items]
        sim = random_sim3(rng)
        poses = noisy(sim.transform_poses(GT[frames]), rng, rot_deg, trans * sim.scale)
        if window.index in garbage:
            poses = noisy(poses, rng, 30.0, 2.0 * sim.scale)
        status = "failed" if window.index in failed else "ok"
        folder = out / window.relative_dir
        if depth:
            write_depth(folder, window.items, sim.scale)
        write_window(out, window, poses, sim.apply(world_points), status)


def merged_ate(folder: Path) -> tuple[float, int]:
    rec = pycolmap.Reconstruction(folder / "sparse")
    names = [rec.images[i].name for i in sorted(rec.images)]
    pred = np.array([rec.images[i].projection_center() for i in sorted(rec.images)])
    gt = camera_centers(GT[[NAMES.index(n) for n in names]])
    return ate(pred, gt).rmse_fraction, len(names)


class MergeTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.out = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()

    def test_windows_in_random_frames_merge_into_the_true_trajectory(self):
        make_output(self.out)
        report = merge_output(self.out)
        merged = self.out / "merged"
        self.assertEqual(len(report["segments"]), 1)
        fraction, count = merged_ate(merged)
        self.assertEqual(count, N_FRAMES)  # every frame once
        self.assertLess(fraction, 0.005)
        self.assertTrue(all(p["accepted"] for p in report["pairs"]))
        lines = [line for line in (merged / "trajectory.txt").read_text().splitlines()
                 if not line.startswith("#")]
        self.assertEqual(len(lines), N_FRAMES)
        self.assertEqual((merged / "trajectory_names.txt").read_text().split(), NAMES)
        self.assertGreater((merged / "points.ply").stat().st_size, 100)
        self.assertEqual((merged / "trajectory.png").read_bytes()[:4], b"\x89PNG")
        self.assertEqual(json.loads((merged / "merge.json").read_text()), json.loads(
            json.dumps(report)))
        # the evaluator reads the merged trajectory (TUM + names) as written
        gt = {n: GT[i] for i, n in enumerate(NAMES)}
        [entry] = evaluate_output(self.out, gt)["merged"]
        self.assertLess(entry["ate"]["rmse_fraction"], 0.005)

    def test_depth_maps_add_dense_correspondences(self):
        make_output(self.out, depth=True, rot_deg=0.0, trans=0.0)
        report = merge_output(self.out)
        self.assertTrue(all(p["dense_correspondences"] > 500 for p in report["pairs"]))
        fraction, count = merged_ate(self.out / "merged")
        self.assertEqual(count, N_FRAMES)
        self.assertLess(fraction, 0.001)

    def test_merged_world_is_the_first_windows_world(self):
        make_output(self.out, rot_deg=0.0, trans=0.0)
        merge_output(self.out)
        rec = pycolmap.Reconstruction(self.out / "merged" / "sparse")
        first = json.loads((self.out / "batch_000/window_000/window_info.json").read_text())
        window_rec = pycolmap.Reconstruction(self.out / "batch_000/window_000/sparse")
        name = first["frames"][0]
        np.testing.assert_allclose(rec.find_image_with_name(name).cam_from_world().matrix(),
                                   window_rec.find_image_with_name(name).cam_from_world().matrix(),
                                   atol=1e-6)

    def test_failed_window_splits_into_two_segments(self):
        make_output(self.out, failed={6})
        report = merge_output(self.out)
        self.assertEqual([s["windows"] for s in report["segments"]],
                         [list(range(6)), list(range(7, 14))])
        self.assertEqual(report["failed_windows"][0]["window"], 6)
        self.assertFalse((self.out / "merged" / "sparse").exists())
        for k in range(2):
            fraction, _ = merged_ate(self.out / "merged" / f"segment_{k:03d}")
            self.assertLess(fraction, 0.005)

    def test_inconsistent_window_is_not_bridged(self):
        make_output(self.out, garbage={5})
        report = merge_output(self.out)
        rejected = [p for p in report["pairs"] if not p["accepted"]]
        self.assertTrue(rejected)
        self.assertTrue(all(5 in p["windows"] for p in rejected))
        self.assertGreaterEqual(len(report["segments"]), 2)
        for segment in report["segments"]:
            if 5 not in segment["windows"]:
                fraction, _ = merged_ate(self.out / segment["path"])
                self.assertLess(fraction, 0.005)

    def test_pose_graph_refinement_with_cycles(self):
        make_output(self.out, stride=2, rot_deg=0.1, trans=0.005)
        merge_output(self.out, MergeOptions(refine=False))
        chained, _ = merged_ate(self.out / "merged")
        merge_output(self.out, MergeOptions(refine=True))
        refined, count = merged_ate(self.out / "merged")
        self.assertEqual(count, N_FRAMES)
        self.assertLess(refined, 0.01)
        self.assertLess(refined, 0.9 * chained)  # the cycles of the graph are used

    def test_cli(self):
        make_output(self.out)
        self.assertEqual(main([str(self.out)]), 0)
        self.assertTrue((self.out / "merged" / "sparse" / "images.bin").exists())
        empty = self.out / "empty"
        empty.mkdir()
        self.assertEqual(main([str(empty)]), 2)
        self.assertEqual(main([str(self.out / "missing")]), 2)


def test_a_merged_scene_opens_as_a_scene(merged_colmap_output):
    """``merged/`` has ``images/`` beside ``sparse/`` as the windows do (links to the same
    frames), and its points keep their observations: every image's keypoints are what its
    points are seen at, within a pixel of where the merged poses put them."""
    from conftest import IMAGES

    out = merged_colmap_output
    report = json.loads((out / "merged" / "merge.json").read_text())
    assert len(report["segments"]) == 1 and report["segments"][0]["frames"] == 12
    rec = pycolmap.Reconstruction(out / "merged" / "sparse")
    assert rec.num_reg_images() == 12
    for image in rec.images.values():
        link = out / "merged" / "images" / image.name
        assert link.is_symlink() and link.resolve() == (IMAGES / image.name).resolve()
        assert image.num_points3D == len(image.points2D) > 100
    lengths = [p.track.length() for p in rec.points3D.values()]
    assert min(lengths) >= 2 and rec.compute_num_observations() == sum(lengths)
    errors = [p.error for p in rec.points3D.values()]
    assert np.median(errors) < 0.5 and np.percentile(errors, 90) < 1.5


def test_merged_images_are_copies_where_the_windows_copied(tmp_path):
    from pipeline.post.merge import write_images

    (tmp_path / "window" / "images").mkdir(parents=True)
    copied = tmp_path / "window" / "images" / "a.png"
    copied.write_bytes(b"png")
    (tmp_path / "source.png").write_bytes(b"src")
    linked = tmp_path / "window" / "images" / "b.png"
    linked.symlink_to(tmp_path / "source.png")
    write_images({"a.png": copied, "b.png": linked}, tmp_path / "merged" / "images")
    a, b = tmp_path / "merged" / "images" / "a.png", tmp_path / "merged" / "images" / "b.png"
    assert not a.is_symlink() and a.read_bytes() == b"png"
    assert b.is_symlink() and b.resolve() == (tmp_path / "source.png").resolve()


@pytest.mark.slow
class LongSequenceTest(unittest.TestCase):
    """The real pipeline on a rendered 64-frame loop (two chunks of 32, mapped incrementally),
    merged, against ground truth (measured: 64 frames matched, RMSE 0.11% of the scene)."""

    def test_merge_long_loop(self):
        from pipeline.io.synthetic import render_sequence, write_sequence
        from pipeline.runner import run
        from pipeline.runner.config import PipelineConfig

        with tempfile.TemporaryDirectory() as tmp:
            data = write_sequence(render_sequence(RenderOptions(num_frames=64, path="loop")),
                                  Path(tmp) / "seq")
            out = Path(tmp) / "out"
            summary = run(PipelineConfig(input_dir=data / "images", output_dir=out, merge=True,
                                         chunk_frames=32, show_progress=False))  # 2 chunks
            self.assertTrue(summary.success, summary.line())
            self.assertEqual(len(summary.merge["segments"]), 1)
            report = evaluate_output(out, data)
            [merged] = report["merged"]
            self.assertGreaterEqual(merged["num_matched"], 61)
            self.assertLessEqual(merged["ate"]["rmse_fraction"], 0.01)


if __name__ == "__main__":
    unittest.main()


def test_track_correspondences_need_the_same_keypoint():
    from pipeline.post.merge import WindowModel, track_correspondences

    def model(index, idx, xy, xyz):
        return WindowModel(index=index, frames=["f.png"], frame_index={"f.png": 0}, poses={},
                           cameras={}, points=np.zeros((0, 3)), colors=np.zeros((0, 3), np.uint8),
                           observations={"f.png": (np.array(idx), np.array(xy, float),
                                                   np.array(xyz, float))})

    a = model(0, [0, 1, 2], [[1, 1], [2, 2], [3, 3]], [[0, 0, 1], [0, 0, 2], [0, 0, 3]])
    b = model(1, [1, 2, 5], [[2, 2], [3.2, 3], [9, 9]], [[0, 0, 4], [0, 0, 6], [0, 0, 9]])
    src, dst = track_correspondences(a, b, ["f.png"])
    np.testing.assert_array_equal(src, [[0, 0, 4], [0, 0, 6]])  # keypoints 1 and 2, in b
    np.testing.assert_array_equal(dst, [[0, 0, 2], [0, 0, 3]])  # the same keypoints, in a
    other = model(2, [1, 2], [[40, 2], [3, 30]], [[0, 0, 4], [0, 0, 6]])  # other pixels
    assert len(track_correspondences(a, other, ["f.png"])[0]) == 0
    assert len(track_correspondences(a, b, ["g.png"])[0]) == 0  # a frame neither holds


def test_a_merge_of_windows_since_redone_is_removed_and_not_scored(tmp_path, caplog):
    """merged/ records the windows it was made from: a window redone afterwards makes it
    stale; evaluate does not score it, and the end of a run removes it."""
    from pipeline.io.merged_record import (
        CURRENT,
        STALE,
        merged_state,
        remove_stale_merged,
    )
    make_output(tmp_path)
    merge_output(tmp_path)
    assert merged_state(tmp_path) == CURRENT
    assert not remove_stale_merged(tmp_path)  # current: kept
    assert (tmp_path / "merged" / "merge.json").is_file()
    gt = {n: GT[i] for i, n in enumerate(NAMES)}
    assert evaluate_output(tmp_path, gt)["merged"][0]["status"] == "ok"
    window = create_windows(NAMES, 8, 4)[1]
    folder = tmp_path / window.relative_dir
    poses = GT[[NAMES.index(n) for n in window.items]]
    shutil.rmtree(folder)  # the window redone, as a rerun with a changed frame does
    write_window(tmp_path, window, poses, np.zeros((0, 3)))
    assert merged_state(tmp_path) == STALE
    [entry] = evaluate_output(tmp_path, gt)["merged"]
    assert entry["status"] == "error" and "stale" in entry["error"]
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert remove_stale_merged(tmp_path)
    assert not (tmp_path / "merged").exists() and "since redone" in caplog.text
    assert merged_state(tmp_path) is None


def test_a_merged_folder_no_merge_made_is_never_replaced(tmp_path):
    from pipeline.core.errors import InputError
    from pipeline.io.merged_record import FOREIGN, merged_state, remove_stale_merged

    make_output(tmp_path)
    mine = tmp_path / "merged" / "mine.txt"
    mine.parent.mkdir()
    mine.write_text("precious")
    assert merged_state(tmp_path) == FOREIGN
    with pytest.raises(InputError, match="no merge made it"):
        merge_output(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert not remove_stale_merged(tmp_path)
    assert mine.read_text() == "precious"


def test_a_run_with_merge_refuses_a_foreign_merged_folder_first(tmp_path, capsys):
    """--merge into an output folder holding the user's own merged/: exit 2 before any work,
    the folder untouched."""
    from conftest import IMAGES
    from pipeline.cli import main as cli

    mine = tmp_path / "out" / "merged" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("precious")
    assert cli(["--input-dir", str(IMAGES), "--output-dir", str(tmp_path / "out"), "--merge",
                "--reconstructor", "colmap", "-q"]) == 2
    assert "no merge made it" in capsys.readouterr().err
    assert mine.read_text() == "precious" and not (tmp_path / "out" / "run.json").exists()
