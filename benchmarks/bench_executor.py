"""Benchmark: the serial path (``--cpu-workers 0``) against the pipelined executor, side by side.

On a longer synthetic sequence (``testdata/make_testdata.py --num-frames 120 --path loop``,
made once in the scratch folder), each configuration runs twice from scratch through the
command line, serial then pipelined, and the two outputs are compared window by window (status,
registered frames, camera poses). Printed per run: wall time, windows/s, the main process's busy
time (decode when not ahead, forward, tracking), the finishing jobs' busy time (summed over the
workers), the device's idle fraction (vggt) and the time the main process waited for frames; and
the ratio of the pipelined wall time to the larger of the two stages' busy times (finishing per
worker).

Configurations: ``vggt`` (a tiny VGGT with generated weights: an untrained network, so the
window checks are off; its timings are those of the pipeline's stages, not of VGGT-1B),
``colmap`` (classical, chunks of the sequence: windows cut out of chunk models) and
``colmap-alone`` (classical, each window from its own frames: ``--chunk-frames 0``).

    python benchmarks/bench_executor.py                    # all three, 120 frames
    python benchmarks/bench_executor.py --configs vggt --frames 48 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "vggt": ["--reconstructor", "vggt", "--max-query-pts", "256", "--min-points", "0",
             "--min-frame-observations", "0"],
    "colmap": ["--reconstructor", "colmap"],
    "colmap-alone": ["--reconstructor", "colmap", "--chunk-frames", "0"],
}


def make_inputs(scratch: Path, frames: int) -> tuple[Path, Path]:
    """The sequence and a tiny generated VGGT checkpoint, made once in ``scratch``."""
    from pipeline.algo.models import VGGTConfig
    from pipeline.algo.models.generated_checkpoint import write_generated_checkpoint

    data = scratch / f"loop{frames}"
    if not (data / "images").is_dir():
        subprocess.run([sys.executable, str(ROOT / "testdata" / "make_testdata.py"), "--out",
                        str(data), "--num-frames", str(frames), "--path", "loop"], check=True)
    model = scratch / "tiny_vggt"
    if not (model / "config.json").is_file():
        write_generated_checkpoint(model, VGGTConfig.tiny())
    return data / "images", model


def run_once(images: Path, out: Path, args: list[str], workers: int | None) -> dict:
    """One run from scratch through the command line; its ``run.json``."""
    cmd = [sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), "--input-dir", str(images),
           "--output-dir", str(out), "--overwrite", "-q", *args]
    if workers is not None:
        cmd += ["--cpu-workers", str(workers)]
    start = time.perf_counter()
    subprocess.run(cmd, check=False)
    manifest = json.loads((out / "run.json").read_text())
    manifest["process_wall_s"] = time.perf_counter() - start
    return manifest


def compare(a: Path, b: Path) -> dict:
    """Windows whose status or registered frames differ, and the largest pose difference."""
    from pipeline.io.output import iter_windows, read_window_info, read_window_poses

    differ, worst = 0, 0.0
    for window in iter_windows(a):
        ia, ib = read_window_info(a / window.path), read_window_info(b / window.path)
        if (ia["status"], ia["registered_frames"]) != (ib["status"], ib["registered_frames"]):
            differ += 1
            continue
        if ia["status"] != "ok":
            continue
        pa, pb = read_window_poses(a / window.path), read_window_poses(b / window.path)
        worst = max([worst, *(float(np.abs(pa[k] - pb[k]).max()) for k in pa)])
    return {"windows_differing": differ, "max_pose_difference": worst}


def row(name: str, mode: str, t: dict, ok: int) -> str:
    idle = t.get("device_idle_fraction")
    workers = t.get("cpu_workers") or 0
    stage = max(t["main_busy_s"], t["finish_busy_s"] / max(1, workers)) if workers else None
    ratio = f"{t['wall_s'] / stage:.2f}" if stage else "-"
    return (f"| {name} | {mode} | {t['wall_s']:.1f} | {ok}/{t['windows']} | "
            f"{t['windows_per_s']:.3f} | {t['main_busy_s']:.1f} | {t['finish_busy_s']:.1f} | "
            f"{'-' if idle is None else f'{100 * idle:.0f}%'} | {t.get('loader_wait_s', 0):.1f} "
            f"| {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--workers", type=int, default=None,
                        help="--cpu-workers of the pipelined runs (default: the pipeline's)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench_executor"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    images, model = make_inputs(args.scratch, args.frames)
    results, lines = {}, []
    for name in args.configs:
        extra = CONFIGS[name] + (["--model", str(model)] if name == "vggt" else [])
        runs = {}
        for mode, workers in (("serial", 0), ("pipelined", args.workers)):
            out = args.scratch / f"{name}-{mode}"
            runs[mode] = run_once(images, out, extra, workers)
        same = compare(args.scratch / f"{name}-serial", args.scratch / f"{name}-pipelined")
        results[name] = {mode: {"throughput": m["throughput"], "summary": m["summary"]}
                         for mode, m in runs.items()} | {"comparison": same}
        for mode, m in runs.items():
            lines.append(row(name, mode, m["throughput"], m["summary"]["ok"]))
        serial, piped = (runs[m]["throughput"]["wall_s"] for m in ("serial", "pipelined"))
        lines.append(f"| {name} | speed-up | {serial / piped:.2f}x | | | | | | | "
                     f"same windows: {same['windows_differing'] == 0}, max pose difference "
                     f"{same['max_pose_difference']:.2g} |")
    print("| config | mode | wall s | ok | windows/s | main busy s | finishing busy s | "
          "device idle | waited for frames s | wall / larger stage |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
