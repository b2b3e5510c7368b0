"""The life of a window: staging folders, a batch started, each window's record,
signature and folder when its result is in.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import DiskFullError, InputError
from ..core.windows import Batch, Window
from ..exec.executor import CpuPool, InFlight, completed_pending, result_of
from ..infra.files import NO_SPACE
from ..io.frames import Frame, prepare_frames
from ..io.output import WindowChecks
from ..io.run_record import now
from ..io.signature import window_signature
from ..io.window_folders import create_staging, discard_staging, disk_nearly_full, finalize_window
from ..reconstructors import (
    STATUS_FAILED,
    STATUS_OK,
    Reconstructor,
    WindowResult,
    build_reconstructor,
)
from .choice import choose_reconstructor
from .config import PipelineConfig
from .inputs import FRAME_CACHE

logger = logging.getLogger(__name__)


def process_window_batch(window_batch: Batch[Any] | Sequence[Window[Any]], batch_idx: int,
                         args: PipelineConfig, *,
                         reconstructor: Reconstructor | None = None) -> list[dict[str, Any]]:
    """Reconstruct one batch of windows in this process and write each window's folder.

    Every window ends with a folder and a ``window_info.json``: ``status`` is ``"ok"`` or
    ``"failed"`` with the reason in ``error``. One window's failure never stops the others, and an
    error of the reconstructor as a whole is recorded against each window of the batch.

    Args:
        window_batch: Windows of one shape (a :class:`Batch` or a plain sequence of windows),
            holding :class:`~pipeline.io.frames.Frame` objects or plain image paths (validated and
            converted as a run does, into ``args.output_dir/frames``).
        batch_idx: Index of the batch in this run, recorded in each ``window_info.json``.
        args: The run's configuration.
        reconstructor: Reused across batches by :func:`run`; built from ``args`` when ``None``
            (``auto`` is resolved as the command line resolves it).

    Returns:
        The window records written to ``window_info.json``, in order.

    Raises:
        DiskFullError: the disk filled up; ``records`` on the exception holds the windows that
            were finalised before.
    """
    windows = list(getattr(window_batch, "windows", window_batch))
    if not windows:
        return []
    windows = _frame_windows(windows, args)
    if reconstructor is None:
        args = replace(args, reconstructor=choose_reconstructor(args)[0])
        with build_reconstructor(args) as owned:
            return process_window_batch(windows, batch_idx, args, reconstructor=owned)
    flights = start_window_batch(windows, batch_idx, args, reconstructor, CpuPool(0))
    records: list[dict[str, Any]] = []
    for k, flight in enumerate(flights):
        try:
            records.append(finish_window(flight, result_of(flight.pending), args, reconstructor))
        except DiskFullError as exc:
            for rest in flights[k + 1:]:
                discard_staging(rest.staging)
            exc.records = records
            raise
    return records


def start_window_batch(windows: Sequence[Window[Frame]], batch_idx: int, args: PipelineConfig,
                       reconstructor: Reconstructor, pool: CpuPool, *,
                       outs: Sequence[Path] | None = None) -> list[InFlight]:
    """Make the windows' staging folders and start the batch (see
    :meth:`~pipeline.reconstructors.Reconstructor.start_batch`); a batch that fails as a whole
    fails each of its windows. ``outs``: each window's run folder (default: the output folder;
    a batch may mix the sequences of a run over many)."""
    outs = outs or [Path(args.output_dir)] * len(windows)
    finals = [out / w.relative_dir for out, w in zip(outs, windows)]
    stagings = _create_stagings(windows, finals, args.images)
    start, generation = time.perf_counter(), pool.generation
    try:
        pending = reconstructor.start_batch(windows, stagings, pool)
        if len(pending) != len(windows):
            raise RuntimeError(f"{reconstructor.name} returned {len(pending)} results "
                               f"for {len(windows)} windows")
    except Exception as exc:  # noqa: BLE001 - the batch's windows fail, the run goes on
        logger.exception("batch %d failed as a whole", batch_idx)
        pending = [completed_pending(WindowResult.failure(f"{type(exc).__name__}: {exc}"))
                   for _ in windows]
    except BaseException:  # interrupted: leave no half-written window behind
        for staging in stagings:
            discard_staging(staging)
        raise
    options = reconstructor.signature_options()
    return [InFlight(window=w, batch_index=batch_idx, staging=s, final=f, pending=p,
                     started=start, signature_options=options, generation=generation)
            for w, s, f, p in zip(windows, stagings, finals, pending)]


def finish_window(flight: InFlight, result: WindowResult, args: PipelineConfig,
                  reconstructor: Reconstructor) -> dict[str, Any]:
    """Finalise a window whose result is in: its record, its signature, its folder.

    Raises:
        DiskFullError: the disk filled up (its staging folder is removed).
    """
    window = flight.window
    checks = window_checks(args)
    info = _window_record(window, flight.batch_index, result, args, reconstructor,
                          time.perf_counter() - flight.started)
    info["signature"] = window_signature(window.items, reconstructor.name,
                                         flight.signature_options, args.images,
                                         reconstructor.window_context(window), checks)
    _finalize(flight.staging, flight.final, info, args.images, checks)
    return info


def _frame_windows(windows: list[Window[Any]], args: PipelineConfig) -> list[Window[Frame]]:
    """``windows`` whose items are :class:`Frame` objects: plain image paths are validated and
    converted as a run prepares its frames."""
    if all(isinstance(f, Frame) for w in windows for f in w.items):
        return windows
    paths = list(dict.fromkeys(Path(f).absolute() for w in windows for f in w.items))
    prepared = prepare_frames(paths, Path(args.output_dir) / FRAME_CACHE, show_progress=False)
    if len(prepared) != len(paths):
        raise InputError("some frames of the windows are unreadable")
    by_source = {f.source: f for f in prepared}
    return [replace(w, items=tuple(by_source[Path(f).absolute()] for f in w.items))
            for w in windows]


def _create_stagings(windows: Sequence[Window[Frame]], finals: Sequence[Path],
                     images: str) -> list[Path]:
    """One staging folder per window; on a full disk those made are removed and it raises."""
    stagings: list[Path] = []
    try:
        for window, final in zip(windows, finals):
            final.parent.mkdir(parents=True, exist_ok=True)
            stagings.append(create_staging(final, window.items, images))
    except OSError as exc:
        for staging in stagings:
            discard_staging(staging)
        if exc.errno in NO_SPACE:
            raise DiskFullError(exc.filename or finals[len(stagings)], exc) from exc
        raise
    return stagings


def window_checks(config: PipelineConfig) -> WindowChecks:
    """What a window's model must hold to be marked ok."""
    return WindowChecks(min_points=config.min_points,
                        min_frame_observations=config.min_frame_observations,
                        fov_range=(float(config.fov_range[0]), float(config.fov_range[1])))


def _finalize(staging: Path, final: Path, info: dict[str, Any], images: str,
              checks: WindowChecks) -> None:
    """Finalise one window. A write error other than a full disk fails the window alone; a
    window that failed while the disk is full is not the window's fault: the run stops."""
    try:
        if info["status"] != STATUS_OK and disk_nearly_full(staging):
            raise DiskFullError(staging, None)
        finalize_window(staging, final, info, images=images, checks=checks)
    except DiskFullError:
        discard_staging(staging)
        raise
    except OSError as exc:
        discard_staging(staging)
        if exc.errno in NO_SPACE:
            raise DiskFullError(final, exc) from exc
        info.update(status=STATUS_FAILED, error=f"cannot write {final}: {exc}")


def _window_record(window: Window[Frame], batch_idx: int, result: WindowResult,
                   args: PipelineConfig, reconstructor: Reconstructor,
                   batch_seconds: float) -> dict[str, Any]:
    """The ``window_info.json`` content of one reconstructed window."""
    sizes = Counter(f.size for f in window.items)
    return {
        "window_index": window.index,
        "path": str(window.relative_dir),
        "batch_index": batch_idx,
        "status": result.status,
        "error": result.error,
        "reconstructor": reconstructor.name,
        "start_frame": window.start,
        "num_frames": len(window),
        "frames": [f.name for f in window.items],
        "sources": [str(f.source) for f in window.items],
        "image_size": list(sizes.most_common(1)[0][0]),
        "image_sizes": [list(f.size) for f in window.items],
        "registered_frames": result.registered_frames,
        "num_registered": len(result.registered_frames),
        "num_points3D": result.num_points3D,
        "mean_reprojection_error": result.mean_reprojection_error,
        "timings": {**result.timings, "batch_total": batch_seconds},
        "memory": result.memory,
        "stages": result.stages,
        "details": result.details,
        "finished_at": now(),
        "pipeline_version": __version__,
    }
