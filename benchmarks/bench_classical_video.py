"""The classical reconstructor on real hand-held video, side by side in one run.

On ``../shared/data/real/7scenes_redkitchen_000_199`` (200 frames, 640x480, 30 fps, with
ground-truth poses), with default options (windows of 8, stride 4, no --frame-step, no
--camera-params):

* ``windowed``: the pipeline as users run it (``--reconstructor colmap --merge``): the sequence
  in chunks, every window cut out of its chunk;
* ``alone``: the same with ``chunk_frames=0`` (each window from its own frames only, as before);
* ``whole``: one pycolmap reconstruction of all frames (SIFT, sequential matching with overlap
  10, incremental mapping), the reference the issue measures against, also cut into the same
  windows for a per-window figure.

Window ATE is the RMSE of the camera centres after a Sim(3) alignment, as a fraction of the
window's ground-truth path length; the merged trajectory's per-frame errors are compared with 5%
of the whole path. Prints a markdown table (BENCHMARKS.md keeps the measured one).

    python benchmarks/bench_classical_video.py [--frames 200] [--skip-alone] [--skip-whole]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.geometry import ate, camera_centers  # noqa: E402
from pipeline.post.evaluate import EvaluateOptions, evaluate_output  # noqa: E402
from pipeline.post.ground_truth import read_7scenes_gt  # noqa: E402
from pipeline.runner import run  # noqa: E402
from pipeline.runner.config import PipelineConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "real" / "7scenes_redkitchen_000_199"
PATTERN = "*.color.jpg"


def windowed(out: Path, frames: int, chunk_frames: int) -> dict:
    """Run the pipeline; return its wall time, stage profile and scores."""
    config = PipelineConfig(
        input_dir=DATA,
        frame_pattern=PATTERN,
        output_dir=out,
        reconstructor="colmap",
        max_frames=frames,
        merge=True,
        chunk_frames=chunk_frames,
        show_progress=False,
    )
    start = time.perf_counter()
    summary = run(config)
    wall = time.perf_counter() - start
    report = evaluate_output(out, DATA, options=EvaluateOptions(per_frame=True))
    result = {"wall": wall, "profile": summary.profile.rows, **window_scores(report["windows"])}
    merged = report["merged"] or []
    if len(merged) == 1 and merged[0]["status"] == "ok":
        ate_ = merged[0]["ate"]
        errors = np.array(ate_["errors"])
        result["merged"] = {
            "frames": merged[0]["num_matched"],
            "rmse_path": ate_["rmse_path_fraction"],
            "within_5": float(np.mean(errors < 0.05 * ate_["path_length"])),
        }
    else:
        result["merged"] = {"segments": len(merged)}
    return result


def window_scores(windows: list[dict]) -> dict:
    ok = [w for w in windows if w["status"] == "ok"]
    fractions = np.array([w["ate"]["rmse_path_fraction"] for w in ok])
    registered = [w["num_registered"] / w["num_frames"] for w in ok] or [0.0]
    return {
        "windows": len(windows),
        "ok": len(ok),
        "min_registered": float(min(registered)),
        "median": float(np.median(fractions)) if len(fractions) else float("nan"),
        "p90": float(np.percentile(fractions, 90)) if len(fractions) else float("nan"),
        "max": float(fractions.max()) if len(fractions) else float("nan"),
    }


def whole(work: Path, frames: int) -> dict:
    """One pycolmap reconstruction of all frames, scored whole and cut into windows."""
    import pycolmap

    names = sorted(p.name for p in DATA.glob(PATTERN))[:frames]
    db = work / "database.db"
    start = time.perf_counter()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"
    pycolmap.extract_features(
        db,
        DATA,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        device=pycolmap.Device.cpu,
    )
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = 10
    pycolmap.match_sequential(db, pairing_options=pairing, device=pycolmap.Device.cpu)
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.min_model_size = 3
    mapping.random_seed = 0
    models = pycolmap.incremental_mapping(db, DATA, work / "models", options=mapping)
    wall = time.perf_counter() - start
    rec = max(models.values(), key=lambda r: r.num_reg_images())
    pred = {
        rec.images[i].name: rec.images[i].cam_from_world().matrix() for i in rec.reg_image_ids()
    }
    gt = read_7scenes_gt(DATA).as_dict()
    truth = {Path(k).name.split(".")[0]: v for k, v in gt.items()}

    def score(window: list[str]) -> float:
        got = [n for n in window if n in pred]
        p = camera_centers(np.array([pred[n] for n in got]))
        g = camera_centers(np.array([truth[n.split(".")[0]] for n in got]))
        return ate(p, g).rmse_path_fraction

    windows = [names[s : s + 8] for s in range(0, len(names) - 7, 4)]
    fractions = np.array([score(w) for w in windows if sum(n in pred for n in w) >= 3])
    return {
        "wall": wall,
        "registered": len(pred),
        "frames": len(names),
        "global": score(names),
        "median": float(np.median(fractions)),
        "max": float(fractions.max()),
        "focal": float(next(iter(rec.cameras.values())).params[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--skip-alone", action="store_true")
    parser.add_argument("--skip-whole", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is not here")
        return 0
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(("windowed (chunks)", windowed(tmp / "windowed", args.frames, 100)))
        if not args.skip_alone:
            rows.append(("windows alone", windowed(tmp / "alone", args.frames, 0)))
        if not args.skip_whole:
            (tmp / "whole").mkdir()
            reference = whole(tmp / "whole", args.frames)
    print(
        "| run | wall s | windows ok | min registered | window ATE/path median | p90 | max "
        "| merged ATE/path | merged frames within 5% of path |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        m = r["merged"]
        merged = (
            f"{100 * m['rmse_path']:.1f}% | {100 * m['within_5']:.0f}%"
            if "rmse_path" in m
            else f"{m.get('segments', 0)} segments | -"
        )
        print(
            f"| {name} | {r['wall']:.0f} | {r['ok']}/{r['windows']} | "
            f"{100 * r['min_registered']:.0f}% | {100 * r['median']:.1f}% | "
            f"{100 * r['p90']:.1f}% | {100 * r['max']:.1f}% | {merged} |"
        )
    if not args.skip_whole:
        print(
            f"| whole sequence, one pycolmap reconstruction | {reference['wall']:.0f} | "
            f"{reference['registered']}/{reference['frames']} frames | - | "
            f"{100 * reference['median']:.1f}% (cut) | - | {100 * reference['max']:.1f}% | "
            f"{100 * reference['global']:.1f}% (global) | - |"
        )
        print(f"\nwhole-sequence focal length: {reference['focal']:.0f} px")
    for name, r in rows:
        print(f"\n{name}: stage profile")
        for stage, row in r["profile"].items():
            print(f"  {stage:10s} calls {row['calls']:3d}  {row['seconds']:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
