"""The da3 reconstructor and the exports end to end, with a tiny DA3 whose generated weights the
tests write; DA3's preprocessing methods and their exact inverse."""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import trimesh

from conftest import IMAGES
from pipeline.algo.exports import parse_export_format
from pipeline.algo.models.generated_checkpoint import write_generated_da3_checkpoint
from pipeline.algo.preprocess import DA3_METHODS, PreprocessOptions, preprocess_frames
from pipeline.cli.main import main
from tests.helpers import frames_with_blank_window
from tests.helpers import window_dirs as windows
from tests.helpers import window_info as info

FAST = ("--window-size", "4", "--window-stride", "4", "--process-res", "140", "-q",
        "--min-points", "0", "--min-frame-observations", "0")
"""Small windows and grid; generated weights predict no real structure, so the structure
checks (tested on real reconstructions in tests/test_ux.py) are off."""


@pytest.fixture(scope="class", autouse=True)
def _tiny_da3(request, tiny_da3_checkpoint):
    """The session's tiny DA3 checkpoint (conftest), as the test class's ``model``."""
    if request.cls is not None:
        request.cls.model = tiny_da3_checkpoint


class Da3TestCase(unittest.TestCase):
    model: Path
    """The tiny DA3 of generated weights (set by the ``_tiny_da3`` fixture)."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.tmp = Path(cls._tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def run_cli(self, out: Path, *args: str, images: Path = IMAGES) -> int:
        return main(["--input-dir", str(images), "--output-dir", str(out), "--reconstructor",
                     "da3", "--model", str(self.model), *FAST, *args])


class EndToEndTest(Da3TestCase):
    def test_windows_and_every_export(self):
        out = self.tmp / "run"
        code = self.run_cli(out, "--max-frames", "8", "--export-format", "mini_npz-npz-glb",
                            "--num-max-points", "500")
        self.assertEqual(code, 0)
        self.assertEqual(len(windows(out)), 2)
        for window in windows(out):
            record = info(window)
            self.assertEqual((record["status"], record["reconstructor"]), ("ok", "da3"))
            self.assertEqual(record["num_registered"], 4)
            self.assertGreater(record["details"]["num_tracks"], 0)
            rec = pycolmap.Reconstruction(window / "sparse")
            self.assertEqual({(c.width, c.height) for c in rec.cameras.values()}, {(320, 240)})
            first = rec.find_image_with_name(record["frames"][0])
            np.testing.assert_allclose(first.cam_from_world().matrix(), np.eye(3, 4), atol=1e-6)
            self.assertTrue((window / "sparse" / "points.ply").exists())
            self.check_exports(window)
        manifest = json.loads((out / "run.json").read_text())
        self.assertEqual(manifest["reconstructor"]["process_res_method"], "upper_bound_resize")

    def check_exports(self, window: Path):
        mini = np.load(window / "exports" / "mini.npz")
        self.assertEqual(sorted(mini.files), ["conf", "depth", "extrinsics", "intrinsics"])
        self.assertEqual((mini["depth"].shape, mini["conf"].shape), ((4, 240, 320),) * 2)
        self.assertEqual((mini["extrinsics"].shape, mini["intrinsics"].shape),
                         ((4, 3, 4), (4, 3, 3)))
        np.testing.assert_allclose(mini["extrinsics"][0], np.eye(3, 4), atol=1e-9)
        np.testing.assert_allclose(mini["intrinsics"][:, :2, 2], [[160, 120]] * 4, atol=1e-6)
        full = np.load(window / "exports" / "full.npz")
        self.assertEqual(set(full.files), set(mini.files) | {"image", "names"})
        self.assertEqual((full["image"].shape, full["image"].dtype), ((4, 240, 320, 3), np.uint8))
        scene = trimesh.load(window / "exports" / "scene.glb")
        self.assertIsInstance(scene, trimesh.Scene)
        clouds = [g for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]
        self.assertEqual(len(clouds), 1)
        self.assertTrue(0 < len(clouds[0].vertices) <= 500)
        self.assertEqual(len(scene.geometry), 1 + 4)  # points + one frustum per camera

    def test_a_window_that_fails_leaves_the_others(self):
        frames = frames_with_blank_window(IMAGES, self.tmp / "frames")
        out = self.tmp / "fail"
        self.assertEqual(self.run_cli(out, images=frames), 1)
        self.assertEqual([info(w)["status"] for w in windows(out)], ["ok", "failed", "ok"])
        self.assertIn("keypoint", info(windows(out)[1])["error"])

    def test_nested_checkpoint_gives_metric_windows(self):
        from pipeline.algo.models.da3 import DA3Config

        nested = self.tmp / "tiny-nested"
        write_generated_da3_checkpoint(nested, DA3Config.tiny_nested())
        out = self.tmp / "nested"
        self.assertEqual(main(["--input-dir", str(IMAGES), "--output-dir", str(out),
                               "--reconstructor", "da3", "--model", str(nested), *FAST,
                               "--max-frames", "4"]), 0)
        record = info(windows(out)[0])
        self.assertEqual(record["status"], "ok")
        self.assertGreater(record["details"]["metric_scale"], 0)
        manifest = json.loads((out / "run.json").read_text())
        self.assertTrue(manifest["reconstructor"]["metric"])

    def test_da3_needs_a_model(self):
        code = main(["--input-dir", str(IMAGES), "--output-dir", str(self.tmp / "nomodel"),
                     "--reconstructor", "da3", "-q"])
        self.assertEqual(code, 2)


class OutOfMemoryTest(Da3TestCase):
    """Out-of-memory errors injected into the DA3 forward are recovered from."""

    def test_halves_the_batch_then_smaller_head_chunks_then_lower_resolution(self):
        import torch

        from pipeline.core.windows import create_windows
        from pipeline.io.frames import list_image_files, prepare_frames
        from pipeline.runner import build_reconstructor, process_window_batch
        from pipeline.runner.config import PipelineConfig

        out = self.tmp / "oom"
        config = PipelineConfig(output_dir=out, input_dir=IMAGES, reconstructor="da3",
                                model=str(self.model), max_res=252, show_progress=False,
                                min_points=0, min_frame_observations=0)
        frames = prepare_frames(list_image_files(IMAGES)[:8], out / "cache", show_progress=False)
        reconstructor = build_reconstructor(config)
        real, calls = reconstructor.model.forward, []

        def forward(images, *args, options=None, **kwargs):
            calls.append((images.shape[0], options.head_chunk_size, images.shape[-1]))
            if images.shape[0] > 1 or images.shape[-1] > 230:  # fits at 224 px, the lowest
                raise torch.OutOfMemoryError("injected: CUDA out of memory")
            return real(images, *args, options=options, **kwargs)

        reconstructor.model.forward = forward
        records = process_window_batch(create_windows(frames, 4, 4), 0, config,
                                       reconstructor=reconstructor)
        self.assertEqual([r["status"] for r in records], ["ok"] * 2)
        self.assertEqual([c[:2] for c in calls[:4]], [(2, 8), (1, 8), (1, 2), (1, 1)])
        self.assertEqual(calls[4][2], 224)  # 252 * 7/8 = 220.5 -> 224, the lowest automatic
        self.assertIn("head_chunk_size=1, process_res=224",
                      records[0]["details"]["memory_fallback"])
        self.assertEqual(records[1]["details"]["process_res"], 224)


def test_export_format_parsing():
    assert parse_export_format("glb") == ("colmap", "glb")
    assert parse_export_format("colmap-mini_npz-glb") == ("colmap", "mini_npz", "glb")
    with pytest.raises(ValueError):
        parse_export_format("colmap-ply")


@pytest.mark.parametrize("method", DA3_METHODS)
@pytest.mark.parametrize("hw", [(240, 320), (680, 1208), (1208, 680), (504, 376), (100, 100)])
def test_da3_methods_sizes_and_exact_inverse(method, hw):
    frame = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    out = preprocess_frames([frame], PreprocessOptions(mode=method, process_res=504))
    t = out.transforms[0]
    h, w = out.images.shape[-2:]
    assert h % 14 == 0 and w % 14 == 0 and t.network_hw == (h, w)
    bound = max(h, w) if method.startswith("upper") else min(h, w)
    assert abs(bound - 504) <= 7 if method.endswith("resize") else bound <= 504
    pts = np.random.default_rng(1).uniform(0, [hw[1], hw[0]], (50, 2))
    for convention in ("colmap", "index"):
        back = t.to_original(t.to_network(pts, convention), convention)
        np.testing.assert_allclose(back, pts, atol=1e-9)
    k = np.array([[300.0, 0, hw[1] / 2], [0, 300.0, hw[0] / 2], [0, 0, 1]])
    np.testing.assert_allclose(t.intrinsics_to_original(t.intrinsics_to_network(k)), k, atol=1e-9)


def test_da3_sizes_follow_the_reference():
    sizes = {m: tuple(preprocess_frames([np.zeros((376, 504, 3), np.uint8)],
                                        PreprocessOptions(mode=m)).images.shape[-2:])
             for m in DA3_METHODS}
    assert sizes == {"upper_bound_resize": (378, 504), "upper_bound_crop": (364, 504),
                     "lower_bound_resize": (504, 672), "lower_bound_crop": (504, 672)}
    crop = preprocess_frames([np.zeros((680, 1208, 3), np.uint8)],
                             PreprocessOptions(mode="lower_bound_crop")).transforms[0]
    assert crop.resized_hw == (504, 895) and crop.offset_xy == (-6.0, 0.0)
