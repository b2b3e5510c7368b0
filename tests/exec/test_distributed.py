"""Several processes through Accelerate: the split of the windows and one merged run.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT
from pipeline.exec.distributed import ProcessGroup, launched_by_accelerate, process_group
from tests.helpers import window_dirs


class ProcessGroupTest(unittest.TestCase):
    def test_each_process_takes_every_nth_window(self):
        items = list(range(7))
        shares = [ProcessGroup(rank=r, world_size=3).take(items) for r in range(3)]
        self.assertEqual(shares, [[0, 3, 6], [1, 4], [2, 5]])

    def test_one_process_without_accelerate(self):
        if launched_by_accelerate():
            self.skipTest("running under accelerate launch")
        group = process_group(False, "auto")
        self.assertEqual((group.rank, group.world_size, group.is_main, group.state),
                         (0, 1, True, None))
        group.barrier()  # a no-op

    def test_use_accelerate_in_one_process(self):
        if launched_by_accelerate():
            self.skipTest("running under accelerate launch")
        group = process_group(True, "cpu")
        self.assertEqual((group.world_size, group.device), (1, "cpu"))
        self.assertIsNotNone(group.state)


@pytest.mark.slow
class AccelerateLaunchTest(unittest.TestCase):
    """``accelerate launch`` with two CPU processes (gloo) on the classical reconstructor."""

    def test_two_processes_split_the_windows_and_merge_run_json(self):
        accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
        if accelerate is None:
            self.skipTest("the accelerate command is not installed")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   str(ROOT / "vae_data_pipeline_batch.py"), "--input-dir", str(IMAGES),
                   "--output-dir", str(out), "--reconstructor", "colmap", "--device", "cpu",
                   "--max-frames", "16", "-q"]
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                                  cwd=ROOT)
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            manifest = json.loads((out / "run.json").read_text())
            self.assertEqual((manifest["status"], manifest["summary"]["ok"]), ("finished", 3))
            processes = manifest["processes"]
            self.assertEqual([p["rank"] for p in processes], [0, 1])
            self.assertEqual([p["windows"] for p in processes], [[0, 2], [1]])
            self.assertEqual(len(window_dirs(out)), 3)
            self.assertEqual(list(out.glob(".run.rank*")), [])
            self.assertEqual(proc.stdout.count("windows:"), 1)  # one summary line, process 0's
