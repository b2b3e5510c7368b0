#!/usr/bin/env python
"""One window at a time against batched, on the same machine in one run.

Runs the pipeline twice over the same windows, first one window at a time (batch size 1, each
window finished before the next: ``--cpu-workers 0``), then batched and pipelined
(``--batch-size`` windows together, windows finished by worker processes while the next batches
run, the default executor), checks that both give the same windows (status, registered
frames, and camera centres that agree after a Sim(3) alignment), and prints wall time, windows
per second and the ratio. Every number is measured in this run.

    python demo_batch_processing.py                      # testdata, classical reconstructor
    python demo_batch_processing.py --reconstructor vggt # the network (generated weights if
                                                         # the real ones are not on this machine)
    python demo_batch_processing.py --input-dir FRAMES --batch-size 8
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.geometry import ate, camera_centers
from pipeline.infra.hub import VGGT_1B
from pipeline.io.output import read_window_poses
from pipeline.runner import RunSummary, run
from pipeline.runner.config import PipelineConfig

ROOT = Path(__file__).resolve().parent
AGREEMENT_TOLERANCE = 0.01
"""Largest camera-centre RMSE between the two runs, as a fraction of the window's extent."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input-dir", type=Path, default=ROOT / "testdata" / "synthetic" / "images",
                   help="folder of frames (default: the bundled synthetic sequence)")
    p.add_argument("--output-dir", type=Path, help="where both runs are written "
                   "(default: a temporary folder, deleted afterwards)")
    p.add_argument("--window-size", type=int, default=8)
    p.add_argument("--window-stride", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4, help="windows per batch in the batched run")
    p.add_argument("--max-frames", type=int)
    p.add_argument("--reconstructor", choices=("colmap", "vggt"), default="colmap")
    p.add_argument("--model", default=VGGT_1B, help="vggt checkpoint (file, folder "
                   "or hub id); when absent, an untrained network with generated weights is used")
    p.add_argument("--generated-size", choices=("tiny", "full"), default=None,
                   help="size of the generated network when the weights are absent (default: "
                   "full on a GPU, tiny on a CPU)")
    p.add_argument("--max-query-pts", type=int, default=256, help="vggt: keypoints per window")
    return p.parse_args(argv)


def vggt_model(args: argparse.Namespace, scratch: Path) -> str:
    """The checkpoint to use: the user's, or a generated one written to ``scratch`` (said so;
    a generated network predicts no real structure, so the runs then skip the structure checks
    that decide a window's status)."""
    from pipeline.algo.models import VGGTConfig, weights_available
    from pipeline.algo.models.generated_checkpoint import write_generated_checkpoint

    if weights_available(args.model):
        return args.model
    import torch

    size = args.generated_size or ("full" if torch.cuda.is_available() else "tiny")
    config = VGGTConfig.vggt_1b() if size == "full" else VGGTConfig.tiny()
    write_generated_checkpoint(scratch / "generated_vggt", config)
    print(f"NOTE: no weights of {args.model} on this machine; using an untrained {size} VGGT "
          "with generated weights. Timings are real; the reconstructions mean nothing (the "
          "structure checks are off).")
    return str(scratch / "generated_vggt")


def timed_runs(base: PipelineConfig, batch_size: int) -> dict[str, RunSummary]:
    """Run one-at-a-time (one window per batch, each finished before the next: the serial
    path), then batched and pipelined (the default executor), each into its own sub-folder,
    from scratch."""
    modes = {
        "one at a time": replace(base, output_dir=base.output_dir / "one_at_a_time",
                                 window_batch_size=1, cpu_workers=0),
        "batched": replace(base, output_dir=base.output_dir / "batched",
                           window_batch_size=batch_size),
    }
    return {name: run(config) for name, config in modes.items()}


def window_centres(window_dir: Path) -> dict[str, np.ndarray]:
    """Camera centres of a window's registered frames, by frame name."""
    return {name: camera_centers(pose[None])[0]
            for name, pose in read_window_poses(window_dir).items()}


def same_poses(a: Path, b: Path, tolerance: float = 1e-3) -> bool:
    """Whether two windows hold the same poses without any alignment (same network, same
    inputs: batching must not change the predictions)."""
    pa, pb = read_window_poses(a), read_window_poses(b)
    return pa.keys() == pb.keys() and all(np.abs(pa[n] - pb[n]).max() <= tolerance for n in pa)


def compare(a: RunSummary, b: RunSummary) -> list[str]:
    """Differences between two runs over the same windows (empty when they agree).

    Windows agree when their poses are equal as written, or (classical SfM fixes its own gauge)
    when their camera centres agree after a Sim(3) alignment.
    """
    problems = []
    for wa, wb in zip(a.windows, b.windows, strict=True):
        label = wa["path"]
        if (wa["status"], wa["num_registered"]) != (wb["status"], wb["num_registered"]):
            problems.append(f"{label}: {wa['status']}/{wa['num_registered']} registered vs "
                            f"{wb['status']}/{wb['num_registered']}")
            continue
        if wa["status"] != "ok" or same_poses(a.output_dir / label, b.output_dir / label):
            continue
        ca, cb = window_centres(a.output_dir / label), window_centres(b.output_dir / label)
        names = sorted(set(ca) & set(cb))
        if len(names) < 3:
            problems.append(f"{label}: fewer than 3 common registered frames")
            continue
        result = ate(np.array([cb[n] for n in names]), np.array([ca[n] for n in names]))
        if not result.rmse_fraction <= AGREEMENT_TOLERANCE:
            problems.append(f"{label}: camera centres differ by {100 * result.rmse_fraction:.2f}% "
                            "of the window's extent")
    return problems


def report(summaries: dict[str, RunSummary]) -> None:
    """Print wall time, windows/s and the ratio."""
    print(f"{'mode':<15}{'windows':>8}{'ok':>5}{'wall s':>9}{'windows/s':>11}")
    for name, s in summaries.items():
        rate = len(s.windows) / s.wall_time
        print(f"{name:<15}{len(s.windows):>8}{s.count('ok'):>5}{s.wall_time:>9.1f}{rate:>11.3f}")
    one, batched = summaries["one at a time"], summaries["batched"]
    print(f"batched is {one.wall_time / batched.wall_time:.2f}x the speed of one at a time")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.output_dir or Path(tmp)
        model = vggt_model(args, Path(tmp)) if args.reconstructor == "vggt" else args.model
        network = {}  # options only the network reads (the others refuse them)
        if args.reconstructor == "vggt":
            network = {"model": model, "max_query_pts": args.max_query_pts}
            if model != args.model:  # generated weights: no real structure to check
                network.update(min_points=0, min_frame_observations=0)
        base = PipelineConfig(input_dir=args.input_dir, output_dir=out, overwrite=True,
                              window_size=args.window_size, window_stride=args.window_stride,
                              max_frames=args.max_frames, reconstructor=args.reconstructor,
                              show_progress=False, **network)
        try:
            summaries = timed_runs(base, args.batch_size)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report(summaries)
        problems = compare(summaries["one at a time"], summaries["batched"])
    for problem in problems:
        print(f"DISAGREE {problem}")
    print("results agree" if not problems else f"{len(problems)} windows disagree")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
