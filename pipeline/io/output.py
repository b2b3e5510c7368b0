"""The output folder as readers see it: window records, what makes a window reusable, the run plan.

A window folder is *trusted* (reused by a rerun, read by merge and evaluate) only when

* its ``window_info.json`` is a record of the expected shape whose status is ``ok``,
* its *signature* equals the one the current run expects: the content hash of each of its
  frames, the reconstructor and every option that changes its result (derived from the
  reconstructor's options object by :func:`options_signature`, so a new option cannot be left
  out), and the ``images`` mode;
* every file the record lists is there with its recorded size, and its COLMAP model loads with
  the registered frames the record names.

The run's *plan* (``plan.json``, written by every run before any window) lists the frames (name,
source, content hash, size) and the windows (index, folder, signature digest) of that run. Merge
and evaluate read the windows of the plan only; a window folder the plan does not name (left by an
earlier run over other input) is reported, never used.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.results import STATUS_OK
from ..infra.files import write_json
from .signature import signature_difference, stable_hash

logger = logging.getLogger(__name__)

WINDOW_INFO = "window_info.json"
OWN_FOLDERS = ("frames", "merged", "colmap_sequence", "batch_*")
"""Folders of an output folder that a run replaces or deletes while it works (never inputs,
never sequences)."""


def is_own_folder(name: str) -> bool:
    """Whether ``name`` is one of an output folder's :data:`OWN_FOLDERS`."""
    return any(fnmatch.fnmatch(name, own) for own in OWN_FOLDERS)


RUN_MANIFEST = "run.json"
PLAN = "plan.json"

RUN_RECORDS: dict[str, str] = {RUN_MANIFEST: "pipeline_version", PLAN: "windows"}
"""The records a run over one sequence writes at the top of its output folder, each with a
key only this pipeline's version of the file holds."""


def refuse_foreign_records(folder: Path, records: Mapping[str, str] = RUN_RECORDS) -> None:
    """Raise when a file of ``records`` (name: a key of its top-level JSON object; for a
    ``.jsonl`` file, of its first line) exists in ``folder`` but no run of this pipeline wrote
    it: the run would replace the user's file. (The pipeline writes them whole, through a
    renamed temporary file, so one that does not parse is not its own.)

    Raises:
        InputError: naming the file.
    """
    for name, key in records.items():
        path = Path(folder) / name
        if not (path.exists() or path.is_symlink()):
            continue
        try:
            text = path.read_text()
            if name.endswith(".jsonl"):
                lines = [line for line in text.splitlines() if line.strip()]
                if not lines:  # an index of no window yet
                    continue
                text = lines[0]
            data = json.loads(text)
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or key not in data:
            raise InputError(f"{path} exists and no run of this pipeline wrote it: the run "
                             "writes there; move it away first, or choose another --output-dir")


RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "window_index": int, "path": str, "status": str, "frames": list, "registered_frames": list,
    "num_registered": int, "signature": dict}
"""Fields every ``window_info.json`` holds, with their JSON types."""


@dataclass(kw_only=True)
class WindowChecks:
    """What a window's COLMAP model must hold to be marked ok: real structure, not a model
    with a handful of points and a reprojection error of zero. The values and what the model
    had are recorded in ``window_info.json`` under ``checks``."""

    min_points: int = 50
    """3D points the model needs."""
    min_frame_observations: int = 20
    """Observations (points seen) every registered frame needs."""
    fov_range: tuple[float, float] | None = (5.0, 140.0)
    """Fields of view (degrees, across the larger image side) a registered frame's camera may
    have; a focal length outside them is a camera solved wrong (a focal of 0.07 px, or of 17
    image widths), not a lens. None: not checked (records of versions before 2026-12-06)."""

    def problem(self, rec: Any) -> str | None:
        """Why the ``pycolmap.Reconstruction`` ``rec`` fails these checks, or ``None``."""
        if rec.num_points3D() < self.min_points:
            return (f"too little structure: {rec.num_points3D()} 3D points (need "
                    f"{self.min_points}, --min-points)")
        counts = observation_counts(rec)
        weakest = min(counts, key=counts.get, default=None)
        if weakest is not None and counts[weakest] < self.min_frame_observations:
            return (f"too little structure: frame {weakest} sees {counts[weakest]} 3D points "
                    f"(need {self.min_frame_observations}, --min-frame-observations)")
        return self._fov_problem(rec)

    def _fov_problem(self, rec: Any) -> str | None:
        if self.fov_range is None:
            return None
        low, high = self.fov_range
        for name, (fov, focal, size) in fields_of_view(rec).items():
            if not low <= fov <= high:
                return (f"implausible camera: frame {name} has a focal length of {focal:.4g} px "
                        f"for {size[0]}x{size[1]} pixels, a field of view of {fov:.3g} degrees "
                        f"(outside {low:g}-{high:g}, --fov-range)")
        return None

    def record(self, rec: Any) -> dict[str, Any]:
        """The checks and what ``rec`` has, for ``window_info.json``."""
        counts = observation_counts(rec)
        record = {"min_points": self.min_points,
                  "min_frame_observations": self.min_frame_observations,
                  "num_points3D": rec.num_points3D(),
                  "fewest_frame_observations": min(counts.values(), default=0)}
        if self.fov_range is not None:
            fovs = [fov for fov, _, _ in fields_of_view(rec).values()]
            record["fov_range"] = list(self.fov_range)
            record["fov_deg"] = [round(min(fovs), 4), round(max(fovs), 4)] if fovs else None
        return record

    @classmethod
    def recorded(cls, checks: Mapping[str, Any]) -> WindowChecks:
        """The checks a ``window_info.json``'s ``checks`` were made with.

        Raises:
            KeyError, TypeError, ValueError: a record of another shape.
        """
        fov = checks.get("fov_range")
        return cls(min_points=int(checks["min_points"]),
                   min_frame_observations=int(checks["min_frame_observations"]),
                   fov_range=None if fov is None else (float(fov[0]), float(fov[1])))


def fields_of_view(rec: Any) -> dict[str, tuple[float, float, tuple[int, int]]]:
    """``{frame name: (field of view in degrees across the larger side, focal length in px,
    (width, height))}`` of the registered frames of ``rec`` (the mean of ``fx`` and ``fy``)."""
    found = {}
    for i in rec.reg_image_ids():
        image = rec.images[i]
        camera = rec.cameras[image.camera_id]
        focal = float(np.mean([camera.focal_length_x, camera.focal_length_y]))
        side = max(camera.width, camera.height)
        fov = math.degrees(2.0 * math.atan2(side / 2.0, focal)) if focal > 0 else 180.0
        found[image.name] = (fov, focal, (camera.width, camera.height))
    return found


def observation_counts(rec: Any) -> dict[str, int]:
    """``{frame name: 3D points it observes}`` of the registered frames of ``rec``."""
    return {rec.images[i].name: rec.images[i].num_points3D for i in rec.reg_image_ids()}


def read_window_info(window_dir: Path) -> dict[str, Any] | None:
    """The window's ``window_info.json`` when it holds a JSON object, else ``None``."""
    try:
        data = json.loads((Path(window_dir) / WINDOW_INFO).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_problem(info: Any) -> str | None:
    """Why ``info`` is not a window record of the expected shape, or ``None``."""
    if not isinstance(info, dict):
        return "its window_info.json is missing, unreadable or not a JSON object"
    for key, kind in RECORD_FIELDS.items():
        value = info.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            return f"its window_info.json has no valid {key!r}"
    return None


def list_files(folder: Path) -> dict[str, int]:
    """``{relative path: size}`` of the regular files under ``folder`` (symlinks left out)."""
    folder = Path(folder)
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if not path.is_symlink():
                files[path.relative_to(folder).as_posix()] = path.stat().st_size
    return dict(sorted(files.items()))


def file_digests(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """``{relative path: SHA-256 hex digest}`` of the files ``names`` under ``folder``."""
    digests = {}
    for name in names:
        digest = hashlib.sha256()
        with open(Path(folder) / name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        digests[name] = digest.hexdigest()
    return digests


def check_window(window_dir: Path, signature: Mapping[str, Any] | None = None) -> str | None:
    """Why the window in ``window_dir`` cannot be trusted, or ``None`` when it can.

    Args:
        window_dir: The window folder.
        signature: The signature the window must have been made with (see
            :func:`window_signature`); ``None`` skips that comparison.
    """
    info = read_window_info(window_dir)
    problem = record_problem(info)
    if problem:
        return problem
    if info["status"] != STATUS_OK:
        return f"its status is {info['status']!r}"
    if signature is not None:
        difference = signature_difference(info["signature"], signature)
        if difference:
            return difference
    return files_problem(Path(window_dir), info)


def files_problem(window_dir: Path, info: Mapping[str, Any]) -> str | None:
    """Why the files of a finished window are not whole, or ``None``: every file the record
    lists must have its recorded size and content (SHA-256, where the record has one: records
    of versions before 2026-12-06 have sizes only), and ``sparse/`` must load with the
    registered frames."""
    files = info.get("files")
    if not isinstance(files, dict):
        return "its window_info.json lists no files (made by an older version)"
    for name, size in files.items():
        path = window_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not the {size} written"
    problem = _content_problem(window_dir, info.get("sha256"), files)
    if problem:
        return problem
    rec, problem = load_registered_model(window_dir / "sparse", info["registered_frames"])
    if problem is None and info.get("status") == STATUS_OK:
        problem = ok_record_problem(rec, info)
    return problem


def _content_problem(window_dir: Path, recorded: Any, files: Mapping[str, Any]) -> str | None:
    """Why the files' content is not what was written (their SHA-256 differs), or ``None``."""
    if recorded is None:
        return None
    if not isinstance(recorded, dict) or set(recorded) != set(files):
        return "its window_info.json records checksums of other files"
    try:
        actual = file_digests(window_dir, sorted(recorded))
    except OSError as exc:
        return f"its files cannot be read: {exc.strerror or exc}"
    for name in sorted(recorded):
        if actual[name] != recorded[name]:
            return f"{name} is not what was written (its SHA-256 differs)"
    return None


def ok_record_problem(rec: Any, info: Mapping[str, Any]) -> str | None:
    """Why a record that says ``ok`` does not agree with its model ``rec``, or ``None``: it
    names no error, its checks pass their own thresholds on the model, and the point and
    observation counts it records are the model's (a record edited by hand to ``ok`` fails
    here)."""
    checks = info.get("checks")
    if info.get("error") is not None:
        return "its record says ok but names an error"
    if not isinstance(checks, dict):
        return "its window_info.json records no checks (made by an older version)"
    try:
        bar = WindowChecks.recorded(checks)
    except (KeyError, TypeError, ValueError, IndexError):
        return "its window_info.json records checks of another shape"
    problem = bar.problem(rec)
    if problem is not None:
        return f"its record says ok, but its model has {problem}"
    if bar.record(rec) != checks or info.get("num_points3D") != rec.num_points3D():
        return "its record's point or observation counts are not its model's"
    return None


def read_model(sparse: str | Path) -> Any:
    """The ``pycolmap.Reconstruction`` in the folder ``sparse`` (binary or text): the one place
    the package opens a window's model.

    Raises:
        InputError: when no COLMAP model can be read there (pycolmap's reason in one line).
    """
    import pycolmap  # deferred: a heavy import that only the readers need

    try:
        return pycolmap.Reconstruction(str(sparse))
    except Exception as exc:  # noqa: BLE001 - pycolmap raises C++ errors of several kinds
        raise InputError(f"cannot read the COLMAP model {sparse} ({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    """pycolmap's (multi-line, C++) message, on one line of at most 200 characters."""
    return " ".join(str(exc).split())[:200]


def load_registered_model(sparse: Path, registered: Sequence[str]) -> tuple[Any, str | None]:
    """``(pycolmap.Reconstruction, None)``, or ``(None, why)`` when the model in ``sparse`` does
    not load with exactly the ``registered`` frames."""
    try:
        rec = read_model(sparse)
    except InputError as exc:
        return None, f"its COLMAP model does not load ({_reason(exc.__cause__ or exc)})"
    names = {rec.images[i].name for i in rec.reg_image_ids()}
    if names != set(registered):
        return None, "its COLMAP model does not hold the registered frames its record names"
    return rec, None


def open_window_model(window_dir: str | Path) -> Any:
    """The ``pycolmap.Reconstruction`` of a window folder: ``window_dir/sparse``, or
    ``sparse/0`` when ``sparse`` itself holds none (as COLMAP's mapper lays it out).

    Raises:
        InputError: when no COLMAP model can be read.
    """
    sparse = Path(window_dir) / "sparse"
    if not any(sparse.glob("images.*")) and (sparse / "0").is_dir():
        sparse = sparse / "0"
    return read_model(sparse)


def read_window_poses(window_dir: str | Path) -> dict[str, np.ndarray]:
    """``{image name: (3, 4) camera-from-world}`` of the posed images of ``window_dir/sparse``.

    A model in ``sparse/0`` is used when ``sparse`` itself holds none.

    Raises:
        InputError: when no COLMAP model can be read.
    """
    rec = open_window_model(window_dir)
    return {image.name: np.asarray(image.cam_from_world().matrix(), dtype=float)
            for _, image in rec.images.items() if image.has_pose}


@dataclass(frozen=True)
class WindowCamera:
    """One posed frame of a window's COLMAP model."""

    cam_from_world: np.ndarray
    """``(3, 4)`` world-to-camera pose (OpenCV axes, the window's world)."""
    K: np.ndarray
    """``(3, 3)`` pinhole intrinsics in pixels, COLMAP convention (the top-left pixel's centre
    is ``(0.5, 0.5)``); distortion, if the model has any, is in ``params``."""
    model: str
    """COLMAP camera model name."""
    params: tuple[float, ...]
    """COLMAP camera parameters, in the model's order."""
    size: tuple[int, int]
    """``(width, height)`` in pixels."""

    @property
    def distortion(self) -> np.ndarray:
        """``(4,)`` lens distortion as OpenCV's ``(k1, k2, p1, p2)``, on normalised image
        coordinates (so unchanged by resizing): zeros for the pinhole models, ``k1`` of
        ``SIMPLE_RADIAL`` / ``RADIAL`` (``k2`` too), ``OPENCV``'s four as they are.

        Raises:
            ValueError: a camera model of another kind (fisheye, thin prism, ...).
        """
        coefficients = np.zeros(4)
        found = DISTORTION_PARAMS.get(self.model)
        if found is None:
            raise ValueError(f"camera model {self.model} has no (k1, k2, p1, p2) form")
        start, count = found
        coefficients[:count] = self.params[start:start + count]
        return coefficients


DISTORTION_PARAMS = {"SIMPLE_PINHOLE": (3, 0), "PINHOLE": (4, 0), "SIMPLE_RADIAL": (3, 1),
                     "RADIAL": (3, 2), "OPENCV": (4, 4)}
"""COLMAP camera models whose distortion is OpenCV's ``(k1, k2, p1, p2)`` (or a prefix):
``(index of k1 in the parameters, how many)``."""


def read_window_cameras(window_dir: str | Path) -> dict[str, WindowCamera]:
    """``{image name: WindowCamera}`` of the posed images of ``window_dir/sparse``, in name
    order.

    Raises:
        InputError: when no COLMAP model can be read.
    """
    rec = open_window_model(window_dir)
    out = {}
    for _, image in sorted(rec.images.items(), key=lambda kv: kv[1].name):
        if not image.has_pose:
            continue
        camera = rec.cameras[image.camera_id]
        out[image.name] = WindowCamera(
            cam_from_world=np.asarray(image.cam_from_world().matrix(), dtype=float),
            K=np.asarray(camera.calibration_matrix(), dtype=float),
            model=camera.model.name, params=tuple(float(v) for v in camera.params),
            size=(int(camera.width), int(camera.height)))
    return out


def read_window_intrinsics(window_dir: str | Path
                           ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``({image name: [fx, fy, cx, cy]}, {image name: [k1, k2, p1, p2]})`` of the posed
    images of ``window_dir/sparse`` (pixels, COLMAP convention; the second holds only the
    frames whose camera has distortion, see :attr:`WindowCamera.distortion`)."""
    cameras = read_window_cameras(window_dir)
    intrinsics = {name: [round(float(c.K[0, 0]), 4), round(float(c.K[1, 1]), 4),
                         round(float(c.K[0, 2]), 4), round(float(c.K[1, 2]), 4)]
                  for name, c in cameras.items()}
    distortion = {name: [round(float(v), 8) for v in c.distortion]
                  for name, c in cameras.items() if c.distortion.any()}
    return intrinsics, distortion


def refresh_links(window_dir: Path, frames: Sequence[Any]) -> int:
    """Point the window's ``images/`` links at the frames' current files (an input folder that
    moved); return how many were replaced. Copies and windows without ``images/`` are left."""
    image_dir = Path(window_dir) / "images"
    replaced = 0
    for frame in frames:
        link = image_dir / frame.name
        target = Path(frame.path).resolve()
        if not link.is_symlink() or Path(os.readlink(link)) == target:
            continue
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)
        replaced += 1
    return replaced


@dataclass(kw_only=True)
class PlannedWindow:
    """One window of a run's plan, with what its folder holds now."""

    index: int
    """Global window index."""
    path: Path
    """The window folder."""
    digest: str
    """Digest of the signature the plan expects."""
    info: dict[str, Any] | None
    """The folder's ``window_info.json`` (``None`` when missing or not a record)."""
    problem: str | None
    """Why the folder cannot be used (``None``: a whole, successful window of this plan)."""

    @property
    def usable(self) -> bool:
        """A whole, successful window of this plan (its poses can be read)."""
        return (self.problem is None and self.info is not None
                and self.info.get("status") == STATUS_OK)


def write_plan(output_dir: Path, frames: Sequence[Any], windows: Sequence[Any],
               signatures: Sequence[Mapping[str, Any]]) -> str:
    """Write ``plan.json`` (frames and windows of this run); return its digest."""

    plan = {"version": 1,
            "frames": [{"name": f.name, "source": str(f.source), "digest": f.digest,
                        "size": list(f.size), "timestamp": getattr(f, "timestamp", None)}
                       for f in frames],
            "windows": [{"index": w.index, "path": w.relative_dir.as_posix(), "start": w.start,
                         "num_frames": len(w), "digest": stable_hash(s)}
                        for w, s in zip(windows, signatures)]}
    plan["digest"] = stable_hash(plan)
    write_json(Path(output_dir) / PLAN, plan)
    return plan["digest"]


def read_plan(output_dir: Path) -> dict[str, Any]:
    """The run plan of ``output_dir``.

    Raises:
        InputError: there is no readable plan (no run wrote this folder, or an older version did).
    """
    path = Path(output_dir) / PLAN
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        if (Path(output_dir) / "index.jsonl").is_file():
            raise InputError(f"{output_dir} holds a run over many sequences: name one of its "
                             "sequence folders (OUT/<sequence>)") from None
        raise InputError(f"{output_dir} holds no {PLAN}: it is not a pipeline output folder, or "
                         "an older version wrote it (rerun the pipeline into it)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(plan, dict) or not isinstance(plan.get("windows"), list):
        raise InputError(f"{path} is not a run plan")
    return plan


def iter_windows(output_dir: Path, *, ok: bool = False) -> Iterator[PlannedWindow]:
    """The windows of the run plan of ``output_dir``, in window order (with ``ok``: only those
    whose record says ok and whose folder is whole and made for this plan).

    Raises:
        InputError: the folder holds no readable run plan.
    """
    for window in planned_windows(output_dir)[0]:
        if not ok or window.usable:
            yield window


def planned_windows(output_dir: Path) -> tuple[list[PlannedWindow], list[Path]]:
    """The windows of the current run's plan, and the window folders it does not name.

    Each planned window says whether its folder is a whole window made for this plan (its
    signature digest is the planned one, its files are whole). Leftover folders are logged.

    Raises:
        InputError: see :func:`read_plan`.
    """
    output_dir = Path(output_dir)
    plan = read_plan(output_dir)
    windows = []
    for entry in plan["windows"]:
        folder = output_dir / entry["path"]
        info = read_window_info(folder)
        problem = record_problem(info)
        if problem is None:
            if info["status"] != STATUS_OK:
                problem = f"failed: {info.get('error')}"
            elif stable_hash(info["signature"]) != entry["digest"]:
                problem = "it was not made for this run's frames and options"
            else:
                problem = files_problem(folder, info)
        windows.append(PlannedWindow(index=entry["index"], path=folder, digest=entry["digest"],
                                     info=info, problem=problem))
    planned = {w.path.resolve() for w in windows}
    leftovers = [p for p in sorted(output_dir.glob("batch_*/window_*"))
                 if p.is_dir() and p.resolve() not in planned]
    for path in leftovers:
        logger.warning("ignoring %s: not a window of the current run's plan (left by an earlier "
                       "run over other frames or options)", path)
    return windows, leftovers


