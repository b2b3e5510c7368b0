"""One window reconstructed from its own frames with pycolmap: SIFT, sequential matching,
incremental mapping, the model that registers most frames moved onto the first frame's camera
(the classical reconstructor with ``chunk_frames=0``; its windows run as
:class:`ColmapWindowJob` in worker processes).

``options`` is a :class:`pipeline.reconstructors.colmap.ColmapOptions`, read by attribute (as
:mod:`pipeline.algo.colmap_options` reads it), so that this layer imports no plug-in.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pycolmap

from ..core.results import STATUS_FAILED, STATUS_OK, WindowResult
from ..infra.memory import PeakMeter, memory_record, reset_peak
from ..infra.tempdirs import explain, make_temp
from . import classical_sfm as seq
from . import sift_matching
from .colmap_options import copy_options, mapping_options, reader_options

logger = logging.getLogger(__name__)

WINDOW_TEMP_PREFIX = "window-colmap-"
"""Temporary folders where COLMAP reconstructs a window alone."""


@dataclass(kw_only=True)
class ColmapWindowJob:
    """One window reconstructed from its own frames, in a worker process."""

    names: list[str]
    """Its frames' names (``staging/images/<name>``)."""
    staging: Path
    """Its staging folder (``sparse/`` goes there)."""
    options: Any
    """The window's options (a :class:`pipeline.reconstructors.colmap.ColmapOptions`)."""

    def run(self) -> WindowResult:
        return reconstruct_window(self.names, self.staging, self.options)

    def nbytes(self) -> int:
        return 0


def reconstruct_window(names: list[str], staging_dir: Path, options: Any) -> WindowResult:
    """Reconstruct one window whose frames are ``staging_dir/images/<name>``.

    Writes the largest model to ``staging_dir/sparse/`` (binary COLMAP files and ``points.ply``).
    Catches every error and returns it as a failed result.
    """
    stages: dict[str, dict[str, float]] = {}
    reset_peak()  # the window's peak, in the process that reconstructs it
    meter = PeakMeter()
    # COLMAP's SQLite database lives in local temporary space: SQLite is unsafe on network
    # filesystems, and a full output disk makes COLMAP abort inside SQLite
    work = make_temp(WINDOW_TEMP_PREFIX)
    try:
        pycolmap.logging.minloglevel = options.colmap_log_level
        pycolmap.set_random_seed(0)  # the same start whatever this worker ran before
        rec = _extract_match_map(names, staging_dir / "images", work, options, meter, stages)
        with meter.stage("export", stages):
            result = write_and_judge(rec, names, staging_dir / "sparse", options)
    except Exception as exc:  # noqa: BLE001 - recorded in the window's result
        logger.debug("window in %s failed", staging_dir, exc_info=True)
        result = WindowResult.failure(explain(f"{type(exc).__name__}: {exc}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.stages = stages
    result.timings = {name: span["seconds"] for name, span in stages.items()}
    result.memory = ({"peak_rss_mb": max(s["rss_peak_mb"] for s in stages.values())}
                     if stages else memory_record())
    return result


def _extract_match_map(names: list[str], image_dir: Path, work: Path, options: Any,
                       meter: PeakMeter, stages: dict[str, dict[str, float]]
                       ) -> pycolmap.Reconstruction | None:
    """Extract, match and map (each a measured stage in ``stages``); return the model that
    registers the most frames (or None)."""
    db = work / "database.db"
    extraction = copy_options(options.extraction)
    extraction.num_threads = options.num_threads
    mode = pycolmap.CameraMode.SINGLE if options.shared_camera else pycolmap.CameraMode.PER_IMAGE
    with meter.stage("features", stages):
        seq.extract_in_order(db, image_dir, names, camera_mode=mode,
                             reader=reader_options(options), extraction=extraction)
    indices = seq.sequential_pairs(range(len(names)), max(1, options.pairing_overlap),
                                   options.quadratic_overlap)
    pairs = [(names[i], names[j]) for i, j in sorted(indices)]
    with meter.stage("matching", stages):
        sift_matching.match_and_verify(db, pairs, options.matching, options.verification,
                                       options.num_threads, work / "pairs.txt")
    mapping = mapping_options(options)
    with meter.stage("mapping", stages):
        models = pycolmap.incremental_mapping(db, image_dir, work / "models", options=mapping)
    if not models:
        return None
    return max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))


def write_and_judge(rec: pycolmap.Reconstruction | None, names: list[str], sparse_dir: Path,
                    options: Any) -> WindowResult:
    """Write the model and judge the window by how many frames it registered."""
    if rec is None:
        return WindowResult.failure("COLMAP found no model: too few matches, or too little "
                                    "camera motion within the window to triangulate (try "
                                    "--frame-step or a longer window)")
    registered = sorted((rec.images[i].name for i in rec.reg_image_ids()), key=names.index)
    anchor_to_first_frame(rec, registered[0])
    sparse_dir.mkdir(parents=True, exist_ok=True)
    rec.write(sparse_dir)
    rec.export_PLY(sparse_dir / "points.ply")
    needed = max(2, math.ceil(options.min_registered_fraction * len(names)))
    result = WindowResult(
        status=STATUS_OK, registered_frames=registered, num_points3D=rec.num_points3D(),
        mean_reprojection_error=float(rec.compute_mean_reprojection_error()),
        details={"num_cameras": rec.num_cameras(), "camera_type": options.camera_type,
                 "shared_camera": options.shared_camera})
    if len(registered) < needed:
        result.status, result.error = STATUS_FAILED, (
            f"only {len(registered)} of {len(names)} frames registered (need {needed})")
    return result


def anchor_to_first_frame(rec: pycolmap.Reconstruction, name: str) -> None:
    """Move the model's world frame onto the camera of frame ``name`` (its pose becomes identity).

    The scale stays COLMAP's (arbitrary); only rotation and translation change.
    """
    pose = rec.find_image_with_name(name).cam_from_world()
    rec.transform(pycolmap.Sim3d(1.0, pose.rotation, pose.translation))
