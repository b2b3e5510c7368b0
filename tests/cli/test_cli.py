"""The command line: flags, help, video input end to end."""

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT
from pipeline.cli.main import build_parser, config_from_args, main
from tests.helpers import write_video


class ParserTest(unittest.TestCase):
    def test_defaults(self):
        args = build_parser().parse_args(["--input-dir", "x", "--output-dir", "y"])
        config = config_from_args(args)
        self.assertEqual((config.window_size, config.window_stride, config.window_batch_size),
                         (8, 4, None))
        self.assertEqual((config.reconstructor, config.camera_type), ("auto", "SIMPLE_PINHOLE"))
        self.assertFalse(config.shared_camera or config.overwrite or config.skip_bad_frames)

    def test_every_flag_reaches_the_configuration(self):
        from pipeline.cli.command import CLIENT_DESTS
        from pipeline.infra.options import flagged_fields
        from pipeline.runner.config import PipelineConfig

        names = {dest for dest, _, _ in flagged_fields(PipelineConfig)}  # "merge_options.refine"
        dests = {a.dest for a in build_parser()._actions} - {"help"}
        self.assertEqual(dests - set(CLIENT_DESTS), names)
        self.assertEqual(dests & set(CLIENT_DESTS), set(CLIENT_DESTS))

    def test_help_explains_every_flag(self):
        parser = build_parser()
        for action in parser._actions:
            self.assertTrue(action.help, f"{action.option_strings} has no help")
        text = parser.format_help()
        for flag in ("--input-dir", "--input-video", "--fps", "--window-size", "--window-stride",
                     "--window-batch-size", "--reconstructor", "--camera-type", "--shared-camera",
                     "--max-frames", "--overwrite", "--verbose", "--quiet", "--skip-bad-frames"):
            self.assertIn(flag, text)

    def test_inputs_are_exclusive_and_fps_needs_video(self):
        with self.assertRaises(SystemExit) as ctx:
            build_parser().parse_args(["--input-dir", "a", "--input-video", "b",
                                       "--output-dir", "o"])
        self.assertEqual(ctx.exception.code, 2)
        with self.assertRaises(SystemExit):
            main(["--input-dir", "a", "--fps", "2", "--output-dir", "o"])

    def test_script_runs_as_a_program(self):
        proc = subprocess.run([sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), "--help"],
                              capture_output=True, text=True, check=False)
        self.assertEqual(proc.returncode, 0)
        self.assertIn("--window-size", proc.stdout)


@pytest.mark.slow
class VideoInputTest(unittest.TestCase):
    def test_video_end_to_end(self):
        with tempfile.TemporaryDirectory() as tmp:
            video, out = Path(tmp) / "clip.mp4", Path(tmp) / "out"
            write_video(video, sorted(IMAGES.iterdir())[:16], rate=8)
            args = ["--input-video", str(video), "--fps", "4", "--output-dir", str(out),
                    "--window-size", "8", "-q"]
            self.assertEqual(main(args), 0)
            extracted = sorted((out / "frames").glob("frame_*.jpg"))
            self.assertEqual(len(extracted), 8)  # 2 s of video at 4 fps
            info = json.loads((out / "batch_000" / "window_000" / "window_info.json").read_text())
            self.assertEqual(info["frames"], [p.name for p in extracted])
            self.assertGreaterEqual(info["num_registered"], 7)
            stamp = extracted[0].stat().st_mtime_ns
            self.assertEqual(main(args), 0)
            self.assertEqual(extracted[0].stat().st_mtime_ns, stamp)  # frames extracted once


if __name__ == "__main__":
    unittest.main()
