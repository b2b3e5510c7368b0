"""The classical reconstructor against one plain pycolmap reconstruction, on every real sequence.

For each sequence of ``../shared/data/real`` (7-Scenes RedKitchen, DTU scan 65, LLFF fern,
VGGT's kitchen) and the bundled testdata, side by side in one run:

* ``pipeline``: the default command (``--reconstructor colmap --merge``, nothing else), run
  twice to check that the windows repeat exactly;
* ``pycolmap``: one pycolmap reconstruction of all the frames as a user would make it (SIFT,
  sequential matching with overlap 10 and quadratic overlap, incremental mapping, COLMAP's own
  self-calibration), cut into the same windows (8 frames, stride 4).

Each window's error is the RMSE of its camera centres after a Sim(3) alignment onto the ground
truth, as a fraction of the window's ground-truth path; the merged trajectory is scored the same
way over the whole path. Sequences without ground truth (fern, kitchen) are scored against the
pycolmap reconstruction itself (its posed frames): the figure then says how far the windows are
from what plain COLMAP finds, and ``windows ok`` is compared with the windows it poses.

    python benchmarks/bench_real.py [--only dtu_scan65,testdata] [--frames N] [--runs 1]

Prints a Markdown table (BENCHMARKS.md keeps the measured one).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.geometry import ate, camera_centers  # noqa: E402
from pipeline.core.windows import create_windows  # noqa: E402
from pipeline.io.frames import list_image_files  # noqa: E402
from pipeline.io.output import read_window_poses  # noqa: E402
from pipeline.post.evaluate import EvaluateOptions, evaluate_output  # noqa: E402
from pipeline.post.ground_truth import read_ground_truth  # noqa: E402
from pipeline.runner import run  # noqa: E402
from pipeline.runner.config import PipelineConfig  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "real"


@dataclass(frozen=True)
class Sequence:
    name: str
    images: Path
    pattern: str | None = None
    gt: Path | None = None


SEQUENCES = (
    Sequence("testdata", ROOT / "testdata" / "synthetic" / "images",
             gt=ROOT / "testdata" / "synthetic"),
    Sequence("dtu_scan65", REAL / "dtu_scan65" / "images", gt=REAL / "dtu_scan65" / "gt_sparse"),
    Sequence("llff_fern", REAL / "llff_fern"),
    Sequence("kitchen", REAL / "kitchen"),
    Sequence("7scenes_redkitchen", REAL / "7scenes_redkitchen_000_199", "*.color.jpg",
             gt=REAL / "7scenes_redkitchen_000_199"),
)


def pipeline_run(seq: Sequence, out: Path, frames: int | None) -> dict:
    """The default command; its wall time, windows, focal length and run.json."""
    import json

    start = time.perf_counter()
    summary = run(PipelineConfig(input_dir=seq.images, frame_pattern=seq.pattern,
                                 output_dir=out, reconstructor="colmap", merge=True,
                                 max_frames=frames, show_progress=False))
    record = json.loads((out / "run.json").read_text())
    cameras = (record.get("calibration") or {}).get("cameras") or []
    return {"wall": time.perf_counter() - start, "summary": summary,
            "focal": [c["focal"] for c in cameras],
            "support": (record.get("calibration") or {}).get("support")}


def pycolmap_whole(seq: Sequence, work: Path, frames: int | None) -> dict:
    """One plain pycolmap reconstruction of all frames: its poses, wall time and focal."""
    import pycolmap

    names = [p.name for p in list_image_files(seq.images, seq.pattern)][:frames]
    db = work / "database.db"
    start = time.perf_counter()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"
    pycolmap.extract_features(db, seq.images, image_names=names,
                              camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              device=pycolmap.Device.cpu)
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = 10
    pairing.quadratic_overlap = True
    pycolmap.match_sequential(db, pairing_options=pairing, device=pycolmap.Device.cpu)
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.random_seed = 0
    models = pycolmap.incremental_mapping(db, seq.images, work / "models", options=mapping)
    wall = time.perf_counter() - start
    if not models:
        return {"wall": wall, "poses": {}, "names": names, "focal": None}
    rec = max(models.values(), key=lambda r: r.num_reg_images())
    poses = {rec.images[i].name: rec.images[i].cam_from_world().matrix()
             for i in rec.reg_image_ids()}
    focal = float(np.mean([c.params[0] for c in rec.cameras.values()]))
    return {"wall": wall, "poses": poses, "names": names, "focal": focal}


def cut_scores(pred: dict, truth: dict, names: list[str]) -> list[float | None]:
    """Each window's (8, stride 4) error of ``pred`` against ``truth`` (None: fewer than 3
    frames posed)."""
    scores = []
    for window in create_windows(names, 8, 4):
        common = [n for n in window.items if n in pred and n in truth]
        if len(common) < 3:
            scores.append(None)
            continue
        scores.append(ate(camera_centers(np.stack([pred[n] for n in common])),
                          camera_centers(np.stack([truth[n] for n in common])))
                      .rmse_path_fraction)
    return scores


def pipeline_scores(out: Path, truth: dict) -> tuple[list[float | None], float | None]:
    report = evaluate_output(out, truth, options=EvaluateOptions(plot=False))
    windows = [w["ate"]["rmse_path_fraction"] if w["status"] == "ok" else None
               for w in report["windows"]]
    merged = report["merged"] or []
    if len(merged) == 1 and merged[0].get("ate"):
        return windows, merged[0]["ate"]["rmse_path_fraction"]
    return windows, None


def same_poses(a: Path, b: Path) -> float:
    """The largest difference between the window poses of two output folders."""
    worst = 0.0
    for window in sorted(a.glob("batch_*/window_*")):
        pa, pb = read_window_poses(window), read_window_poses(b / window.relative_to(a))
        if pa.keys() != pb.keys():
            return float("inf")
        worst = max([worst, *(float(np.abs(pa[n] - pb[n]).max()) for n in pa)])
    return worst


def stats(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "- | -"
    return f"{100 * np.median(got):.3g}% | {100 * max(got):.3g}%"


def measure(seq: Sequence, tmp: Path, frames: int | None, runs: int) -> list[str]:
    reference = pycolmap_whole(seq, _fresh(tmp / "whole"), frames)
    truth = (read_ground_truth(seq.gt).as_dict() if seq.gt is not None
             else reference["poses"])
    names = reference["names"]
    first = pipeline_run(seq, tmp / "run1", frames)
    windows, merged = pipeline_scores(tmp / "run1", truth)
    repeat = "-"
    if runs > 1:
        pipeline_run(seq, tmp / "run2", frames)
        repeat = f"{same_poses(tmp / 'run1', tmp / 'run2'):.1g}"
    whole_windows = cut_scores(reference["poses"], truth, names) if seq.gt is not None else \
        [0.0 if sum(n in reference["poses"] for n in w.items) >= 3 else None
         for w in create_windows(names, 8, 4)]
    reference_merged = None
    if seq.gt is not None:
        common = [n for n in names if n in reference["poses"] and n in truth]
        reference_merged = ate(camera_centers(np.stack([reference["poses"][n] for n in common])),
                               camera_centers(np.stack([truth[n] for n in common]))
                               ).rmse_path_fraction
    s = first["summary"]
    against = "ground truth" if seq.gt is not None else "pycolmap"
    focal = ", ".join(f"{f:.0f}" for f in first["focal"]) or "given"
    whole_focal = "-" if reference["focal"] is None else f"{reference['focal']:.0f}"
    posed = sum(v is not None for v in whole_windows)
    return [
        f"| {seq.name} | pipeline | {s.count('ok')}/{len(s.windows)} | {stats(windows)} | "
        f"{_percent(merged)} | {first['wall']:.0f} | {focal} ({first['support']}) | "
        f"{against} | {repeat} |",
        f"| {seq.name} | pycolmap, whole | {posed}/{len(whole_windows)} posed | "
        f"{stats(whole_windows) if seq.gt is not None else '(reference) | -'} | "
        f"{_percent(reference_merged)} | {reference['wall']:.0f} | {whole_focal} | {against} "
        "| - |",
    ]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.3g}%"


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None,
                        help="comma-separated sequence names (default: all present)")
    parser.add_argument("--frames", type=int, default=None, help="use the first N frames")
    parser.add_argument("--runs", type=int, default=2, help="pipeline runs per sequence (2: "
                        "also check that the poses repeat)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    chosen = [s for s in SEQUENCES if args.only is None or s.name in args.only.split(",")]
    print("| input | run | windows ok | window error median | max | merged | wall s | "
          "focal px | scored against | poses repeat to |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seq in chosen:
        if not seq.images.is_dir():
            print(f"| {seq.name} | skipped: {seq.images} is not here |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            for line in measure(seq, Path(tmp), args.frames, args.runs):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
