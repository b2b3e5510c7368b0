"""The contract suite: the whole pipeline, end to end, on the bundled synthetic sequence.

Runs with ``python -m unittest test_vae_batch -v`` and with pytest. Every reconstruction here is
real (pycolmap SIFT, matching and incremental mapping on the rendered frames), compared with the
ground truth the renderer wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

from pipeline.cli import main
from pipeline.config import PipelineConfig
from pipeline.geometry import ate
from pipeline.reconstructors import Reconstructor, WindowResult
from pipeline.runner import process_window_batch
from pipeline.synthetic import load_ground_truth
from pipeline.windows import create_windows
from tests.helpers import frames_with_blank_window, window_dirs, window_info, write_model

try:
    import pytest

    slow = pytest.mark.slow
except ImportError:  # plain unittest

    def slow(cls):
        return cls


from conftest import IMAGES, ROOT, TESTDATA


def run_cli(*args: str) -> int:
    return main([*map(str, args), "--quiet"])


def camera_centres(rec: pycolmap.Reconstruction) -> dict[str, np.ndarray]:
    centres = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        centres[image.name] = image.projection_center()
    return centres


class TempDirTestCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()


@slow
class EndToEndTest(unittest.TestCase):
    """Default settings on testdata: every window is a valid, accurate COLMAP scene."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.out = Path(cls._tmp.name) / "out"
        cls.code = run_cli("--input-dir", IMAGES, "--output-dir", cls.out)
        cls.gt = load_ground_truth(TESTDATA)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_exit_code_and_layout(self):
        self.assertEqual(self.code, 0)
        expected = create_windows(sorted(p.name for p in IMAGES.iterdir()), 8, 4)
        self.assertEqual(
            [p.relative_to(self.out) for p in window_dirs(self.out)],
            [w.relative_dir for w in expected],
        )
        for window, path in zip(expected, window_dirs(self.out)):
            info = window_info(path)
            self.assertEqual(info["status"], "ok")
            self.assertEqual(info["frames"], list(window.items))
            self.assertEqual(info["reconstructor"], "colmap")
            for key in ("timings", "registered_frames", "mean_reprojection_error", "error"):
                self.assertIn(key, info)
            self.assertLess(info["mean_reprojection_error"], 1.0)
            self.assertTrue((path / "sparse" / "points.ply").stat().st_size > 1000)
            self.assertEqual(
                sorted(p.name for p in (path / "images").iterdir()), sorted(window.items)
            )

    def test_windows_register_and_match_ground_truth(self):
        gt_centres = dict(zip(self.gt.names, self.gt.camera_centers))
        for path in window_dirs(self.out):
            info = window_info(path)
            rec = pycolmap.Reconstruction(path / "sparse")
            self.assertGreaterEqual(rec.num_reg_images(), 0.9 * info["num_frames"], path)
            self.assertEqual(rec.num_reg_images(), info["num_registered"])
            first = rec.find_image_with_name(info["registered_frames"][0])
            np.testing.assert_allclose(first.cam_from_world().matrix(), np.eye(3, 4), atol=1e-9)
            centres = camera_centres(rec)
            names = sorted(centres)
            result = ate(
                np.array([centres[n] for n in names]),
                np.array([gt_centres[n] for n in names]),
                align="sim3",
            )
            self.assertLessEqual(result.rmse_fraction, 0.01, f"{path}: ATE {result}")

    def test_run_manifest(self):
        manifest = json.loads((self.out / "run.json").read_text())
        self.assertEqual(manifest["status"], "finished")
        self.assertEqual(manifest["summary"]["ok"], len(window_dirs(self.out)))
        self.assertEqual(manifest["config"]["window_size"], 8)
        self.assertIsNotNone(manifest["versions"]["pycolmap"])
        self.assertTrue(all(w["status"] == "ok" for w in manifest["windows"]))

    def test_rerun_with_other_batch_size_skips_everything(self):
        before = {p: (p / "window_info.json").stat().st_mtime_ns for p in window_dirs(self.out)}
        code = run_cli("--input-dir", IMAGES, "--output-dir", self.out, "--window-batch-size", "3")
        self.assertEqual(code, 0)
        after = {p: (p / "window_info.json").stat().st_mtime_ns for p in window_dirs(self.out)}
        self.assertEqual(before, after)
        manifest = json.loads((self.out / "run.json").read_text())
        self.assertEqual(manifest["summary"]["skipped"], len(before))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@slow
class ResumeTest(TempDirTestCase):
    """A rerun after a crash redoes exactly the windows that are missing or incomplete."""

    ARGS = (
        "--input-dir",
        IMAGES,
        "--max-frames",
        "16",
        "--window-size",
        "4",
        "--window-stride",
        "4",
    )

    def test_simulated_crash(self):
        out = self.tmp / "out"
        self.assertEqual(run_cli(*self.ARGS, "--output-dir", out), 0)
        dirs = window_dirs(out)
        self.assertEqual(len(dirs), 4)
        # window 1 left under its temporary name, window 2 half-written (no window_info.json),
        # window 3 never started
        left = dirs[1].parent / f".{dirs[1].name}.partial-{_dead_pid()}"
        os.rename(dirs[1], left)
        (dirs[2] / "window_info.json").unlink()
        shutil.rmtree(dirs[3])
        untouched = (dirs[0] / "window_info.json").stat().st_mtime_ns
        self.assertEqual(run_cli(*self.ARGS, "--output-dir", out), 0)
        manifest = json.loads((out / "run.json").read_text())
        self.assertEqual([w["skipped"] for w in manifest["windows"]], [True, False, False, False])
        self.assertEqual((dirs[0] / "window_info.json").stat().st_mtime_ns, untouched)
        self.assertFalse(left.exists())
        self.assertEqual([window_info(d)["status"] for d in window_dirs(out)], ["ok"] * 4)
        self.assertEqual(window_dirs(out), dirs)

    def test_killed_run(self):
        out = self.tmp / "out"
        cmd = [
            sys.executable,
            str(ROOT / "vae_data_pipeline_batch.py"),
            *map(str, self.ARGS),
            "--output-dir",
            str(out),
            "--window-batch-size",
            "1",
            "--cpu-workers",
            "1",
            "-q",
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(
            out.glob("batch_*/window_*/window_info.json")
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = {p.parent.name for p in out.glob("batch_*/window_*/window_info.json")}
        self.assertTrue(1 <= len(finished) < 4, finished)
        self.assertEqual(json.loads((out / "run.json").read_text())["status"], "running")
        self.assertEqual(run_cli(*self.ARGS, "--output-dir", out), 0)
        manifest = json.loads((out / "run.json").read_text())
        skipped = {Path(w["path"]).name for w in manifest["windows"] if w["skipped"]}
        self.assertEqual(skipped, finished)
        self.assertEqual(
            manifest["summary"], {"ok": 4, "failed": 0, "skipped": len(finished), "pending": 0}
        )
        self.assertEqual(list(out.glob("batch_*/.*")), [])

    def test_interrupted_run(self):
        out = self.tmp / "out"
        cmd = [
            sys.executable,
            str(ROOT / "vae_data_pipeline_batch.py"),
            *map(str, self.ARGS),
            "--output-dir",
            str(out),
            "-q",
        ]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(out.glob("batch_*/.window_*")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn("rerun the same command", err)
        self.assertEqual(json.loads((out / "run.json").read_text())["status"], "interrupted")
        self.assertEqual(run_cli(*self.ARGS, "--output-dir", out), 0)
        self.assertEqual(json.loads((out / "run.json").read_text())["summary"]["ok"], 4)

    def test_overwrite_redoes_all(self):
        out = self.tmp / "out"
        args = ("--input-dir", IMAGES, "--max-frames", "8", "--window-size", "4")
        self.assertEqual(run_cli(*args, "--output-dir", out), 0)
        self.assertEqual(run_cli(*args, "--output-dir", out, "--overwrite"), 0)
        manifest = json.loads((out / "run.json").read_text())
        self.assertEqual(manifest["summary"]["skipped"], 0)
        self.assertEqual(manifest["summary"]["ok"], 2)


@slow
class FailureTest(TempDirTestCase):
    """A window that cannot be reconstructed fails alone; the others are written."""

    def test_one_failed_window(self):
        frames = frames_with_blank_window(IMAGES, self.tmp / "frames")
        out = self.tmp / "out"
        code = run_cli(
            "--input-dir", frames, "--output-dir", out, "--window-size", "4", "--window-stride", "4"
        )
        self.assertEqual(code, 1)
        infos = [window_info(d) for d in window_dirs(out)]
        self.assertEqual([i["status"] for i in infos], ["ok", "failed", "ok"])
        self.assertTrue(infos[1]["error"])
        manifest = json.loads((out / "run.json").read_text())
        self.assertEqual(manifest["summary"]["failed"], 1)
        self.assertEqual(manifest["windows"][1]["error"], infos[1]["error"])
        # a rerun retries the failed window only
        self.assertEqual(
            run_cli(
                "--input-dir",
                frames,
                "--output-dir",
                out,
                "--window-size",
                "4",
                "--window-stride",
                "4",
            ),
            1,
        )
        manifest = json.loads((out / "run.json").read_text())
        self.assertEqual([w["skipped"] for w in manifest["windows"]], [True, False, True])


class _FlakyReconstructor(Reconstructor):
    """Test double for the batch contract: fails the windows whose index is in ``fail``."""

    name = "flaky"

    def __init__(self, fail=(), explode=False):
        self.fail, self.explode = set(fail), explode

    def reconstruct_batch(self, windows, staging_dirs):
        if self.explode:
            raise RuntimeError("device lost")
        results = []
        for window, staging in zip(windows, staging_dirs):
            if window.index in self.fail:
                results.append(WindowResult.failure("forced failure"))
                continue
            write_model(staging / "sparse", [f.name for f in window.items], points=64)
            results.append(
                WindowResult(status="ok", registered_frames=[f.name for f in window.items])
            )
        return results


class ProcessWindowBatchTest(TempDirTestCase):
    def _windows(self):
        from pipeline.frames import list_image_files, prepare_frames

        frames = prepare_frames(
            list_image_files(IMAGES)[:12], self.tmp / "cache", show_progress=False
        )
        return create_windows(frames, 4, 4)

    def test_windows_of_plain_paths_and_auto_as_the_readme_says(self):
        from unittest import mock

        from pipeline.frames import list_image_files

        windows = create_windows(list_image_files(IMAGES)[:8], 4, 4)
        config = PipelineConfig(output_dir=self.tmp / "out", input_dir=IMAGES)  # auto
        with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):  # never download here
            records = process_window_batch(windows, 0, config)
        self.assertEqual([r["status"] for r in records], ["ok", "ok"])
        self.assertEqual({r["reconstructor"] for r in records}, {"colmap"})
        self.assertEqual(records[1]["frames"], [p.name for p in list_image_files(IMAGES)[4:8]])

    def test_one_window_failure_does_not_stop_others(self):
        config = PipelineConfig(output_dir=self.tmp / "out", input_dir=IMAGES)
        records = process_window_batch(
            self._windows(), 0, config, reconstructor=_FlakyReconstructor(fail={1})
        )
        self.assertEqual([r["status"] for r in records], ["ok", "failed", "ok"])
        self.assertEqual(records[1]["error"], "forced failure")
        for window in self._windows():
            self.assertTrue((config.output_dir / window.relative_dir / "window_info.json").exists())

    def test_whole_batch_error_is_recorded_per_window(self):
        config = PipelineConfig(output_dir=self.tmp / "out", input_dir=IMAGES)
        with self.assertLogs("pipeline.runner", "ERROR"):
            records = process_window_batch(
                self._windows(), 3, config, reconstructor=_FlakyReconstructor(explode=True)
            )
        self.assertEqual({r["status"] for r in records}, {"failed"})
        self.assertTrue(all("device lost" in r["error"] for r in records))
        self.assertEqual({r["batch_index"] for r in records}, {3})


@slow
class CameraTypeTest(TempDirTestCase):
    def test_camera_types_and_shared_camera(self):
        cases = [("SIMPLE_PINHOLE", False, 8), ("PINHOLE", True, 1), ("SIMPLE_RADIAL", True, 1)]
        for camera_type, shared, num_cameras in cases:
            out = self.tmp / camera_type
            args = [
                "--input-dir",
                IMAGES,
                "--output-dir",
                out,
                "--max-frames",
                "8",
                "--camera-type",
                camera_type,
            ]
            self.assertEqual(run_cli(*args, *(["--shared-camera"] if shared else [])), 0)
            rec = pycolmap.Reconstruction(window_dirs(out)[0] / "sparse")
            self.assertEqual(rec.num_cameras(), num_cameras)
            models = {str(cam.model.name) for cam in rec.cameras.values()}
            self.assertEqual(models, {camera_type})

    def test_shared_camera_with_mixed_sizes_gives_one_camera_per_frame(self):
        frames = self.tmp / "mixed"
        frames.mkdir()
        for i, path in enumerate(sorted(IMAGES.iterdir())[:8]):
            image = Image.open(path)
            (image.resize((300, 225)) if i % 2 else image).save(frames / path.name)
        out = self.tmp / "mixed_out"
        self.assertEqual(run_cli("--input-dir", frames, "--output-dir", out, "--shared-camera"), 0)
        info = window_info(window_dirs(out)[0])
        self.assertEqual(info["num_registered"], 8)
        self.assertFalse(info["details"]["shared_camera"])
        rec = pycolmap.Reconstruction(window_dirs(out)[0] / "sparse")
        self.assertEqual(
            {(c.width, c.height) for c in rec.cameras.values()}, {(320, 240), (300, 225)}
        )

    def test_known_camera_params_stay_fixed(self):
        gt = load_ground_truth(TESTDATA)
        params = tuple(float(v) for v in (gt.K[0, 0], gt.K[1, 1], gt.K[0, 2], gt.K[1, 2]))
        out = self.tmp / "known"
        self.assertEqual(
            run_cli(
                "--input-dir",
                IMAGES,
                "--output-dir",
                out,
                "--max-frames",
                "8",
                "--camera-type",
                "PINHOLE",
                "--camera-params",
                ",".join(map(repr, params)),
            ),
            0,
        )
        rec = pycolmap.Reconstruction(window_dirs(out)[0] / "sparse")
        for cam in rec.cameras.values():
            np.testing.assert_allclose(cam.params, params, rtol=1e-9)


class BadInputTest(TempDirTestCase):
    """Bad input: a one-line error, exit status 2, nothing already written lost."""

    def _cli(self, *args):
        from contextlib import redirect_stderr
        from io import StringIO

        err = StringIO()
        with redirect_stderr(err):
            code = run_cli(*args)
        return code, err.getvalue()

    def _assert_usage_error(self, args, message):
        code, err = self._cli(*args)
        self.assertEqual(code, 2)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(message, err)

    def test_missing_and_empty_input(self):
        self._assert_usage_error(
            ["--input-dir", self.tmp / "nope", "--output-dir", self.tmp / "o"], "does not exist"
        )
        (self.tmp / "empty").mkdir()
        self._assert_usage_error(
            ["--input-dir", self.tmp / "empty", "--output-dir", self.tmp / "o"], "no images"
        )

    def test_output_is_a_file(self):
        (self.tmp / "file").write_text("keep me")
        self._assert_usage_error(
            ["--input-dir", IMAGES, "--output-dir", self.tmp / "file"], "not a folder"
        )
        self.assertEqual((self.tmp / "file").read_text(), "keep me")

    def test_corrupt_frame_stops_before_any_work(self):
        frames = self.tmp / "frames"
        shutil.copytree(IMAGES, frames)
        (frames / "frame_005.png").write_bytes(b"\x89PNG broken")
        out = self.tmp / "out"
        self._assert_usage_error(["--input-dir", frames, "--output-dir", out], "frame_005.png")
        self.assertEqual(list(out.glob("batch_*")), [])

    def test_invalid_window_options(self):
        self._assert_usage_error(
            [
                "--input-dir",
                IMAGES,
                "--output-dir",
                self.tmp / "o",
                "--window-size",
                "4",
                "--window-stride",
                "6",
            ],
            "stride",
        )

    def test_camera_params_must_fit_the_model(self):
        self._assert_usage_error(
            ["--input-dir", IMAGES, "--output-dir", self.tmp / "o", "--camera-params", "300,160"],
            "needs 3 values",
        )

    def test_argparse_errors_exit_2(self):
        with self.assertRaises(SystemExit) as ctx:
            self._cli("--output-dir", self.tmp / "o")
        self.assertEqual(ctx.exception.code, 2)


@slow
class SkipBadFramesTest(TempDirTestCase):
    def test_skip_bad_frames_runs(self):
        frames = self.tmp / "frames"
        frames.mkdir()
        for path in sorted(IMAGES.iterdir())[:8]:
            shutil.copy(path, frames / path.name)
        (frames / "frame_003.png").write_bytes(b"broken")
        out = self.tmp / "out"
        code = run_cli("--input-dir", frames, "--output-dir", out, "--skip-bad-frames")
        self.assertEqual(code, 0)
        info = window_info(window_dirs(out)[0])
        self.assertNotIn("frame_003.png", info["frames"])
        self.assertEqual(len(info["frames"]), 7)


if __name__ == "__main__":
    unittest.main()
