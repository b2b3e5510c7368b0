"""Evaluating a pipeline output folder against ground-truth camera poses.

``python -m pipeline.evaluate --pred OUT --gt GT [--json PATH] [--align sim3|se3|none]``

For every window ``OUT/batch_XXX/window_YYY/`` whose ``window_info.json`` says ``"status": "ok"``,
the registered poses of ``sparse/`` are matched to the ground truth by image name and scored
with the absolute trajectory error (ATE, camera centres, after a Sim(3) alignment by default)
and the relative pose error (RPE); the merged trajectory ``OUT/merged/trajectory.txt`` is scored
the same way when present. A table goes to stdout and a JSON report to ``OUT/evaluation.json``.

Conventions: poses are camera-from-world (3, 4) ``[R | t]``, ``x_cam = R x_world + t``, OpenCV
camera axes (x right, y down, z forward); TUM files hold world-from-camera poses
(``timestamp tx ty tz qx qy qz qw``: camera centre and orientation). Errors are in ground-truth
units (metres for 7-Scenes); ``extent`` is the diagonal of the bounding box of the matched
ground-truth camera centres.

An output folder of a run over many sequences (``dataset.json``) is scored sequence by sequence,
with a total (:func:`evaluate_dataset`): each sequence's ground truth is ``GT/<sequence name>``
when ``--gt GT`` is given, else found beside its source (the source folder itself, or its parent:
DTU's ``scan/images`` beside ``scan/gt_sparse``, the testdata's ``images/`` beside
``ground_truth.npz``). A single run's ground truth may be found beside its input folder the same
way when ``--gt`` is left out.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ALIGN_MODES, AteResult, ate, camera_centers, rpe
from ..core.results import STATUS_FAILED, STATUS_OK
from ..infra.files import write_json
from ..io.frames import natural_key
from ..io.merged_record import MERGED_DIR, STALE, merged_state
from ..io.output import (
    PLAN,
    RUN_MANIFEST,
    PlannedWindow,
    planned_windows,
    read_plan,
    read_window_poses,
)
from ..io.sequences import DATASET_MANIFEST
from .ground_truth import (
    frame_indices,
    ground_truth_beside,
    read_ground_truth,
    read_names_file,
    read_tum_trajectory,
)

logger = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
"""Default report name inside the output folder."""
GT_PLOT = "trajectory_vs_gt.png"
"""Written into each merged segment's folder: its path aligned onto the ground truth."""
METRIC_GT = ("tum", "7scenes")
"""Ground-truth kinds in metres (the others are in their own units)."""
MERGED_TRAJECTORY = Path("merged") / "trajectory.txt"
"""Merged trajectory (TUM, world-from-camera), relative to the output folder."""
MERGED_NAMES = Path("merged") / "trajectory_names.txt"
"""Optional frame names of the merged trajectory, one a line, relative to the output folder."""

MIN_FRAMES = 3
"""Matched frames needed to align and score a trajectory."""


@dataclass(kw_only=True)
class EvaluateOptions:
    """How trajectories are scored."""

    align: str = "sim3"
    """ATE alignment of predicted onto GT centres: ``sim3``, ``se3`` or ``none``. RPE uses the
    Sim(3) scale when ``sim3``, else scale 1 (metric predictions)."""
    rpe_delta: int = 1
    """RPE frame offset, counted in matched frames (in natural name order)."""
    per_frame: bool = False
    """Include per-frame ATE errors and frame names in the report."""
    plot: bool = True
    """Draw each merged segment against the ground truth (``trajectory_vs_gt.png`` in its
    folder), coloured by each frame's error."""


def merged_segment_dirs(out_dir: Path) -> list[Path]:
    """Folders holding a merged trajectory: ``OUT/merged`` (one segment) or its
    ``segment_XXX`` sub-folders (a sequence that merged into several segments)."""
    merged = Path(out_dir) / MERGED_TRAJECTORY.parent
    if (merged / MERGED_TRAJECTORY.name).is_file():
        return [merged]
    return sorted(p.parent for p in merged.glob(f"segment_*/{MERGED_TRAJECTORY.name}"))


def input_indices(out_dir: Path) -> dict[int, str] | None:
    """``{index in the input folder: frame name}`` of the run's frames, as its plan records
    them, or None when it does not (a video's frames are stamped with their time instead)."""
    frames = read_plan(out_dir).get("frames")
    if not isinstance(frames, list) or not frames:
        return None
    stamps = [f.get("timestamp") if isinstance(f, dict) else None for f in frames]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in stamps):
        return None
    return {t: f.get("name") for t, f in zip(stamps, frames)}


def load_merged_poses(segment_dir: Path, frame_names: Sequence[str],
                      index_names: Mapping[int, str] | None = None
                      ) -> dict[str, np.ndarray] | None:
    """Poses of ``segment_dir/trajectory.txt`` by frame name, ``None`` when there is no file.

    Names come from ``trajectory_names.txt`` beside it when present, else the timestamps are
    indices into the input folder (``index_names``, see :func:`input_indices`), or without
    those into ``frame_names`` sorted naturally.

    Raises:
        InputError: on a malformed file, or timestamps that are not valid frame indices.
    """
    path = Path(segment_dir) / MERGED_TRAJECTORY.name
    if not path.is_file():
        return None
    stamps, poses = read_tum_trajectory(path)
    names_path = Path(segment_dir) / MERGED_NAMES.name
    if names_path.is_file():
        names = read_names_file(names_path, len(poses))
    else:
        indices = frame_indices(stamps)
        if index_names is None:
            index_names = dict(enumerate(sorted(frame_names, key=natural_key)))
        if indices is None or any(i not in index_names for i in indices):
            raise InputError(f"{path}: without {MERGED_NAMES.name}, timestamps must be distinct "
                             "indices of the run's frames in the input folder")
        names = [index_names[i] for i in indices]
    return dict(zip(names, poses))


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

def match_names(pred_names: Sequence[str], gt_names: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs ``(pred name, gt name)`` matched by basename, else by unique basename stem.

    The stem fallback pairs a frame the pipeline converted (``frame_1.png``) with its source
    (``frame_1.tif``). Pairs are in natural order of the predicted basenames (the frame order).
    """
    by_base = {Path(n).name: n for n in gt_names}
    stems: dict[str, list[str]] = {}
    for n in gt_names:
        stems.setdefault(Path(n).stem, []).append(n)
    pairs = []
    for name in sorted(pred_names, key=lambda n: natural_key(Path(n).name)):
        base = Path(name).name
        if base in by_base:
            pairs.append((name, by_base[base]))
        elif len(stems.get(Path(base).stem, ())) == 1:
            pairs.append((name, stems[Path(base).stem][0]))
    return pairs


def evaluate_poses(pred: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray], *,
                   options: EvaluateOptions | None = None) -> dict[str, Any]:
    """ATE and RPE of named predicted poses against named ground truth.

    Args:
        pred: ``{frame name: (3, 4) camera-from-world}`` in any world frame and scale.
        gt: ``{frame name: (3, 4) camera-from-world}``.

    Returns:
        ``num_pred``, ``num_matched``, ``unmatched`` (predicted names without GT), ``ate``
        (:meth:`AteResult.to_dict`) and ``rpe`` (:meth:`RpeResult.to_dict`, ``None`` when there
        are not enough frames for ``rpe_delta``).

    Raises:
        ValueError: with fewer than :data:`MIN_FRAMES` matches or a degenerate alignment.
    """
    options = options or EvaluateOptions()
    return _report(_align(pred, gt, options), pred, options)


@dataclass
class _Aligned:
    """Predicted poses paired with ground truth by name, and the ATE alignment between them."""

    pairs: list[tuple[str, str]]
    """(predicted name, ground-truth name), in match order."""
    pred_poses: np.ndarray
    """(N, 3, 4) predicted camera-from-world poses."""
    gt_poses: np.ndarray
    """(N, 3, 4) ground-truth camera-from-world poses."""
    ate: AteResult
    """The trajectory error after alignment."""


def _align(pred: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray],
           options: EvaluateOptions) -> _Aligned:
    """Pair ``pred`` with ``gt`` and align; see :func:`evaluate_poses` for what raises."""
    pairs = match_names(list(pred), list(gt))
    if len(pairs) < MIN_FRAMES:
        raise ValueError(f"only {len(pairs)} frames match the ground truth (need {MIN_FRAMES})")
    pred_poses = np.stack([pred[p] for p, _ in pairs])
    gt_poses = np.stack([gt[g] for _, g in pairs])
    ate_res = ate(camera_centers(pred_poses), camera_centers(gt_poses), align=options.align)
    return _Aligned(pairs=pairs, pred_poses=pred_poses, gt_poses=gt_poses, ate=ate_res)


def _report(aligned: _Aligned, pred: Mapping[str, np.ndarray],
            options: EvaluateOptions) -> dict[str, Any]:
    """The :func:`evaluate_poses` entry of ``aligned`` (RPE computed here)."""
    pairs, pred_poses, gt_poses, ate_res = (aligned.pairs, aligned.pred_poses, aligned.gt_poses,
                                            aligned.ate)
    rpe_res = None
    if options.rpe_delta < len(pairs):
        scale = ate_res.alignment.scale if options.align == "sim3" else 1.0
        rpe_res = rpe(pred_poses, gt_poses, delta=options.rpe_delta, scale=scale)
    matched = {p for p, _ in pairs}
    out = {"num_pred": len(pred), "num_matched": len(pairs),
           "unmatched": sorted((n for n in pred if n not in matched), key=natural_key),
           "ate": ate_res.to_dict(per_frame=options.per_frame),
           "rpe": rpe_res.to_dict() if rpe_res else None}
    if options.per_frame:
        out["frames"] = [p for p, _ in pairs]
    return out


def _evaluate_window(win: PlannedWindow, out_dir: Path, gt: Mapping[str, np.ndarray],
                     options: EvaluateOptions) -> dict[str, Any]:
    """The report entry of one window (never raises for a bad window)."""
    info = win.info or {}
    entry = {"window_index": win.index, "batch_index": int(win.path.parent.name.split("_")[-1]),
             "path": str(win.path.relative_to(out_dir)), "status": info.get("status", "failed"),
             "reconstructor": info.get("reconstructor"), "num_frames": len(info.get("frames", [])),
             "num_registered": None, "error": info.get("error")}
    if entry["status"] != STATUS_OK or win.info is None:
        entry.update(status=STATUS_FAILED, error=entry["error"] or win.problem)
        return entry
    if win.problem is not None:  # recorded as ok, but not whole or not made for this plan
        entry.update(status="error", error=win.problem)
        logger.warning("window %d: %s", win.index, win.problem)
        return entry
    try:
        poses = read_window_poses(win.path)
        entry["num_registered"] = len(poses)
        entry.update(evaluate_poses(poses, gt, options=options))
    except ValueError as exc:  # InputError included
        entry.update(status="error", error=str(exc))
        logger.warning("window %d: %s", win.index, exc)
    return entry


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and aggregate errors over the scored windows."""
    scored = [w for w in windows if w["status"] == STATUS_OK]

    def agg(values: list[float]) -> dict[str, float] | None:
        vals = [v for v in values if v is not None]
        return ({"mean": float(np.mean(vals)), "median": float(np.median(vals)),
                 "max": float(np.max(vals))} if vals else None)

    return {"windows_total": len(windows), "windows_ok": len(scored),
            "windows_failed": sum(w["status"] == STATUS_FAILED for w in windows),
            "windows_error": sum(w["status"] == "error" for w in windows),
            "ate_rmse": agg([w["ate"]["rmse"] for w in scored]),
            "ate_rmse_fraction": agg([w["ate"]["rmse_fraction"] for w in scored]),
            "ate_rmse_path_fraction": agg([w["ate"]["rmse_path_fraction"] for w in scored]),
            "rpe_trans_rmse": agg([w["rpe"]["trans"]["rmse"] for w in scored if w["rpe"]]),
            "rpe_rot_rmse_deg": agg([w["rpe"]["rot_deg"]["rmse"] for w in scored if w["rpe"]])}


def gt_units(kind: str) -> str:
    """Units of distances scored against ground truth of ``kind``."""
    return "m" if kind in METRIC_GT else "gt units"


def evaluate_output(out_dir: str | Path, gt: str | Path | Mapping[str, np.ndarray], *,
                    options: EvaluateOptions | None = None) -> dict[str, Any]:
    """Score every window of a pipeline output, and the merged trajectory when present.

    Args:
        out_dir: The pipeline's output folder (``batch_XXX/window_YYY/`` and maybe ``merged/``).
        gt: A ground-truth path (any format of :func:`read_ground_truth`) or
            ``{frame name: (3, 4) camera-from-world}``.
        options: Scoring options (defaults: Sim(3) ATE, RPE delta 1).

    Returns:
        A JSON-ready report: ``pred``, ``gt``, ``gt_kind``, ``options``, ``windows`` (one entry
        per window, ``status`` ``ok``/``failed``/``error``), ``merged`` (or ``None``) and
        ``summary``.

    Raises:
        InputError: on a missing or empty output folder, or unusable ground truth.
    """
    options = options or EvaluateOptions()
    if options.align not in ALIGN_MODES:
        raise InputError(f"align must be one of {ALIGN_MODES}, got {options.align!r}")
    if options.rpe_delta < 1:
        raise InputError(f"rpe_delta must be >= 1, got {options.rpe_delta}")
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"output folder not found: {out_dir}")
    if not (out_dir / PLAN).is_file() and not (out_dir / MERGED_TRAJECTORY).is_file():
        raise InputError(f"no run plan ({PLAN}) or {MERGED_TRAJECTORY} in {out_dir}: not a "
                         "pipeline output folder, or one an older version wrote")
    # the windows of the run's plan only: folders it does not hold are reported, never scored
    windows = planned_windows(out_dir)[0] if (out_dir / PLAN).is_file() else []
    frame_names = sorted({n for w in windows for n in (w.info or {}).get("frames", [])},
                         key=natural_key)
    index_names = input_indices(out_dir) if windows else None  # read once, for GT and merged
    gt_kind, gt_poses = "mapping", gt
    if not isinstance(gt, Mapping):
        truth = read_ground_truth(gt)
        gt_kind, gt_poses = truth.kind, truth.as_dict(frame_names, index_names=index_names)
    if frame_names and not match_names(frame_names, list(gt_poses)):
        example = sorted(gt_poses, key=natural_key)[:2]
        raise InputError(f"the ground truth {gt if gt_kind != 'mapping' else ''} names none of "
                         f"the run's {len(frame_names)} frames (they are named like "
                         f"{frame_names[0]}, it has {', '.join(example) or 'no pose'}): is it "
                         "the ground truth of this sequence?")
    report = {"pred": str(out_dir), "gt": str(gt) if gt_kind != "mapping" else None,
              "gt_kind": gt_kind, "gt_frames": len(gt_poses),
              "options": {"align": options.align, "rpe_delta": options.rpe_delta},
              "windows": [_evaluate_window(w, out_dir, gt_poses, options) for w in windows],
              "units": gt_units(gt_kind),
              "merged": _evaluate_merged(out_dir, frame_names, index_names, gt_poses, options,
                                         gt_units(gt_kind))}
    report["summary"] = _summary(report["windows"])
    return report


def evaluate_dataset(out_dir: str | Path, gt_root: str | Path | None = None, *,
                     options: EvaluateOptions | None = None) -> dict[str, Any]:
    """Score every sequence of a run over many (``OUT/dataset.json``) and total the windows.

    Args:
        out_dir: The dataset's output folder.
        gt_root: A folder holding each sequence's ground truth as ``<sequence name>`` (any
            format of :func:`read_ground_truth`); ``None``: found beside each sequence's source
            (:func:`ground_truth_beside`).
        options: Scoring options.

    Returns:
        ``{"pred", "sequences": [{"name", "gt", "status", "error", "report"}], "summary"}``:
        ``summary`` is :func:`_summary` over the windows of every scored sequence, plus
        ``sequences_scored`` and ``sequences_total``.

    Raises:
        InputError: no ``dataset.json``, or no sequence has ground truth.
    """
    out_dir = Path(out_dir)
    try:
        dataset = json.loads((out_dir / DATASET_MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {out_dir / DATASET_MANIFEST}: {exc}") from exc
    entries, windows = [], []
    for sequence in dataset.get("sequences", []):
        name = sequence["name"]
        entry = {"name": name, "gt": None, "status": STATUS_OK, "error": None, "report": None}
        entries.append(entry)
        if sequence.get("status") == STATUS_FAILED:
            entry.update(status=STATUS_FAILED, error=sequence.get("error"))
            continue
        gt = (Path(gt_root) / name) if gt_root is not None else ground_truth_beside(
            sequence["source"])
        if gt is None or not gt.exists():
            entry.update(status="no ground truth", error=f"none found for {sequence['source']}"
                         if gt_root is None else f"{gt} not found")
            continue
        entry["gt"] = str(gt)
        try:
            entry["report"] = evaluate_output(out_dir / name, gt, options=options)
        except InputError as exc:
            entry.update(status="error", error=str(exc))
            continue
        windows += [dict(w, sequence=name) for w in entry["report"]["windows"]]
    scored = [e for e in entries if e["report"] is not None]
    if not scored:
        raise InputError(f"no sequence of {out_dir} could be scored: "
                         + "; ".join(f"{e['name']}: {e['error']}" for e in entries)
                         + (" (give --gt DIR holding <sequence name>/ ground truth)"
                            if gt_root is None else ""))
    summary = {**_summary(windows), "sequences_scored": len(scored),
               "sequences_total": len(entries)}
    return {"pred": str(out_dir), "gt": None if gt_root is None else str(gt_root),
            "sequences": entries, "summary": summary}


def format_dataset_report(report: dict[str, Any]) -> str:
    """One line per sequence (windows scored, median and max ATE as % of the window's path,
    merged segments) and a total."""
    lines = []
    for entry in report["sequences"]:
        if entry["report"] is None:
            lines.append(f"{entry['name']}: {entry['status']} ({entry['error']})")
            continue
        s = entry["report"]["summary"]
        path = s.get("ate_rmse_path_fraction")
        merged = [m for m in entry["report"].get("merged") or [] if m.get("ate")]
        lines.append(
            f"{entry['name']}: {s['windows_ok']} of {s['windows_total']} windows scored"
            + (f", median {100 * path['median']:.3g}% (max {100 * path['max']:.3g}%) of the "
               "window's path" if path else "")
            + (", merged " + ", ".join(f"{100 * m['ate']['rmse_path_fraction']:.3g}%"
                                       for m in merged) + " of the path" if merged else "")
            + f" (ground truth {entry['gt']})")
    s = report["summary"]
    path = s.get("ate_rmse_path_fraction")
    lines.append(f"total: {s['sequences_scored']} of {s['sequences_total']} sequences, "
                 f"{s['windows_ok']} of {s['windows_total']} windows scored"
                 + (f", median {100 * path['median']:.3g}% (max {100 * path['max']:.3g}%) of "
                    "the window's path" if path else ""))
    return "\n".join(lines)


def _evaluate_merged(out_dir: Path, frame_names: list[str],
                     index_names: Mapping[int, str] | None, gt: Mapping[str, np.ndarray],
                     options: EvaluateOptions, units: str) -> list[dict[str, Any]] | None:
    """One report entry per merged segment, ``None`` when nothing was merged; a merge of
    windows since redone is not scored (one entry says so)."""
    if merged_state(out_dir) == STALE:
        error = ("stale: merged from windows since redone (merge again: python -m "
                 f"pipeline.merge {out_dir})")
        logger.warning("%s/%s: %s", out_dir, MERGED_DIR, error)
        return [{"path": MERGED_DIR, "status": "error", "num_frames": 0, "error": error}]
    entries = [_evaluate_segment(d, out_dir, frame_names, index_names, gt, options, units)
               for d in merged_segment_dirs(out_dir)]
    return entries or None


def _evaluate_segment(segment_dir: Path, out_dir: Path, frame_names: list[str],
                      index_names: Mapping[int, str] | None, gt: Mapping[str, np.ndarray],
                      options: EvaluateOptions, units: str) -> dict[str, Any]:
    poses = load_merged_poses(segment_dir, frame_names, index_names)
    entry = {"path": str(Path(segment_dir).relative_to(out_dir)), "status": STATUS_OK,
             "num_frames": len(poses), "error": None}
    try:
        aligned = _align(poses, gt, options)
        entry.update(_report(aligned, poses, options))
    except ValueError as exc:
        entry.update(status="error", error=str(exc))
        logger.warning("merged trajectory: %s", exc)
        return entry
    if options.plot:
        png = Path(segment_dir) / GT_PLOT
        try:
            entry["plot"] = str(plot_against_ground_truth(aligned, options, units, png))
        except OSError as exc:  # a read-only output is still scored
            logger.warning("cannot draw %s: %s", png, exc.strerror or exc)
            entry["plot"] = None
    return entry


def plot_against_ground_truth(aligned: _Aligned, options: EvaluateOptions, units: str,
                              png: Path) -> Path:
    """Draw the predicted path aligned onto the ground truth, coloured by each frame's error,
    over the ground truth (see :func:`pipeline.io.plots.plot_trajectory`); return ``png``."""
    from ..io.plots import plot_trajectory

    pred_c, gt_c = camera_centers(aligned.pred_poses), camera_centers(aligned.gt_poses)
    result = aligned.ate
    plot_trajectory(png, result.alignment.apply(pred_c), ground_truth=gt_c, errors=result.errors,
                    units=units, title=f"{png.parent.name} against the ground truth\nATE rmse "
                    f"{result.rmse:.3g} {units} "
                    f"({100 * result.rmse_path_fraction:.1f}% of the {result.path_length:.3g} "
                    f"{units} path), {options.align} alignment")
    return png


# --------------------------------------------------------------------------------------------
# Report output and command line
# --------------------------------------------------------------------------------------------

def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _columns(units: str) -> tuple[str, ...]:
    """Table headers, with units: distances in ``units`` (after alignment), errors relative to
    the ground truth's extent (bounding-box diagonal) and path length in %, angles in degrees."""
    return ("window", "batch", "status", "frames", "reg", "matched", f"ATE rmse ({units})",
            "ATE % extent", "ATE % path", f"ATE max ({units})", "scale (x)",
            f"RPE t rmse ({units})", "RPE r rmse (deg)", "note")


def _table_row(label: str, batch: Any, entry: dict[str, Any]) -> list[str]:
    a, r = entry.get("ate"), entry.get("rpe")

    def percent(key: str) -> float | None:
        return a[key] * 100 if a and a.get(key) is not None else None

    return [label, _fmt(batch), entry["status"], _fmt(entry.get("num_frames")),
            _fmt(entry.get("num_registered")), _fmt(entry.get("num_matched")),
            _fmt(a and a["rmse"]), _fmt(percent("rmse_fraction"), ".3g"),
            _fmt(percent("rmse_path_fraction"), ".3g"), _fmt(a and a["max"]),
            _fmt(a and a["alignment"]["scale"]), _fmt(r and r["trans"]["rmse"]),
            _fmt(r and r["rot_deg"]["rmse"], ".3g"), (entry.get("error") or "")[:60]]


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table with aligned columns (units in the headers), and a
    summary line."""
    units = report.get("units") or gt_units(report.get("gt_kind", ""))
    columns = _columns(units)
    rows = [_table_row(f"{w['window_index']:03d}", w["batch_index"], w)
            for w in report["windows"]]
    for entry in report.get("merged") or []:
        rows.append(_table_row(entry["path"], None, entry))
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    s = report["summary"]
    ate_mean = s["ate_rmse"]["mean"] if s["ate_rmse"] else None
    path = s.get("ate_rmse_path_fraction")
    lines.append(f"windows: {s['windows_ok']} scored, {s['windows_failed']} failed, "
                 f"{s['windows_error']} not scorable, of {s['windows_total']}; "
                 f"mean ATE rmse {_fmt(ate_mean)} {units}"
                 + (f", median {_fmt(100 * path['median'], '.3g')}% of the window's path"
                    if path else "")
                 + f" (align {report['options']['align']}, ground truth: "
                 f"{report['gt_kind']}, {report['gt_frames']} frames)")
    for entry in report.get("merged") or []:
        if entry.get("plot"):
            lines.append(f"{entry['path']}: aligned onto the ground truth in {entry['plot']}")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """Numpy values to Python ones, non-finite floats to ``None``."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write the report as strict JSON (no NaN: missing values are null), atomically (see
    :func:`pipeline.infra.files.write_json`)."""
    write_json(Path(path), _jsonable(report), allow_nan=False)


def evaluate_path(pred: Path, gt: Path | None, options: EvaluateOptions) -> tuple[dict, str]:
    """The report and its text for an output folder: a dataset root, or one run.

    Raises:
        InputError: ``pred`` is no folder, or its ground truth cannot be found or read.
    """
    if not Path(pred).is_dir():
        raise InputError(f"output folder not found: {pred}" if not Path(pred).exists() else
                         f"not an output folder (a file): {pred}")
    if (pred / DATASET_MANIFEST).is_file():
        report = evaluate_dataset(pred, gt, options=options)
        return report, format_dataset_report(report)
    if gt is None:
        gt = _beside_run_input(pred)
    report = evaluate_output(pred, gt, options=options)
    return report, format_report(report)


def _beside_run_input(out_dir: Path) -> Path:
    """The ground truth beside the input folder a run recorded in ``run.json``."""
    try:
        source = json.loads((out_dir / RUN_MANIFEST).read_text())["config"]["input_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        source = None
    found = ground_truth_beside(source) if source else None
    if found is None:
        raise InputError(f"no ground truth found beside the input of {out_dir} "
                         f"({source or 'not recorded'}): give --gt")
    return found
