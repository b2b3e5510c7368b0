"""Classical reconstruction of each window with pycolmap: SIFT, matching, incremental mapping.

Needs no model weights and runs on the CPU. The windows of a batch are reconstructed in parallel
worker processes (``num_workers``), each using ``num_threads`` threads.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pycolmap

from ..config import CAMERA_PARAMS, CAMERA_TYPES
from ..frames import Frame
from ..windows import Window
from ..memory import PeakMeter, memory_record, reset_peak
from . import STATUS_OK, Reconstructor, WindowResult

logger = logging.getLogger(__name__)



def _default_mapping() -> pycolmap.IncrementalPipelineOptions:
    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = 3  # a window has few frames; COLMAP's default (10) drops them all
    options.random_seed = 0
    return options


@dataclass(kw_only=True)
class ColmapOptions:
    """Settings of the classical reconstructor."""

    camera_type: str = "SIMPLE_PINHOLE"
    """COLMAP camera model of every camera: SIMPLE_PINHOLE, PINHOLE or SIMPLE_RADIAL."""
    shared_camera: bool = False
    """One camera (intrinsics) for all frames of a window, instead of one per frame."""
    camera_params: tuple[float, ...] | None = None
    """Known intrinsics in COLMAP's order for ``camera_type``; kept fixed during mapping."""
    num_workers: int | None = field(default=None, metadata={"result": False})
    """Worker processes per batch; default: one per window of the batch, at most one per core.
    Windows always run in worker processes, so that COLMAP aborting (it does on some internal
    errors) costs one window, not the run."""
    num_threads: int | None = field(default=None, metadata={"result": False})
    """Threads of each worker; default: the cores divided among the workers."""
    pairing_overlap: int = 10
    """Each frame is matched with this many following frames of its window."""
    min_registered_fraction: float = 0.5
    """A window whose largest model registers fewer of its frames than this fails."""
    extraction: pycolmap.FeatureExtractionOptions = field(
        default_factory=pycolmap.FeatureExtractionOptions)
    """pycolmap's SIFT extraction options, passed through (threads are set by ``num_threads``)."""
    matching: pycolmap.FeatureMatchingOptions = field(
        default_factory=pycolmap.FeatureMatchingOptions)
    """pycolmap's matching options, passed through."""
    mapping: pycolmap.IncrementalPipelineOptions = field(default_factory=_default_mapping)
    """pycolmap's incremental mapping options, passed through (``min_model_size`` defaults to 3)."""
    colmap_log_level: int = field(default=2, metadata={"result": False})
    """glog level of COLMAP's own messages in the workers: 0 info, 1 warnings, 2 errors."""

    def __post_init__(self) -> None:
        if self.camera_type not in CAMERA_TYPES:
            raise ValueError(f"camera type must be one of {', '.join(CAMERA_TYPES)}, "
                             f"got {self.camera_type!r}")
        expected = CAMERA_PARAMS[self.camera_type]
        if self.camera_params is not None and len(self.camera_params) != len(expected):
            raise ValueError(f"{self.camera_type} takes {len(expected)} camera parameters "
                             f"({', '.join(expected)}), got {len(self.camera_params)}")
        if not 0.0 <= self.min_registered_fraction <= 1.0:
            raise ValueError("min_registered_fraction must lie in [0, 1]")


class ColmapReconstructor(Reconstructor):
    """SIFT + sequential matching + incremental mapping per window (pycolmap 4.x, CPU)."""

    name = "colmap"

    def __init__(self, options: ColmapOptions | None = None) -> None:
        self.options = options or ColmapOptions()
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 0

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"name": self.name, "device": self.device, "camera_type": o.camera_type,
                "shared_camera": o.shared_camera, "camera_params": o.camera_params,
                "num_workers": o.num_workers,
                "num_threads": o.num_threads, "pairing_overlap": o.pairing_overlap,
                "min_registered_fraction": o.min_registered_fraction,
                "pycolmap": pycolmap.__version__}

    def reconstruct_batch(self, windows: Sequence[Window[Frame]],
                          staging_dirs: Sequence[Path]) -> list[WindowResult]:
        cores = os.cpu_count() or 1
        workers = self.options.num_workers or min(len(windows), cores)
        threads = self.options.num_threads or max(1, cores // workers)
        options = replace(self.options, num_threads=threads)
        jobs = [([f.name for f in w.items], Path(d), _window_options(w, options))
                for w, d in zip(windows, staging_dirs)]
        pool = self._get_pool(workers)
        futures = [pool.submit(reconstruct_window, *job) for job in jobs]
        return [self._collect(future) for future in futures]

    def _collect(self, future: Future) -> WindowResult:
        try:
            return future.result()
        except BrokenProcessPool:
            self.close()  # a worker died (e.g. killed for memory); the next batch gets a new pool
            return WindowResult.failure("the worker process reconstructing this window crashed")
        except Exception as exc:  # noqa: BLE001 - one window never stops the others
            return WindowResult.failure(f"{type(exc).__name__}: {exc}")

    def _get_pool(self, workers: int) -> ProcessPoolExecutor:
        if self._pool is None or self._pool_size < workers:  # a larger pool serves as well
            self.close()
            # spawn: forking a process that already runs threads (pycolmap, torch) can deadlock
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                             initializer=exit_with_parent,
                                             initargs=(os.getpid(),))
            self._pool_size = workers
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None and self._pool is not None:  # interrupted: stop the workers now
            stop_workers(self._pool)
            self._pool = None
        self.close()


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Worker initializer: end this process as soon as ``parent_pid`` is gone (a parent killed
    with ``kill -9`` never tells its workers; they would wait on their queue forever). A daemon
    thread polls the parent every ``interval`` seconds (pycolmap releases the GIL while it
    works, so the thread runs during long COLMAP calls too)."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes at once (their windows are abandoned; SIGKILL, because
    COLMAP's failure handler answers SIGTERM with a stack dump) and let the pool go."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _window_options(window: Window[Frame], options: ColmapOptions) -> ColmapOptions:
    """The options for one window: a shared camera needs frames of one size, so a window whose
    frames differ in size gets one camera per frame (said in the log and in its details)."""
    if options.shared_camera and len({f.size for f in window.items}) > 1:
        logger.warning("window %d: frames differ in size, so each gets its own camera",
                       window.index)
        return replace(options, shared_camera=False)
    return options


def reconstruct_window(names: list[str], staging_dir: Path, options: ColmapOptions) -> WindowResult:
    """Reconstruct one window whose frames are ``staging_dir/images/<name>``.

    Writes the largest model to ``staging_dir/sparse/`` (binary COLMAP files and ``points.ply``).
    Catches every error and returns it as a failed result.
    """
    stages: dict[str, dict[str, float]] = {}
    reset_peak()  # the window's peak, in the process that reconstructs it
    meter = PeakMeter()
    # COLMAP's SQLite database lives in local temporary space: SQLite is unsafe on network
    # filesystems, and a full output disk makes COLMAP abort inside SQLite
    work = Path(tempfile.mkdtemp(prefix="window-colmap-"))
    try:
        pycolmap.logging.minloglevel = options.colmap_log_level
        rec = _run_sfm(names, staging_dir / "images", work, options, meter, stages)
        with meter.stage("export", stages):
            result = _finish(rec, names, staging_dir / "sparse", options)
    except Exception as exc:  # noqa: BLE001 - recorded in the window's result
        logger.debug("window in %s failed", staging_dir, exc_info=True)
        result = WindowResult.failure(f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.stages = stages
    result.timings = {name: span["seconds"] for name, span in stages.items()}
    result.memory = ({"peak_rss_mb": max(s["rss_peak_mb"] for s in stages.values())}
                     if stages else memory_record())
    return result


def _run_sfm(names: list[str], image_dir: Path, work: Path, options: ColmapOptions,
             meter: PeakMeter, stages: dict[str, dict[str, float]]
             ) -> pycolmap.Reconstruction | None:
    """Extract, match and map (each a measured stage in ``stages``); return the model that
    registers the most frames (or None)."""
    db = work / "database.db"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = options.camera_type
    if options.camera_params is not None:
        reader.camera_params = ",".join(repr(float(v)) for v in options.camera_params)
    extraction = _copy(options.extraction)
    extraction.num_threads = options.num_threads
    mode = pycolmap.CameraMode.SINGLE if options.shared_camera else pycolmap.CameraMode.PER_IMAGE
    with meter.stage("features", stages):
        pycolmap.extract_features(db, image_dir, image_names=names, camera_mode=mode,
                                  reader_options=reader, extraction_options=extraction,
                                  device=pycolmap.Device.cpu)
    matching = _copy(options.matching)
    matching.num_threads = options.num_threads
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap = max(1, min(options.pairing_overlap, len(names) - 1))
    pairing.num_threads = options.num_threads
    with meter.stage("matching", stages):
        pycolmap.match_sequential(db, matching_options=matching, pairing_options=pairing,
                                  device=pycolmap.Device.cpu)
    mapping = _copy(options.mapping)
    mapping.num_threads = options.num_threads
    if options.camera_params is not None:  # known intrinsics stay as given
        mapping.ba_refine_focal_length = False
        mapping.ba_refine_extra_params = False
    with meter.stage("mapping", stages):
        models = pycolmap.incremental_mapping(db, image_dir, work / "models", options=mapping)
    if not models:
        return None
    return max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))


def _finish(rec: pycolmap.Reconstruction | None, names: list[str], sparse_dir: Path,
            options: ColmapOptions) -> WindowResult:
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
        result.status, result.error = "failed", (
            f"only {len(registered)} of {len(names)} frames registered (need {needed})")
    return result


def anchor_to_first_frame(rec: pycolmap.Reconstruction, name: str) -> None:
    """Move the model's world frame onto the camera of frame ``name`` (its pose becomes identity).

    The scale stays COLMAP's (arbitrary); only rotation and translation change.
    """
    pose = rec.find_image_with_name(name).cam_from_world()
    rec.transform(pycolmap.Sim3d(1.0, pose.rotation, pose.translation))


def _copy(options: Any) -> Any:
    """An independent copy of a pycolmap option object."""
    clone = type(options)()
    clone.mergedict(options.todict())
    return clone
