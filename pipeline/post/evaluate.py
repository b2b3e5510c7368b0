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

Ground truth formats (detected from the path by :func:`read_ground_truth`):

* synthetic: ``ground_truth.npz`` (or a folder holding it) with ``K`` (3, 3),
  ``cam_from_world`` (N, 3, 4) and ``names`` (N,);
* TUM: a trajectory file; frame names come from ``<stem>_names.txt`` or ``names.txt`` beside it
  (one name a line, same order), otherwise integer timestamps (or, failing that, the row order)
  are frame indices into the naturally sorted list of the run's frame names;
* 7-Scenes: a folder of ``frame-NNNNNN.pose.txt`` (4 x 4 camera-to-world) beside
  ``frame-NNNNNN.color.jpg``; the frame name is the colour image's name;
* COLMAP: a model folder (``cameras``/``images`` as ``.txt`` or ``.bin``, such as DTU's
  ``gt_sparse/``), or a folder holding one as ``sparse/``, ``sparse/0`` or ``gt_sparse/``; poses
  are matched by image name (the file name, so ``images/000001.jpg`` in the model matches frame
  ``000001.jpg``).

An output folder of a run over many sequences (``dataset.json``) is scored sequence by sequence,
with a total (:func:`evaluate_dataset`): each sequence's ground truth is ``GT/<sequence name>``
when ``--gt GT`` is given, else found beside its source (the source folder itself, or its parent:
DTU's ``scan/images`` beside ``scan/gt_sparse``, the testdata's ``images/`` beside
``ground_truth.npz``). A single run's ground truth may be found beside its input folder the same
way when ``--gt`` is left out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.geometry import (
    ALIGN_MODES,
    AteResult,
    ate,
    camera_centers,
    invert_pose,
    nearest_rotation,
    quat_xyzw_to_rotmat,
    rpe,
)
from ..infra.files import write_json
from ..io.frames import natural_key
from ..io.output import PLAN, PlannedWindow, planned_windows, read_window_poses

logger = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
"""Default report name inside the output folder."""
GT_PLOT = "trajectory_vs_gt.png"
"""Written into each merged segment's folder: its path aligned onto the ground truth."""
METRIC_GT = ("tum", "7scenes")
"""Ground-truth kinds in metres (the others are in their own units)."""
GT_NPZ = "ground_truth.npz"
"""Synthetic ground-truth file name."""
MERGED_TRAJECTORY = Path("merged") / "trajectory.txt"
"""Merged trajectory (TUM, world-from-camera), relative to the output folder."""
MERGED_NAMES = Path("merged") / "trajectory_names.txt"
"""Optional frame names of the merged trajectory, one a line, relative to the output folder."""
TUM_NAMES_FILES = ("{stem}_names.txt", "names.txt")
"""Names files looked for beside a TUM trajectory, in order."""
TUM_DEFAULT_FILES = ("trajectory_tum.txt", "groundtruth.txt", "trajectory.txt")
"""TUM files looked for when the ground-truth path is a folder."""

load_window_poses = read_window_poses
"""The poses of a window folder (see :func:`pipeline.io.output.read_window_poses`)."""

_SEVEN_SCENES_POSE = "frame-*.pose.txt"
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


@dataclass(kw_only=True)
class GroundTruth:
    """Ground-truth poses as read from disk."""

    kind: str
    """``"synthetic"``, ``"tum"``, ``"7scenes"`` or ``"colmap"``."""
    cam_from_world: np.ndarray
    """(N, 3, 4) camera-from-world poses."""
    names: list[str] | None
    """N frame names, or ``None`` when the source has none (see :attr:`indices`)."""
    indices: list[int] | None = None
    """N frame indices (into the sorted frame names of a run) when :attr:`names` is ``None``."""
    source: Path | None = None
    """File or folder read."""

    def as_dict(self, frame_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{frame name: (3, 4) pose}``; unnamed poses take ``sorted(frame_names)[index]``.

        Raises:
            InputError: when the poses have no names and ``frame_names`` is not given.
        """
        if self.names is not None:
            return {n: p for n, p in zip(self.names, self.cam_from_world)}
        if not frame_names:
            raise InputError(f"ground truth {self.source} has no frame names: put a names file "
                             f"beside it ({', '.join(TUM_NAMES_FILES)})")
        ordered = sorted(frame_names, key=natural_key)
        out = {ordered[i]: p for i, p in zip(self.indices, self.cam_from_world)
               if 0 <= i < len(ordered)}
        logger.debug("matched %d of %d unnamed GT poses by index", len(out), len(self.indices))
        return out


# --------------------------------------------------------------------------------------------
# Ground truth readers
# --------------------------------------------------------------------------------------------

def read_ground_truth(path: str | Path) -> GroundTruth:
    """Read ground truth in any supported format, detected from ``path`` (see module doc).

    Raises:
        InputError: when ``path`` is missing, unrecognised or malformed.
    """
    return _finite_only(_read_any(Path(path)))


def _finite_only(truth: GroundTruth) -> GroundTruth:
    """``truth`` without its poses that are not finite (each skipped with a warning).

    Raises:
        InputError: none is finite.
    """
    finite = np.isfinite(truth.cam_from_world).all(axis=(1, 2))
    if finite.all():
        return truth
    if not finite.any():
        raise InputError(f"ground truth {truth.source}: none of its {len(finite)} poses is "
                         "finite")
    labels = truth.names if truth.names is not None else truth.indices
    for label in np.asarray(labels, dtype=object)[~finite]:
        logger.warning("ground truth %s: the pose of %s is not finite; that frame is not "
                       "scored", truth.source, label)
    keep = np.flatnonzero(finite).tolist()
    return dataclasses.replace(
        truth, cam_from_world=truth.cam_from_world[finite],
        names=None if truth.names is None else [truth.names[i] for i in keep],
        indices=None if truth.indices is None else [truth.indices[i] for i in keep])


def _read_any(path: Path) -> GroundTruth:
    if not path.exists():
        raise InputError(f"ground truth not found: {path}")
    if path.is_file():
        return read_synthetic_gt(path) if path.suffix == ".npz" else read_tum_gt(path)
    if (path / GT_NPZ).is_file():
        return read_synthetic_gt(path / GT_NPZ)
    if any(path.glob(_SEVEN_SCENES_POSE)):
        return read_7scenes_gt(path)
    for model in (path, path / "sparse", path / "sparse" / "0", path / "gt_sparse"):
        if _is_colmap_model(model):
            return read_colmap_gt(model)
    for name in TUM_DEFAULT_FILES:
        if (path / name).is_file():
            return read_tum_gt(path / name)
    raise InputError(f"unrecognised ground truth {path}: expected {GT_NPZ} (synthetic), a TUM "
                     f"trajectory file, a 7-Scenes folder (frame-NNNNNN.pose.txt), or a COLMAP "
                     "model folder (cameras/images .txt or .bin)")


def load_ground_truth_poses(path: str | Path, *, frame_names: Sequence[str] | None = None
                            ) -> dict[str, np.ndarray]:
    """``{frame name: (3, 4) camera-from-world}`` from any supported ground truth.

    ``frame_names`` (the run's frames) names the poses of a TUM file without a names file.
    """
    return read_ground_truth(path).as_dict(frame_names)


def read_synthetic_gt(npz_path: Path) -> GroundTruth:
    """The project's synthetic ``ground_truth.npz`` (``cam_from_world``, ``names``; ``K`` and
    depth are not needed)."""
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            poses = np.asarray(data["cam_from_world"], dtype=float)
            names = [str(n) for n in data["names"]]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read synthetic ground truth {npz_path}: {exc}") from exc
    if poses.ndim != 3 or poses.shape[1:] != (3, 4) or len(names) != len(poses):
        raise InputError(f"{npz_path}: expected cam_from_world (N, 3, 4) and N names, got "
                         f"{poses.shape} and {len(names)} names")
    return GroundTruth(kind="synthetic", cam_from_world=poses, names=names, source=npz_path)


def read_tum_trajectory(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (N,) and camera-from-world poses (N, 3, 4) of a TUM file.

    Each non-empty line not starting with ``#`` is ``timestamp tx ty tz qx qy qz qw``
    (world-from-camera: ``t`` is the camera centre, ``q`` its orientation).

    Raises:
        InputError: on an unreadable file, a malformed line, or no poses.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read TUM trajectory {path}: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            values = []
        if len(values) != 8:
            raise InputError(f"{path}:{number}: expected 'timestamp tx ty tz qx qy qz qw'")
        if not all(map(math.isfinite, values)):
            logger.warning("%s:%d: the pose is not finite; that frame is not scored", path,
                           number)
            continue
        rows.append(values)
    if not rows:
        raise InputError(f"TUM trajectory {path} holds no poses")
    data = np.array(rows)
    try:
        world_rot = quat_xyzw_to_rotmat(data[:, 4:8])
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    world_from_cam = np.concatenate([world_rot, data[:, 1:4, None]], axis=2)
    return data[:, 0], invert_pose(world_from_cam)


def read_names_file(path: Path, expected: int) -> list[str]:
    """Frame names, one a line (blank lines skipped); there must be ``expected`` of them."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read names file {path}: {exc}") from exc
    if len(names) != expected:
        raise InputError(f"{path} lists {len(names)} names for {expected} poses")
    return names


def _frame_indices(timestamps: np.ndarray) -> list[int] | None:
    """Timestamps as frame indices when they are distinct non-negative integers, else None."""
    if (timestamps >= 0).all() and (timestamps == np.round(timestamps)).all() \
            and len(np.unique(timestamps)) == len(timestamps):
        return [int(t) for t in timestamps]
    return None


def read_tum_gt(path: Path) -> GroundTruth:
    """A TUM ground-truth file, named by a names file beside it or by frame index."""
    stamps, poses = read_tum_trajectory(path)
    for pattern in TUM_NAMES_FILES:
        names_path = path.with_name(pattern.format(stem=path.stem))
        if names_path.is_file():
            names = read_names_file(names_path, len(poses))
            return GroundTruth(kind="tum", cam_from_world=poses, names=names, source=path)
    indices = _frame_indices(stamps)
    if indices is None:
        logger.info("%s: timestamps are not frame indices; matching frames by row order", path)
        indices = list(range(len(poses)))
    return GroundTruth(kind="tum", cam_from_world=poses, names=None, indices=indices, source=path)


def _read_7scenes_pose(pose_path: Path) -> np.ndarray | None:
    """Camera-from-world (3, 4) of one 7-Scenes pose file, None when not finite."""
    try:
        m = np.loadtxt(pose_path, dtype=float)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read 7-Scenes pose {pose_path}: {exc}") from exc
    if m.shape != (4, 4):
        raise InputError(f"{pose_path}: expected a 4 x 4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        logger.warning("skipping %s: pose is not finite", pose_path.name)
        return None
    world_from_cam = np.concatenate([nearest_rotation(m[:3, :3]), m[:3, 3:]], axis=1)
    return invert_pose(world_from_cam)


def read_7scenes_gt(folder: Path) -> GroundTruth:
    """A 7-Scenes sequence folder: ``frame-NNNNNN.pose.txt`` are 4 x 4 camera-to-world (metres).

    Rotations are projected onto the nearest proper rotation (the files are rounded); the frame
    name is that of the colour image (``frame-NNNNNN.color.jpg``, or ``.png`` when only that
    exists).
    """
    names, poses = [], []
    for pose_path in sorted(folder.glob(_SEVEN_SCENES_POSE), key=lambda p: natural_key(p.name)):
        pose = _read_7scenes_pose(pose_path)
        if pose is None:
            continue
        stem = pose_path.name[: -len(".pose.txt")]
        png = folder / f"{stem}.color.png"
        names.append(png.name if png.exists() and not (folder / f"{stem}.color.jpg").exists()
                     else f"{stem}.color.jpg")
        poses.append(pose)
    if not poses:
        raise InputError(f"no usable 7-Scenes poses in {folder}")
    return GroundTruth(kind="7scenes", cam_from_world=np.stack(poses), names=names, source=folder)


def _is_colmap_model(folder: Path) -> bool:
    return any((folder / f"images{ext}").is_file() and (folder / f"cameras{ext}").is_file()
               for ext in (".txt", ".bin"))


def read_colmap_gt(folder: Path) -> GroundTruth:
    """The posed images of a COLMAP model folder (text or binary), named by file name.

    Raises:
        InputError: the model does not load, holds no posed image, or two images share a
            file name.
    """
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(folder))
    except Exception as exc:  # noqa: BLE001 - pycolmap raises its own error types
        raise InputError(f"cannot read the COLMAP model {folder}: {exc}") from exc
    names, poses = [], []
    for image_id in sorted(rec.reg_image_ids()):
        image = rec.images[image_id]
        pose = np.asarray(image.cam_from_world().matrix(), dtype=float)
        if not np.isfinite(pose).all():
            logger.warning("skipping %s: pose is not finite", image.name)
            continue
        names.append(Path(image.name).name)
        poses.append(pose)
    if not poses:
        raise InputError(f"the COLMAP model {folder} holds no posed image")
    if len(set(names)) != len(names):
        raise InputError(f"the COLMAP model {folder} names one image file twice (in two "
                         "folders): poses cannot be matched by name")
    return GroundTruth(kind="colmap", cam_from_world=np.stack(poses), names=names, source=folder)


# --------------------------------------------------------------------------------------------
# Pipeline output readers
# --------------------------------------------------------------------------------------------

def merged_segment_dirs(out_dir: Path) -> list[Path]:
    """Folders holding a merged trajectory: ``OUT/merged`` (one segment) or its
    ``segment_XXX`` sub-folders (a sequence that merged into several segments)."""
    merged = Path(out_dir) / MERGED_TRAJECTORY.parent
    if (merged / MERGED_TRAJECTORY.name).is_file():
        return [merged]
    return sorted(p.parent for p in merged.glob(f"segment_*/{MERGED_TRAJECTORY.name}"))


def load_merged_poses(segment_dir: Path, frame_names: Sequence[str]
                      ) -> dict[str, np.ndarray] | None:
    """Poses of ``segment_dir/trajectory.txt`` by frame name, ``None`` when there is no file.

    Names come from ``trajectory_names.txt`` beside it when present, else the timestamps are
    indices into ``frame_names`` sorted naturally.

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
        indices = _frame_indices(stamps)
        ordered = sorted(frame_names, key=natural_key)
        if indices is None or max(indices) >= len(ordered):
            raise InputError(f"{path}: without {MERGED_NAMES.name}, timestamps must be distinct "
                             f"frame indices below {len(ordered)} (the run's frame count)")
        names = [ordered[i] for i in indices]
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
    if entry["status"] != "ok" or win.info is None:
        entry.update(status="failed", error=entry["error"] or win.problem)
        return entry
    if win.problem is not None:  # recorded as ok, but not whole or not made for this plan
        entry.update(status="error", error=win.problem)
        logger.warning("window %d: %s", win.index, win.problem)
        return entry
    try:
        poses = load_window_poses(win.path)
        entry["num_registered"] = len(poses)
        entry.update(evaluate_poses(poses, gt, options=options))
    except ValueError as exc:  # InputError included
        entry.update(status="error", error=str(exc))
        logger.warning("window %d: %s", win.index, exc)
    return entry


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and aggregate errors over the scored windows."""
    scored = [w for w in windows if w["status"] == "ok"]

    def agg(values: list[float]) -> dict[str, float] | None:
        vals = [v for v in values if v is not None]
        return ({"mean": float(np.mean(vals)), "median": float(np.median(vals)),
                 "max": float(np.max(vals))} if vals else None)

    return {"windows_total": len(windows), "windows_ok": len(scored),
            "windows_failed": sum(w["status"] == "failed" for w in windows),
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
    gt_kind, gt_poses = "mapping", gt
    if not isinstance(gt, Mapping):
        truth = read_ground_truth(gt)
        gt_kind, gt_poses = truth.kind, truth.as_dict(frame_names)
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
              "merged": _evaluate_merged(out_dir, frame_names, gt_poses, options,
                                         gt_units(gt_kind))}
    report["summary"] = _summary(report["windows"])
    return report


def ground_truth_beside(source: str | Path) -> Path | None:
    """The ground truth found beside an input folder: in it, or in its parent; ``None``."""
    source = Path(source)
    for candidate in (source, source.parent):
        try:
            read_ground_truth(candidate)
        except InputError:
            continue
        return candidate
    return None


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
    from ..io.sequences import DATASET_MANIFEST

    out_dir = Path(out_dir)
    try:
        dataset = json.loads((out_dir / DATASET_MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {out_dir / DATASET_MANIFEST}: {exc}") from exc
    entries, windows = [], []
    for sequence in dataset.get("sequences", []):
        name = sequence["name"]
        entry = {"name": name, "gt": None, "status": "ok", "error": None, "report": None}
        entries.append(entry)
        if sequence.get("status") == "failed":
            entry.update(status="failed", error=sequence.get("error"))
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


def _evaluate_merged(out_dir: Path, frame_names: list[str], gt: Mapping[str, np.ndarray],
                     options: EvaluateOptions, units: str) -> list[dict[str, Any]] | None:
    """One report entry per merged segment, ``None`` when nothing was merged."""
    entries = [_evaluate_segment(d, out_dir, frame_names, gt, options, units)
               for d in merged_segment_dirs(out_dir)]
    return entries or None


def _evaluate_segment(segment_dir: Path, out_dir: Path, frame_names: list[str],
                      gt: Mapping[str, np.ndarray], options: EvaluateOptions,
                      units: str) -> dict[str, Any]:
    poses = load_merged_poses(segment_dir, frame_names)
    entry = {"path": str(Path(segment_dir).relative_to(out_dir)), "status": "ok",
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
    """The report and its text for an output folder: a dataset root, or one run."""
    from ..io.sequences import DATASET_MANIFEST

    if (pred / DATASET_MANIFEST).is_file():
        report = evaluate_dataset(pred, gt, options=options)
        return report, format_dataset_report(report)
    if gt is None:
        gt = _beside_run_input(pred)
    report = evaluate_output(pred, gt, options=options)
    return report, format_report(report)


def _beside_run_input(out_dir: Path) -> Path:
    """The ground truth beside the input folder a run recorded in ``run.json``."""
    from ..io.output import RUN_MANIFEST

    try:
        source = json.loads((out_dir / RUN_MANIFEST).read_text())["config"]["input_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        source = None
    found = ground_truth_beside(source) if source else None
    if found is None:
        raise InputError(f"no ground truth found beside the input of {out_dir} "
                         f"({source or 'not recorded'}): give --gt")
    return found
