"""The vggt reconstructor end to end, with a tiny network whose generated weights the tests write.

The tiny network's predictions are not meaningful; these tests prove the mechanics: one forward
per batch, files, window_info.json, resume, failures, choosing, and that batching does not change
the predictions.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image

from conftest import IMAGES
from pipeline.algo.models import load_model
from pipeline.algo.preprocess import PreprocessOptions, preprocess_frames
from pipeline.cli.main import main
from pipeline.reconstructors.vggt import to_original_grid
from pipeline.runner import choose_reconstructor
from pipeline.runner.config import PipelineConfig
from tests.helpers import frames_with_blank_window
from tests.helpers import window_dirs as windows
from tests.helpers import window_info as info

NO_CHECKS = ("--min-points", "0", "--min-frame-observations", "0")
"""Generated weights predict no real structure: these tests check the network path's plumbing;
the structure checks are tested on real reconstructions (tests/test_ux.py)."""
FAST = ("--max-query-pts", "48", "--query-frame-num", "2", "--window-size", "4",
        "--window-stride", "4", "-q", *NO_CHECKS)
TINY_RES = ("--process-res", "112")
"""The tiny network's own input size (518, the default, costs about 5x the forward time): for
the tests whose point is not the input size."""


@pytest.fixture(scope="class", autouse=True)
def _tiny_vggt(request, tiny_vggt_checkpoint):
    """The session's tiny VGGT checkpoint (conftest), as the test class's ``model``."""
    if request.cls is not None:
        request.cls.model = tiny_vggt_checkpoint


class VggtTestCase(unittest.TestCase):
    model: Path
    """The tiny VGGT of generated weights (set by the ``_tiny_vggt`` fixture)."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.tmp = Path(cls._tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def run_cli(self, out: Path, *args: str, images: Path = IMAGES) -> int:
        return main(["--input-dir", str(images), "--output-dir", str(out), "--reconstructor",
                     "vggt", "--model", str(self.model), *FAST, *TINY_RES, *args])


class EndToEndTest(VggtTestCase):
    def test_windows_files_and_resume(self):
        out = self.tmp / "run"
        self.assertEqual(self.run_cli(out, "--max-frames", "12", "--save-depth"), 0)
        dirs = windows(out)
        self.assertEqual(len(dirs), 3)
        for window in dirs:
            record = info(window)
            self.assertEqual((record["status"], record["reconstructor"]), ("ok", "vggt"))
            self.assertEqual(record["num_registered"], 4)
            self.assertIn("forward", record["timings"])
            self.assertIn("flagged_frames", record["details"])
            rec = pycolmap.Reconstruction(window / "sparse")
            self.assertEqual(rec.num_reg_images(), 4)
            cams = list(rec.cameras.values())
            self.assertEqual({(c.width, c.height) for c in cams}, {(320, 240)})  # original size
            first = rec.find_image_with_name(record["frames"][0])
            np.testing.assert_allclose(first.cam_from_world().matrix(), np.eye(3, 4), atol=1e-6)
            self.assertTrue((window / "sparse" / "points.ply").exists())
            depth = np.load(window / "depth" / f"{Path(record['frames'][1]).stem}.npz")
            self.assertEqual((depth["depth"].shape, depth["depth"].dtype), ((240, 320), np.float16))
        manifest = json.loads((out / "run.json").read_text())
        self.assertEqual(manifest["reconstructor"]["name"], "vggt")
        self.assert_memory_recorded(manifest, [info(w) for w in dirs])
        # resume: a deleted window is redone, the others are skipped
        shutil.rmtree(dirs[1])
        self.assertEqual(self.run_cli(out, "--max-frames", "12", "--save-depth"), 0)
        manifest = json.loads((out / "run.json").read_text())
        self.assertEqual([w["skipped"] for w in manifest["windows"]], [True, False, True])

    def assert_memory_recorded(self, manifest, records):
        """Automatic batch size: a first batch of one window, then sizes from the model."""
        memory = manifest["memory"]
        observations = memory["observations"]
        self.assertEqual(observations[0]["windows"], 1)
        self.assertEqual(sum(o["windows"] for o in observations), len(records))
        self.assertGreater(memory["per_window_mb"], 0)
        self.assertEqual(memory["budget_source"], "available system memory")
        for record in records:
            self.assertGreater(record["memory"]["peak_rss_mb"], 0)
            self.assertEqual(set(record["stages"]), {"tracking", "bundle_adjustment", "export"})
        self.assertEqual(list(manifest["profile"]), ["load", "preprocess", "forward", "tracking",
                                                     "bundle_adjustment", "export"])

    def test_profile_table_and_memory_cap(self):
        out = self.tmp / "profile"
        with redirect_stdout(StringIO()) as stdout:
            self.assertEqual(self.run_cli(out, "--max-frames", "12", "--profile-memory",
                                          "--max-memory-gb", "0.05"), 0)
        table = stdout.getvalue().splitlines()
        self.assertEqual([line.split()[0] for line in table[:7]],
                         ["stage", "load", "preprocess", "forward", "tracking",
                          "bundle_adjustment", "export"])
        self.assertEqual(table[3].split()[1], "3")  # three forwards: one window each
        manifest = json.loads((out / "run.json").read_text())
        memory = manifest["memory"]
        self.assertEqual(memory["budget_source"], "--max-memory-gb 0.05")
        busy = manifest["throughput"]  # forward and tracking on the device, the rest CPU
        rows = manifest["profile"]
        self.assertAlmostEqual(busy["device_busy_s"], rows["forward"]["seconds"]
                               + rows["tracking"]["seconds"], delta=0.01)
        self.assertEqual(busy["windows"], 3)
        self.assertTrue(0.0 <= busy["device_idle_fraction"] < 1.0)
        self.assertIn("device busy", stdout.getvalue().splitlines()[7])
        self.assertEqual([o["windows"] for o in memory["observations"]], [1, 1, 1])

    def test_without_ba_points_come_from_depth(self):
        out = self.tmp / "noba"
        # the default structure checks: every frame sees the points its depth gave
        self.assertEqual(self.run_cli(out, "--max-frames", "4", "--no-use-ba",
                                      "--conf-thres-value", "0", "--min-points", "50",
                                      "--min-frame-observations", "20"), 0)
        rec = pycolmap.Reconstruction(windows(out)[0] / "sparse")
        self.assertGreater(rec.num_points3D(), 100)
        seen = [rec.images[i].num_points3D for i in rec.reg_image_ids()]
        self.assertEqual((len(seen), sum(seen)), (4, rec.num_points3D()))
        self.assertGreaterEqual(info(windows(out)[0])["checks"]["fewest_frame_observations"], 20)

    def test_a_window_that_fails_leaves_the_others(self):
        frames = frames_with_blank_window(IMAGES, self.tmp / "frames")
        out = self.tmp / "fail"
        self.assertEqual(self.run_cli(out, images=frames), 1)
        self.assertEqual([info(w)["status"] for w in windows(out)], ["ok", "failed", "ok"])
        self.assertIn("keypoint", info(windows(out)[1])["error"])


class ProgressTest(VggtTestCase):
    def test_progress_names_each_stage_and_window(self):
        from pipeline.core.windows import create_windows
        from pipeline.io.frames import list_image_files, prepare_frames
        from pipeline.runner import build_reconstructor, process_window_batch

        out = self.tmp / "progress"
        config = PipelineConfig(output_dir=out, input_dir=IMAGES, reconstructor="vggt",
                                model=str(self.model), max_query_pts=16, query_frame_num=1,
                                min_points=0, min_frame_observations=0)
        frames = prepare_frames(list_image_files(IMAGES)[:8], out / "cache", show_progress=False)
        seen = []
        with build_reconstructor(config) as reconstructor:
            reconstructor.progress = seen.append
            process_window_batch(create_windows(frames, 4, 4), 0, config,
                                 reconstructor=reconstructor)
        # the device's part of every window first (tracking), then each window's CPU part
        finishing = ["bundle adjustment", "export"]
        self.assertEqual(seen, ["preprocess windows 0-1", "forward windows 0-1",
                                "tracking, window 0", "tracking, window 1",
                                *(f"{stage}, window {w}" for w in (0, 1) for stage in finishing)])


class BatchingTest(VggtTestCase):
    def test_batched_forward_equals_one_at_a_time(self):
        model = load_model(self.model)
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(IMAGES.iterdir())[:8]]
        a = preprocess_frames(frames[:4]).images
        b = preprocess_frames(frames[4:]).images
        with torch.inference_mode():
            batched = model(torch.stack([a, b]))
            single = [model(x[None]) for x in (a, b)]
        for key in ("pose_enc", "depth", "depth_conf"):
            joined = torch.cat([s[key] for s in single])
            torch.testing.assert_close(batched[key], joined, rtol=1e-4, atol=1e-5)

    def test_batch_size_does_not_change_the_predictions(self):
        """Batched or one at a time, each window gets the same network output (its saved
        depth and confidence, float16) and the same fate. Its poses are not compared: the
        tiny model's random weights predict cameras that disagree with its tracks by about
        16 px, at the 8 px inlier threshold, so the last-bit differences of a batched matrix
        product (oneDNN blocks by batch shape: 1e-6) decide which tracks survive on some CPUs;
        real checkpoints are compared through test_batched_forward_equals_one_at_a_time."""
        one, many = self.tmp / "one", self.tmp / "many"
        for out, size in ((one, "1"), (many, "3")):
            self.assertEqual(self.run_cli(out, "--max-frames", "12", "--window-batch-size",
                                          size, "--save-depth"), 0)
        manifest = json.loads((many / "run.json").read_text())
        self.assertEqual((manifest["num_windows"], manifest["memory"]), (3, None))
        self.assertEqual(len(windows(one)), 3)
        for w1, w2 in zip(windows(one), windows(many)):
            self.assertEqual((info(w1)["status"], info(w1)["registered_frames"]),
                             (info(w2)["status"], info(w2)["registered_frames"]))
            for name in info(w1)["frames"]:
                stem = Path(name).stem
                with np.load(w1 / "depth" / f"{stem}.npz") as a, \
                        np.load(w2 / "depth" / f"{stem}.npz") as b:
                    for key in ("depth", "confidence"):
                        np.testing.assert_allclose(a[key].astype(np.float32),
                                                   b[key].astype(np.float32),
                                                   rtol=2e-3, atol=1e-3)

    def test_cpu_offload_under_accelerate_gives_the_same_window(self):
        plain, offload = self.tmp / "plain", self.tmp / "offload"
        self.assertEqual(self.run_cli(plain, "--max-frames", "4"), 0)
        self.assertEqual(self.run_cli(offload, "--max-frames", "4", "--cpu-offload",
                                      "--use-accelerate"), 0)
        self.assertTrue(json.loads((offload / "run.json").read_text())
                        ["reconstructor"]["cpu_offload"])
        r1, r2 = (pycolmap.Reconstruction(windows(o)[0] / "sparse") for o in (plain, offload))
        for name in info(windows(plain)[0])["frames"]:
            np.testing.assert_allclose(r1.find_image_with_name(name).cam_from_world().matrix(),
                                       r2.find_image_with_name(name).cam_from_world().matrix(),
                                       atol=1e-6)


@pytest.mark.slow
class OutOfMemoryTest(VggtTestCase):
    """Out-of-memory errors injected into the network's forward are recovered from."""

    def run_batch(self, fail, pool=None, events=None, error=None, **options):
        """The batch of windows 0-1 with ``fail(batch, options, width)`` deciding which forwards
        run out of memory (raising ``error()``, a ``torch.OutOfMemoryError`` by default); with
        ``pool``, through the pipelined path."""
        from pipeline.core.windows import create_windows
        from pipeline.exec.executor import result_of
        from pipeline.io.frames import list_image_files, prepare_frames
        from pipeline.runner import (
            build_reconstructor,
            finish_window,
            process_window_batch,
            start_window_batch,
        )

        out = self.tmp / f"oom{len(list(self.tmp.iterdir()))}"
        config = PipelineConfig(output_dir=out, input_dir=IMAGES, reconstructor="vggt",
                                model=str(self.model), max_query_pts=16, query_frame_num=1,
                                show_progress=False, min_points=0, min_frame_observations=0,
                                **options)
        frames = prepare_frames(list_image_files(IMAGES)[:8], out / "cache", show_progress=False)
        reconstructor = build_reconstructor(config)
        real, calls = reconstructor.model.forward, []

        def forward(images, *args, options=None, **kwargs):
            calls.append((images.shape[0], options.frames_chunk_size, options.frame_batch_size))
            if events is not None:
                events.append(f"forward {images.shape[0]}")
            if fail(images.shape[0], options, images.shape[-1]):
                raise (error or (lambda: torch.OutOfMemoryError("injected: CUDA out of memory")))()
            return real(images, *args, options=options, **kwargs)

        reconstructor.model.forward = forward
        windows = create_windows(frames, 4, 4)
        if pool is None:
            records = process_window_batch(windows, 0, config, reconstructor=reconstructor)
        else:
            flights = start_window_batch(windows, 0, config, reconstructor, pool)
            records = [finish_window(f, result_of(f.pending), config, reconstructor)
                       for f in flights]
        return records, calls

    def test_windows_reach_the_workers_only_once_their_batch_fits(self):
        from pipeline.exec.executor import CpuPool

        events = []

        class RecordingPool(CpuPool):
            def submit(self, fn, *args):
                events.append("submit")
                return super().submit(fn, *args)

        pool = RecordingPool(1)
        try:
            records, _ = self.run_batch(lambda b, o, w: b > 1, pool=pool, events=events)
        finally:
            pool.close()
        self.assertEqual([r["status"] for r in records], ["ok"] * 2)
        self.assertEqual(events, ["forward 2", "forward 1", "forward 1", "submit", "submit"])

    def test_batch_is_halved_until_it_fits(self):
        records, calls = self.run_batch(lambda b, o, w: b > 1)
        self.assertEqual([r["status"] for r in records], ["ok"] * 2)
        self.assertEqual([c[0] for c in calls], [2, 1, 1])

    def test_a_library_failing_to_allocate_is_out_of_memory_too(self):
        """cuBLAS and cuDNN report a failed allocation as a plain RuntimeError."""
        cublas = lambda: RuntimeError(  # noqa: E731
            "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        records, calls = self.run_batch(lambda b, o, w: b > 1, error=cublas)
        self.assertEqual([r["status"] for r in records], ["ok"] * 2)
        self.assertEqual([c[0] for c in calls], [2, 1, 1])
        other = lambda: RuntimeError("shape mismatch")  # noqa: E731 - not memory: not retried
        records, calls = self.run_batch(lambda b, o, w: b > 1, error=other)
        self.assertEqual([c[0] for c in calls], [2])
        self.assertEqual({r["status"] for r in records}, {"failed"})

    def test_single_window_falls_back_to_smaller_chunks(self):
        records, calls = self.run_batch(lambda b, o, w: b > 1 or o.frames_chunk_size > 1)
        self.assertEqual([r["status"] for r in records], ["ok"] * 2)
        self.assertTrue(all("frames_chunk_size=1" in r["details"]["memory_fallback"]
                            for r in records))

    def test_approximate_only_when_allowed(self):
        needs_groups = lambda b, o, w: o.frame_batch_size is None  # noqa: E731
        records, _ = self.run_batch(needs_groups)
        self.assertEqual({r["status"] for r in records}, {"failed"})
        self.assertIn("--allow-approximate", records[0]["error"])
        records, _ = self.run_batch(needs_groups, allow_approximate=True)
        self.assertEqual([r["status"] for r in records], ["ok"] * 2)
        self.assertIn("approximate", records[0]["details"]["memory_fallback"])

    def test_resolution_is_lowered_only_when_not_fixed(self):
        too_wide = lambda b, o, w: w > 400  # noqa: E731 - fits from 392 px down
        records, calls = self.run_batch(too_wide)
        self.assertEqual([r["status"] for r in records], ["ok"] * 2)
        self.assertIn("process_res=392", records[0]["details"]["memory_fallback"])
        self.assertNotIn("memory_fallback", records[1]["details"])  # kept for the next window
        self.assertEqual(records[1]["details"]["process_res"], 392)
        records, _ = self.run_batch(too_wide, process_res=518)
        self.assertEqual({r["status"] for r in records}, {"failed"})


class ChoosingTest(VggtTestCase):
    def test_auto(self):
        config = PipelineConfig(output_dir=self.tmp / "o", reconstructor="auto",
                                model=str(self.model))
        self.assertEqual(choose_reconstructor(config)[0], "vggt")
        missing = PipelineConfig(output_dir=self.tmp / "o", reconstructor="auto",
                                 model=str(self.tmp / "no-such-checkpoint"))
        name, reason = choose_reconstructor(missing)
        self.assertEqual(name, "colmap")
        self.assertIn("no-such-checkpoint", reason)

    def test_auto_run_records_its_choice(self):
        out = self.tmp / "auto"
        code = main(["--input-dir", str(IMAGES), "--output-dir", str(out), "--max-frames", "4",
                     "--model", str(self.tmp / "no-such-checkpoint"), "-q"])
        self.assertEqual(code, 0)
        manifest = json.loads((out / "run.json").read_text())
        self.assertEqual(manifest["reconstructor"]["name"], "colmap")
        self.assertIn("no-such-checkpoint", manifest["reconstructor"]["chosen_because"])

    def test_vggt_without_weights_is_a_clear_error(self):
        err = StringIO()
        with redirect_stderr(err):
            code = main(["--input-dir", str(IMAGES), "--output-dir", str(self.tmp / "x"),
                         "--reconstructor", "vggt", "--model", str(self.tmp / "none"), "-q"])
        self.assertEqual(code, 2)
        self.assertEqual(len(err.getvalue().strip().splitlines()), 1)
        self.assertIn("--reconstructor vggt", err.getvalue())


class OriginalGridTest(unittest.TestCase):
    def test_maps_return_to_original_pixels(self):
        for mode in ("crop", "pad"):
            frame = np.zeros((300, 500, 3), np.uint8)
            prepared = preprocess_frames([frame], PreprocessOptions(mode=mode))
            t = prepared.transforms[0]
            h, w = prepared.images.shape[-2:]
            # a network map holding each pixel's original x coordinate (COLMAP convention)
            cols, rows = np.meshgrid(np.arange(w), np.arange(h))
            orig = t.to_original(np.stack([cols, rows], -1).astype(float), "index") + 0.5
            back = to_original_grid(torch.as_tensor(orig[None, ..., 0], dtype=torch.float32), [t])
            x = np.arange(500) + 0.5
            valid = back[0] != 0
            self.assertGreater(valid.mean(), 0.5)
            np.testing.assert_allclose(back[0][valid], np.broadcast_to(x, (300, 500))[valid],
                                       atol=1e-3)


if __name__ == "__main__":
    unittest.main()


def test_a_da3_checkpoint_given_to_vggt_is_refused_and_the_windows_are_kept(
        tmp_path, tiny_vggt_checkpoint, tiny_da3_checkpoint):
    """Before, it loaded, every batch failed on the forward, and the windows a user already
    had were replaced by failed records (the checkpoint's change made them stale)."""
    out = tmp_path / "out"
    args = ["--input-dir", str(IMAGES), "--output-dir", str(out), "--max-frames", "8",
            "--reconstructor", "vggt", *FAST]
    assert main([*args, "--model", str(tiny_vggt_checkpoint)]) == 0
    before = {w.name: (info(w), sorted(p.name for p in (w / "sparse").iterdir()))
              for w in windows(out)}
    with redirect_stderr(StringIO()) as stderr:
        assert main([*args, "--model", str(tiny_da3_checkpoint)]) == 2
    assert "holds a da3 network, not vggt (it is for --reconstructor da3)" in stderr.getvalue()
    after = {w.name: (info(w), sorted(p.name for p in (w / "sparse").iterdir()))
             for w in windows(out)}
    assert after == before and all(i["status"] == "ok" for i, _ in after.values())


def test_half_precision_on_the_cpu_is_warned_about(tiny_vggt_checkpoint, caplog):
    from pipeline.reconstructors.vggt import VggtOptions, VggtReconstructor

    with caplog.at_level("WARNING", logger="pipeline"):
        VggtReconstructor(VggtOptions(model=str(tiny_vggt_checkpoint), device="cpu",
                                      dtype="auto")).close()
        assert "on the CPU" not in caplog.text
        VggtReconstructor(VggtOptions(model=str(tiny_vggt_checkpoint), device="cpu",
                                      dtype="float16")).close()
    assert "float16 on the CPU (--mixed-precision): slower than float32" in caplog.text


def test_a_network_size_far_above_the_frames_is_warned_about(caplog):
    from types import SimpleNamespace

    from pipeline.io.frames import Frame
    from pipeline.reconstructors.vggt import VggtReconstructor

    frames = [Frame(i, f"{i}.png", Path(f"{i}.png"), Path(f"{i}.png"), 320, 240, "0" * 32, i)
              for i in range(4)]
    with caplog.at_level("WARNING", logger="pipeline"):
        for res in (None, 518, 14):
            VggtReconstructor.check_frames(SimpleNamespace(process_res=res), frames)
        assert "enlarges" not in caplog.text  # the network's own size enlarges small frames
        VggtReconstructor.check_frames(SimpleNamespace(process_res=14000), frames)
    assert "--process-res 14000 enlarges the 320 px frames 43.8x" in caplog.text
