"""Scheduling a run: frames -> windows -> batches -> reconstructor -> window folders -> run.json.

Rerunning into the same output folder skips the windows that are complete and redoes the rest.
A window is reused only when its folder is whole and was made from the same frame contents with
the same result-changing options (see :mod:`pipeline.io.output`); one run at a time holds an output
folder (:mod:`pipeline.infra.lock`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import __version__
from ..core.errors import DiskFullError, InputError, PipelineError
from ..core.failures import (
    DigestEntry,
    calibration_entry,
    cause_key,
    digest_json,
    failure_digest,
    plural,
    window_label,
)
from ..core.windows import Batch, Window, create_windows
from ..exec.distributed import ProcessGroup, process_group
from ..exec.executor import (
    CpuPool,
    ExecutorStats,
    InFlight,
    WindowExecutor,
    completed_pending,
    cores,
    default_cpu_workers,
    result_of,
)
from ..infra.files import NO_SPACE
from ..infra.lock import OutputLock
from ..infra.memory import MemoryGovernor, StageTable, budget_mb
from ..infra.options import bad_values, changed_flags, flag_name
from ..io.frames import (
    Frame,
    broken_links,
    check_one_kind,
    extract_video_frames,
    list_image_files,
    one_size,
    prepare_frames,
    video_frame_times,
)
from ..io.output import (
    PLAN,
    RunManifest,
    WindowChecks,
    check_window,
    is_own_folder,
    now,
    read_window_info,
    refresh_links,
    window_signature,
    write_plan,
)
from ..io.sequences import (
    DatasetManifest,
    SequenceSource,
    WindowIndex,
    discover,
    index_entry,
    read_list,
    sequence_failure_entry,
)
from ..io.window_folders import (
    create_staging,
    discard_staging,
    disk_nearly_full,
    finalize_window,
    remove_stale_staging,
)
from ..reconstructors import (
    STATUS_FAILED,
    STATUS_OK,
    Reconstructor,
    WindowResult,
    available_reconstructors,
    build_reconstructor,
    colmap_log_level,
    reconstructor_class,
    unread_options,
)
from ..reconstructors import reconstructor_options as reconstructor_options  # documented here
from .config import IMAGE_MODES, MergeOptions, PipelineConfig

logger = logging.getLogger("pipeline.runner")
"""Named as the module users import (:mod:`pipeline.runner` re-exports this one), so that their
log settings for it keep working."""

FRAME_CACHE = "frames"
MAX_AUTO_BATCH = 8
"""Windows per batch when no memory governor sizes them (colmap: at most one per core)."""
MAX_REDO_LOGS = 10
"""Windows whose reason for being redone is logged at INFO; the rest at DEBUG."""


@dataclass(kw_only=True)
class RunSummary:
    """The outcome of :func:`run`."""

    output_dir: Path
    """Where the windows and ``run.json`` are."""
    num_frames: int
    """Frames of the sequence."""
    windows: list[dict[str, Any]] = field(default_factory=list)
    """One record per window (as in ``run.json``), in window order."""
    wall_time: float = 0.0
    """Seconds from start to end."""
    merge: dict[str, Any] | None = None
    """The merge report (``merged/merge.json``) when merging was asked for and succeeded."""
    merge_error: str | None = None
    """Why merging failed, when it was asked for and failed."""
    profile: StageTable | None = None
    """Per-stage time and peak memory of this process's work."""
    throughput: dict[str, Any] | None = None
    """How busy the windows kept the device and the CPU (see :meth:`StageTable.throughput`)."""
    device: str = "cpu"
    """Where the reconstructor ran, and which process this was (for the profile table)."""
    is_main: bool = True
    """False in the processes of a multi-process run other than process 0."""
    sequences: list[dict[str, Any]] | None = None
    """In a run over many sequences: each sequence's name, source, status and counts (as in
    ``dataset.json``)."""
    notes: list[DigestEntry] = field(default_factory=list)
    """Digest lines besides the failures: windows whose calibration had little support."""

    @property
    def failed_sequences(self) -> list[dict[str, Any]]:
        """The sequences of a run over many that could not be read or were too short."""
        return [s for s in self.sequences or [] if s["status"] == "failed"]

    def count(self, status: str) -> int:
        """Windows whose status is ``status``."""
        return sum(1 for w in self.windows if w["status"] == status)

    @property
    def num_skipped(self) -> int:
        """Windows a previous run had completed."""
        return sum(1 for w in self.windows if w.get("skipped"))

    @property
    def success(self) -> bool:
        """Every window (and every sequence) succeeded, and so did the merge if one was asked
        for."""
        return (not self.count(STATUS_FAILED) and self.merge_error is None
                and not self.failed_sequences)

    def digest(self) -> list[str]:
        """The failed windows grouped by cause, a line each with what to try (also kept in
        ``run.json`` under ``digest``)."""
        return [entry.line() for entry in failure_digest(self.windows) + self.notes]

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        merged = ""
        if self.merge is not None:
            merged = f" | merged: {len(self.merge['segments'])} segment(s)"
        elif self.merge_error is not None:
            merged = " | merge failed"
        sequences = ""
        if self.sequences is not None:
            sequences = (f"{plural(len(self.sequences), 'sequence')} ("
                         f"{len(self.failed_sequences)} failed) | ")
        return (f"{sequences}{plural(len(self.windows), 'window')}: {self.count(STATUS_OK)} ok, "
                f"{self.count(STATUS_FAILED)} failed ({self.num_skipped} already complete) | "
                f"{plural(self.num_frames, 'frame')} | {self.wall_time:.1f} s{merged} | "
                f"output: {self.output_dir}")


def load_frames(config: PipelineConfig) -> list[Frame]:
    """Find (or extract), validate and order the run's frames, honouring ``frame_step`` and
    ``max_frames``; each frame's timestamp is its index in the input folder's order, or its
    video time in seconds."""
    cache = Path(config.output_dir) / FRAME_CACHE
    if config.input_video is not None:
        paths = extract_video_frames(config.input_video, cache, fps=config.fps,
                                     max_frames=config.max_frames,
                                     show_progress=config.show_progress)
        stamps: list[float] = video_frame_times(cache) or list(range(len(paths)))
    elif config.input_dir is not None:
        _refuse_input_inside_output(Path(config.input_dir), Path(config.output_dir))
        paths = list_image_files(config.input_dir, config.frame_pattern)
        _broken_links(config)
        check_one_kind(paths)
        stamps = list(range(len(paths)))
    else:
        raise InputError("give an input: --input-dir DIR or --input-video PATH")
    paths, stamps = paths[::config.frame_step], stamps[::config.frame_step]
    if config.max_frames is not None:
        paths, stamps = paths[:config.max_frames], stamps[:config.max_frames]
    return prepare_frames(paths, cache, skip_bad_frames=config.skip_bad_frames,
                          show_progress=config.show_progress, timestamps=stamps)


def _broken_links(config: PipelineConfig) -> None:
    """Name the frames that are links to nothing: an error, or with ``--skip-bad-frames`` a
    warning each (they are left out, as unreadable frames are).

    Raises:
        InputError: a broken link among the frames, without ``--skip-bad-frames``.
    """
    broken = broken_links(Path(config.input_dir), config.frame_pattern)
    if broken and not config.skip_bad_frames:
        path, why = broken[0]
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise InputError(f"frame {path} is {why}{more}; fix or remove it, or pass "
                         "--skip-bad-frames")
    for path, why in broken:
        logger.warning("skipping frame %s: %s", path, why)


def _refuse_input_inside_output(input_dir: Path, out: Path) -> None:
    """Refuse an input folder that lies in a folder the run writes (the frame cache, window
    folders, the merged scene, colmap's store): the run would overwrite or delete its input.

    Raises:
        InputError: naming both folders.
    """
    try:
        relative = input_dir.resolve().relative_to(out.resolve())
    except (ValueError, OSError):
        return
    if relative.parts and is_own_folder(relative.parts[0]):
        raise InputError(f"the input folder {input_dir} lies in {out / relative.parts[0]}, "
                         "which the run writes: choose an output folder that does not hold "
                         "the input")


def choose_reconstructor(config: PipelineConfig) -> tuple[str, str]:
    """The reconstructor to run and why: ``auto`` becomes ``vggt`` when the weights are on this
    machine or can be downloaded, else ``colmap``."""
    if config.reconstructor != "auto":
        return config.reconstructor, "asked for"
    from ..algo.models import WeightsNotFoundError, resolve_weights, weights_available
    from ..algo.models.loading import hub_reachable
    from ..infra.hub import hub_offline

    if weights_available(config.model):
        return "vggt", f"weights of {config.model} found on this machine"
    if hub_offline():
        return "colmap", f"no weights of {config.model} here and HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return "colmap", f"no weights of {config.model} here and the hub cannot be reached"
    try:
        resolve_weights(config.model)  # downloads them into the hub cache
        return "vggt", f"weights of {config.model} downloaded"
    except (WeightsNotFoundError, OSError) as exc:
        return "colmap", f"weights of {config.model} unavailable ({type(exc).__name__})"


def unread_problem(config: PipelineConfig, reconstructor: str) -> str | None:
    """Which options ``config`` sets that ``reconstructor`` does not read, in words, or
    ``None``."""
    unread = unread_options(config, reconstructor)
    if not unread:
        return None
    listed = ", ".join(f"{flag} (read by {'/'.join(readers)})"
                       for flag, readers in unread.items())
    return f"{listed}: not read by {reconstructor}"


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
                        min_frame_observations=config.min_frame_observations)


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


SOURCE_FIELDS = ("input_dir", "input_video", "input_root", "input_list")
"""The options naming a run's input, of which one is given."""


def _check_config(config: PipelineConfig) -> Path:
    """Fail fast, before any work, on options and output paths that cannot work."""
    for problem in bad_values(config):  # first: the checks below need values of their kind
        raise InputError(problem)
    sources = [flag_name(f) for f in fields(config) if f.name in SOURCE_FIELDS
               and getattr(config, f.name) is not None]
    if len(sources) > 1:
        raise InputError(f"{' and '.join(sources)} both given: give one input")
    if not str(config.output_dir).strip():
        raise InputError("--output-dir is empty: name the output folder")
    out = Path(config.output_dir)
    try:
        exists, folder = out.exists(), out.is_dir()
    except OSError as exc:  # a name too long for the file system, a link loop
        raise InputError(f"cannot use the output folder {out}: {exc.strerror or exc}") from exc
    if exists and not folder:
        raise InputError(f"output path exists and is not a folder: {out}")
    if config.images not in IMAGE_MODES:
        raise InputError(f"--images must be link, copy or none, got {config.images!r}")
    if config.ray_address is not None and config.engine != "ray":
        raise InputError("--ray-address is read only with --engine ray")
    if config.engine == "ray":
        from .ray_engine import import_ray

        import_ray()  # fails here, before any work, when Ray is not installed
    merge_flags = changed_flags(config.merge_options)
    if merge_flags and not config.merge:
        raise InputError(f"{', '.join(merge_flags)}: merge options, read only with --merge")
    if config.reconstructor != "auto":
        unread = unread_problem(config, config.reconstructor)
        if unread:
            raise InputError(f"{unread}, the reconstructor asked for: drop the option or choose "
                             "a reconstructor that reads it")
    for name in available_reconstructors():
        reconstructor_class(name).check_flags(config)
    batch = config.window_batch_size
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise InputError(f"--window-batch-size must be a positive integer or auto, got {batch!r}")
    if config.frame_step < 1:
        raise InputError(f"--frame-step must be at least 1, got {config.frame_step}")
    if config.max_frames is not None and config.max_frames < 2:
        raise InputError(f"--max-frames must be at least 2, got {config.max_frames}")
    try:
        create_windows(range(config.window_size + 1), config.window_size, config.window_stride)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return out


def run(config: PipelineConfig) -> RunSummary:
    """Reconstruct every window of the configured sequence into ``config.output_dir``.

    Raises:
        InputError: bad input or options, an output folder that cannot be written, or one that
            another live run holds (nothing is written then, beyond the output folder).
        DiskFullError: the disk filled up during the run; what was written stays, ``run.json``
            says ``failed``, and a rerun finishes the rest.
    """
    start = time.perf_counter()
    out = _check_config(config)
    group = _process_group(config)
    many = config.input_root is not None or config.input_list is not None
    if config.engine == "ray" and group.world_size > 1:
        raise InputError("--engine ray spreads the run itself: start it once, not under "
                         "accelerate launch")
    if many and group.world_size > 1:
        raise InputError("--input-root/--input-list run in one process (one device); start "
                         "one run per device on separate lists instead of accelerate launch")
    lock = OutputLock(out)
    try:
        with _setup_errors(out):
            with group.main_first():
                if group.is_main:
                    _prepare_output(out, lock)
                if many:
                    sources = _sequence_sources(config)
                else:
                    frames = load_frames(config)
        with _engine(config) as ray:
            if many:
                return _run_many(config, sources, group, start, ray)
            return _run(config, frames, group, start, ray)
    finally:
        lock.release()


@contextlib.contextmanager
def _engine(config: PipelineConfig) -> Iterator[Any]:
    """The ``ray`` module joined to its cluster with ``--engine ray`` (Ray started here is shut
    down at the end; one the calling program started stays), else None."""
    if config.engine != "ray":
        yield None
        return
    from .ray_engine import connect

    connection = connect(config.ray_address, num_cpus=config.cpu_workers or None)
    try:
        yield connection.ray
    finally:
        connection.close()


def _log_plans(plans: Sequence[SequencePlan], sources: int) -> None:
    """One line for the planned sequences of a run over many (each sequence's own is at
    debug level, ``-v``)."""
    windows = sum(len(p.windows) for p in plans)
    todo = sum(len(p.todo) for p in plans)
    failed = f", {sources - len(plans)} failed to load (skipped)" if sources > len(plans) else ""
    logger.info("%s%s: %s -> %s: %d to do, %d already complete", plural(len(plans), "sequence"),
                failed, plural(sum(len(p.frames) for p in plans), "frame"),
                plural(windows, "window"), todo, windows - todo)


def _sequence_sources(config: PipelineConfig) -> list[SequenceSource]:
    """The sequences of ``--input-root`` or ``--input-list``."""
    if config.input_root is not None:
        root, out = Path(config.input_root), Path(config.output_dir)
        if root.resolve() == out.resolve():
            raise InputError(f"--output-dir {out} is the input root: each sequence's output "
                             "would be written into its own frame folder; choose another "
                             "(a folder inside the root, such as ROOT/out, is passed by)")
        return discover(root, skip=[out], pattern=config.frame_pattern)
    return read_list(Path(config.input_list))


def _sequence_config(config: PipelineConfig, source: SequenceSource) -> PipelineConfig:
    """A dataset run's configuration narrowed to one of its sequences."""
    video = source.is_video
    return replace(config, input_root=None, input_list=None,
                   input_dir=None if video else source.path,
                   input_video=source.path if video else None,
                   frame_pattern=None if video else config.frame_pattern,
                   fps=config.fps if video else None, show_progress=False,
                   output_dir=Path(config.output_dir) / source.name)


def _sized_for(frames: list[Frame], reconstructor: Reconstructor | type[Reconstructor],
              config: PipelineConfig) -> list[Frame]:
    """The frames, checked to share one size when the reconstructor needs it (see
    :func:`pipeline.io.frames.one_size`).

    Raises:
        InputError: frames of several sizes for a reconstructor that needs one, or too few
            left of the common size.
    """
    if reconstructor.mixed_sizes:
        return frames
    kept = one_size(frames, reconstructor.name, skip_bad_frames=config.skip_bad_frames)
    if len(kept) < 2:
        raise InputError(f"{plural(len(kept), 'frame')} of one size left: too few")
    return kept


def _load_sequence(config: PipelineConfig, source: SequenceSource) -> list[Frame]:
    """The frames of one sequence of a dataset run, its folder ready (stale staging removed).

    Raises:
        InputError: the sequence cannot be read (it fails alone).
    """
    out = Path(config.output_dir)
    if not source.path.exists():
        raise InputError(f"{source.path} does not exist")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or exc}") from exc
    remove_stale_staging(out)
    frames = load_frames(config)
    if len(frames) < config.window_size:
        raise InputError(f"{plural(len(frames), 'frame')}, fewer than one window of "
                         f"{config.window_size}")
    return frames


def _run_many(config: PipelineConfig, sources: list[SequenceSource], group: ProcessGroup,
              start: float, ray: Any = None) -> RunSummary:
    """A run over many sequences: one reconstructor (one model load) for all, each sequence in
    ``OUT/<name>/`` as a run over it alone would lay it out, ``OUT/index.jsonl`` listing every
    window and ``OUT/dataset.json`` the sequences. A sequence that cannot be read fails alone."""
    out = Path(config.output_dir)
    config, reconstructor, reason = _resolve_reconstructor(config, group, ray)
    index, dataset = WindowIndex(out), DatasetManifest(out, config, reconstructor, sources)
    profile, governor = StageTable(), _governor(config, reconstructor, group)
    if reconstructor.load_stage:
        profile.add("load", reconstructor.load_stage)
    plans: list[SequencePlan] = []
    status, error = "interrupted", None
    try:
        with reconstructor, _cpu_pool(config, reconstructor, group, ray) as pool:
            for source in tqdm(sources, desc="sequences", unit="sequence",
                               disable=None if config.show_progress else True):
                seq_config = _sequence_config(config, source)
                try:
                    frames = _sized_for(_load_sequence(seq_config, source), reconstructor,
                                        seq_config)
                except InputError as exc:
                    logger.warning("sequence %s: %s; it is skipped", source.name, exc)
                    _remove_empty_folders(Path(seq_config.output_dir))
                    dataset.failed(source, str(exc))
                    index.add(sequence_failure_entry(source, str(exc)))
                    continue
                plans.append(_plan(seq_config, frames, reconstructor, group, reason,
                                   name=source.name))
                todo = {w.key for w in plans[-1].todo}
                for window in plans[-1].windows:
                    if window.key not in todo:  # complete before this run
                        _index_window(index, out, plans[-1], window)
            _log_plans(plans, len(sources))
            dataset.planned(plans)
            index.write(force=True)
            _process_sequences(plans, config, reconstructor, pool, governor, profile, index,
                               dataset)
        status = "finished"
    except DiskFullError as exc:
        status, error = "failed", str(exc)
        raise
    finally:
        _finish_sequences(plans, status, error, governor, profile, start)
        index.write(force=True)
        dataset.finish(status, time.perf_counter() - start, error, plans, governor, profile)
    summary = RunSummary(output_dir=out, num_frames=sum(len(p.frames) for p in plans),
                         windows=[dict(w, sequence=p.name) for p in plans
                                  for w in p.manifest.data["windows"]],
                         profile=profile, throughput=dataset.data.get("throughput"),
                         device=reconstructor.device, sequences=dataset.data["sequences"])
    summary.notes = [note for plan in plans for note in _notes(plan)]
    summary.notes += [DigestEntry(cause=f"{s['name']}: not reconstructed",
                                  example=s.get("error") or "", hint=s.get("error"))
                      for s in summary.failed_sequences]
    if config.merge:
        _merge_sequences(summary, plans, config.merge_options)
    dataset.keep_digest(digest_json(failure_digest(summary.windows) + summary.notes))
    summary.wall_time = time.perf_counter() - start
    return summary


def _notes(plan: SequencePlan) -> list[DigestEntry]:
    """The digest's lines for a sequence besides its failures (named in a run over many)."""
    note = calibration_entry(plan.manifest.data.get("calibration"), plan.manifest.data["windows"])
    if note is None:
        return []
    if plan.name:
        note.cause = f"{plan.name}: {note.cause}"
    return [note]


def _remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file (what a sequence that
    failed to load left: its folder and an empty frame cache)."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [folder]:
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # only empty ones go


def _index_window(index: WindowIndex, out: Path, plan: SequencePlan,
                  window: Window[Frame], record: dict[str, Any] | None = None) -> None:
    """Put a window of ``plan`` in the dataset's index (its record read from its folder when
    not given: a window complete before this run)."""
    folder = Path(plan.config.output_dir) / window.relative_dir
    if record is None:
        record = read_window_info(folder)
    index.add(index_entry(plan.name, record, folder, out))


def _process_sequences(plans: list[SequencePlan], config: PipelineConfig,
                       reconstructor: Reconstructor, pool: CpuPool,
                       governor: MemoryGovernor | None, profile: StageTable, index: WindowIndex,
                       dataset: DatasetManifest) -> None:
    """Every sequence's windows to do: in shared batches, or sequence after sequence for a
    reconstructor that plans each sequence (colmap)."""
    out = Path(config.output_dir)

    def on_window(plan: SequencePlan, record: dict[str, Any]) -> None:
        _index_window(index, out, plan, plan.windows[record["window_index"]], record)
        index.write()

    total = sum(len(p.todo) for p in plans)
    with _progress(config, total) as bar:
        reconstructor.progress = bar.set_postfix_str
        work_start = time.perf_counter()
        if reconstructor.plans_sequences:
            stats = ExecutorStats(cpu_workers=pool.workers)
            for plan in plans:  # planned again right before its windows run
                reconstructor.plan_sequence(plan.frames, plan.windows, Path(plan.config.output_dir))
                stats.add(_process([plan], config, reconstructor, pool, governor, profile, bar,
                                   on_window))
        else:
            stats = _process(plans, config, reconstructor, pool, governor, profile, bar,
                             on_window)
        dataset.data["throughput"] = {**profile.throughput(
            time.perf_counter() - work_start, total, reconstructor.device_stages),
            **stats.to_json()}


def _finish_sequences(plans: list[SequencePlan], status: str, error: str | None,
                      governor: MemoryGovernor | None, profile: StageTable,
                      start: float) -> None:
    """Write each sequence's final ``run.json``."""
    for plan in plans:
        _record_memory(plan.manifest, governor, profile)
        plan.manifest.finish(status, wall_time=time.perf_counter() - start, error=error)


def _merge_sequences(summary: RunSummary, plans: list[SequencePlan],
                     options: MergeOptions) -> None:
    """``--merge`` of each sequence into its own ``merged/``; failures are recorded."""
    from ..post.merge import merge_output

    errors = []
    for plan in plans:
        try:
            report = merge_output(Path(plan.config.output_dir), options)
        except Exception as exc:  # noqa: BLE001 - the windows are written; report and go on
            logger.error("merging %s failed: %s", plan.name, exc)
            errors.append(f"{plan.name}: {type(exc).__name__}: {exc}")
            summary.notes.append(DigestEntry(cause=f"{plan.name}: merge failed",
                                             example=str(exc)))
            continue
        segments = len(report["segments"])
        if segments > 1:
            summary.notes.append(DigestEntry(
                cause=f"{plan.name}: merged in {segments} separate segments",
                hint=f"failed windows or weak overlaps break the path; {plan.name}/merged/"
                     "merge.json says where"))
    summary.merge_error = "; ".join(errors) or None


@contextlib.contextmanager
def _setup_errors(out: Path) -> Iterator[None]:
    """Turn failures to write while setting up (before any window) into one-line input errors."""
    try:
        yield
    except DiskFullError as exc:  # nothing of the windows could be written: a usage-level error
        raise InputError(str(exc)) from exc
    except PipelineError:
        raise
    except OSError as exc:
        where = exc.filename or out
        raise InputError(f"cannot write {where}: {exc.strerror or exc}") from exc


def _prepare_output(out: Path, lock: OutputLock) -> None:
    """Create the output folder, prove it writable, lock it and clean what crashed runs left."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc
    probe = out / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"\0" * 4096)
    except OSError as exc:
        raise InputError(f"cannot write into output folder {out}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    lock.acquire()
    remove_stale_staging(out)


def _resolve_reconstructor(config: PipelineConfig, group: ProcessGroup,
                           ray: Any = None) -> tuple[PipelineConfig, Reconstructor, str]:
    """Choose (``auto``) and build the reconstructor; the configuration with the choice.
    Under Ray a network's model is loaded in device actors instead of here."""
    config, reason = _choose_reconstructor(config, group)
    return config, _build_reconstructor(config, ray), reason


def _choose_reconstructor(config: PipelineConfig, group: ProcessGroup
                          ) -> tuple[PipelineConfig, str]:
    """The configuration with the reconstructor chosen (``auto``) and its device, and why."""
    chosen, reason = choose_reconstructor(config)
    logger.info("reconstructor: %s (%s)", chosen, reason)
    unread = unread_problem(config, chosen)
    if unread:  # an explicit choice was refused before any work
        logger.warning("%s, which auto chose (%s): they are ignored", unread, reason)
    return replace(config, reconstructor=chosen,
                   device=group.device if group.device and config.device == "auto"
                   else config.device), reason


def _build_reconstructor(config: PipelineConfig, ray: Any = None) -> Reconstructor:
    """The chosen reconstructor (its model loaded; under Ray in device actors instead)."""
    if ray is not None and reconstructor_class(config.reconstructor).device_stages:
        from .ray_engine import RayReconstructor

        return RayReconstructor(config, ray)
    return build_reconstructor(config)


@dataclass(kw_only=True)
class SequencePlan:
    """One sequence of a run, planned: its windows, those left to do, and its ``run.json``."""

    name: str
    """Its folder under the output folder in a run over many sequences; empty for one."""
    config: PipelineConfig
    """Its configuration (``output_dir`` is its own folder)."""
    frames: list[Frame]
    """Its frames."""
    windows: list[Window[Frame]]
    """All its windows."""
    todo: list[Window[Frame]]
    """This process's share of the windows not complete yet."""
    manifest: RunManifest
    """Its ``run.json``."""


def _plan(config: PipelineConfig, frames: list[Frame], reconstructor: Reconstructor,
          group: ProcessGroup, reason: str, name: str = "") -> SequencePlan:
    """Windows, resume decisions, ``plan.json`` and the first ``run.json`` of one sequence."""
    out = Path(config.output_dir)
    windows = create_windows(frames, config.window_size, config.window_stride)
    if name:
        windows = [replace(w, sequence=name) for w in windows]
    with _setup_errors(out):
        manifest = RunManifest(config, frames, windows, reconstructor, group)
        manifest.data["reconstructor"]["chosen_because"] = reason
        reconstructor.plan_sequence(frames, windows, out)
        options = reconstructor.signature_options()
        checks = window_checks(config)
        signatures = [window_signature(w.items, reconstructor.name, options, config.images,
                                       reconstructor.window_context(w), checks)
                      for w in windows]
        if group.is_main:
            manifest.data["plan"] = {"file": PLAN,
                                     "digest": write_plan(out, frames, windows, signatures)}
        todo = _windows_to_do(config, windows, signatures, manifest, group,
                              log=logger.debug if name else logger.info)
        group.barrier()  # every process has judged the finished windows before any writes one
        manifest.write()
    return SequencePlan(name=name, config=config, frames=frames, windows=windows, todo=todo,
                        manifest=manifest)


def _run(config: PipelineConfig, frames: list[Frame], group: ProcessGroup,
         start: float, ray: Any = None) -> RunSummary:
    """The run once the output folder is held and the frames are ready."""
    out = Path(config.output_dir)
    config, reason = _choose_reconstructor(config, group)
    frames = _sized_for(frames, reconstructor_class(config.reconstructor), config)
    reconstructor = _build_reconstructor(config, ray)
    plan = _plan(config, frames, reconstructor, group, reason)
    manifest = plan.manifest
    profile = StageTable()
    if reconstructor.load_stage:
        profile.add("load", reconstructor.load_stage)
    governor = _governor(config, reconstructor, group)
    status, error = "interrupted", None
    try:
        with reconstructor, _progress(config, len(plan.todo)) as bar, \
                _cpu_pool(config, reconstructor, group, ray) as pool:
            reconstructor.progress = bar.set_postfix_str
            work_start = time.perf_counter()
            stats = _process([plan], config, reconstructor, pool, governor, profile, bar)
            manifest.data["throughput"] = {**profile.throughput(
                time.perf_counter() - work_start, len(plan.todo), reconstructor.device_stages),
                **stats.to_json()}
        status = "finished"
    except DiskFullError as exc:
        status, error = "failed", str(exc)
        raise
    finally:
        _record_memory(manifest, governor, profile)
        manifest.finish(status, wall_time=time.perf_counter() - start, error=error)
    summary = RunSummary(output_dir=out, num_frames=len(frames), windows=manifest.data["windows"],
                         profile=profile, is_main=group.is_main,
                         throughput=manifest.data.get("throughput"),
                         device=reconstructor.device + (f", process {group.rank} of "
                                                        f"{group.world_size}"
                                                        if group.world_size > 1 else ""))
    summary.notes = _notes(plan)
    if config.merge and group.is_main:
        _merge(summary, config.merge_options)
    summary.wall_time = time.perf_counter() - start
    return summary


def _process_group(config: PipelineConfig) -> ProcessGroup:
    try:
        return process_group(config.use_accelerate, config.device)
    except ImportError as exc:
        raise InputError(str(exc)) from exc


def _windows_to_do(config: PipelineConfig, windows: Sequence[Window[Frame]],
                   signatures: Sequence[dict[str, Any]], manifest: RunManifest,
                   group: ProcessGroup, log: Callable[..., None] = logger.info
                   ) -> list[Window[Frame]]:
    """This process's share of the windows that are not complete yet (process 0 records the
    complete ones in the manifest). Why a window folder that exists is redone, and the count
    of windows, go to ``log`` (debug for each of many sequences, summed up by the caller)."""
    out = Path(config.output_dir)
    todo, redone = [], 0
    for window, signature in zip(windows, signatures):
        window_dir = out / window.relative_dir
        problem = "--overwrite" if config.overwrite else check_window(window_dir, signature)
        if problem is None:
            if group.is_main:
                if config.images == "link":
                    refresh_links(window_dir, window.items)
                manifest.add(read_window_info(window_dir), skipped=True)
            continue
        todo.append(window)
        if window_dir.exists() and group.is_main:
            redone += 1
            (log if redone <= MAX_REDO_LOGS else logger.debug)(
                "redoing window %d: %s", window.index, problem)
    if redone > MAX_REDO_LOGS:
        log("... %d windows redone in all (-v lists every reason)", redone)
    _report_leftovers(out, windows, group)
    mine = group.take(todo)
    log("%s -> %s of %d (stride %d): %d to do%s, %d already complete",
        plural(manifest.data["frames"]["count"], "frame"), plural(len(windows), "window"),
        config.window_size, config.window_stride, len(todo),
        f" ({len(mine)} in process {group.rank})" if group.world_size > 1 else "",
        len(windows) - len(todo))
    return mine


def _report_leftovers(out: Path, windows: Sequence[Window[Frame]], group: ProcessGroup) -> None:
    """Warn about window folders this run's plan does not hold (an earlier run over more
    frames, or another size and stride): they are kept, and merge and evaluate ignore them."""
    planned = {w.relative_dir.as_posix() for w in windows}
    leftovers = [p for p in sorted(out.glob("batch_*/window_*"))
                 if p.relative_to(out).as_posix() not in planned]
    if leftovers and group.is_main:
        logger.warning("%d window folder(s) are not part of this run (e.g. %s), left by an "
                       "earlier run over other frames or windows: kept, but merge and evaluate "
                       "ignore them", len(leftovers), leftovers[0].relative_to(out))


def _governor(config: PipelineConfig, reconstructor: Reconstructor,
              group: ProcessGroup) -> MemoryGovernor | None:
    """The memory governor of an automatic batch size for a network reconstructor, else None."""
    device = reconstructor.memory_device()
    if config.window_batch_size is not None or device is None:
        return None
    budget, source = budget_mb(device, config.max_memory_gb, processes=group.local_world_size)
    logger.info("memory budget %.0f MiB (%s); the first batch is one window, measured", budget,
                source)
    return MemoryGovernor(budget_mb=budget, budget_source=source)


def _batch_size(config: PipelineConfig, governor: MemoryGovernor | None,
                group: ProcessGroup) -> int:
    """Windows for the next batch: as asked, from the governor, under Ray
    :data:`MAX_AUTO_BATCH`, or colmap's core count."""
    if config.window_batch_size is not None:
        return config.window_batch_size
    if governor is not None:
        return governor.windows_per_batch()
    if config.engine == "ray":
        return MAX_AUTO_BATCH
    return max(1, min(MAX_AUTO_BATCH, cores() // group.local_world_size))


def _process(plans: list[SequencePlan], config: PipelineConfig,
             reconstructor: Reconstructor, pool: CpuPool, governor: MemoryGovernor | None,
             profile: StageTable, bar: tqdm,
             on_window: Callable[[SequencePlan, dict[str, Any]], None] | None = None
             ) -> ExecutorStats:
    """Every window still to do of ``plans`` through the executor (pipelined, or serial with
    ``--cpu-workers 0``), batches sized just before they start; windows of different sequences
    share batches. Each finished window goes to its sequence's ``run.json`` (and
    ``on_window``)."""
    owner = {plan.name: plan for plan in plans}
    causes_seen: set[str] = set()

    def start(batch: Batch[Frame], pool: CpuPool) -> list[InFlight]:
        outs = [Path(owner[w.sequence].config.output_dir) for w in batch.windows]
        flights = start_window_batch(batch.windows, batch.index, config, reconstructor, pool,
                                     outs=outs)
        _observe(reconstructor, governor, profile)
        report = reconstructor.last_report
        if report is not None and report.records:
            for name in dict.fromkeys(w.sequence for w in batch.windows):
                owner[name].manifest.data.update(report.records)
        return flights

    def finish(flight: InFlight, result: WindowResult) -> tuple[SequencePlan, dict[str, Any]]:
        plan = owner[flight.window.sequence]
        return plan, finish_window(flight, result, plan.config, reconstructor)

    def on_record(finished: tuple[SequencePlan, dict[str, Any]]) -> None:
        plan, record = finished
        for stage, span in (record.get("stages") or {}).items():
            profile.add(stage, span)
        plan.manifest.add(record)
        _log_failure(dict(record, sequence=plan.name), causes_seen)
        if governor is not None:
            plan.manifest.data["memory"] = governor.to_json()
        plan.manifest.write()
        if on_window is not None:
            on_window(plan, record)
        bar.update(1)

    device = reconstructor.memory_device()
    executor = WindowExecutor(
        reconstructor=reconstructor, pool=pool, start=start, finish=finish, on_record=on_record,
        batch_size=lambda: _batch_size(config, governor, plans[0].manifest.group),
        governor=governor, count_host_memory=device is not None and device.type == "cpu")
    return executor.run([w for plan in plans for w in plan.todo], size_of=lambda f: f.size)


@contextlib.contextmanager
def _cpu_pool(config: PipelineConfig, reconstructor: Reconstructor, group: ProcessGroup,
              ray: Any = None) -> Iterator[CpuPool]:
    """The run's worker pool (closed at the end; stopped by the executor when interrupted):
    Ray tasks under ``--engine ray``."""
    if ray is not None:
        from .ray_engine import RayPool

        yield RayPool(ray)
        return
    pool = CpuPool(cpu_workers(config, reconstructor, group),
                   colmap_log_level=colmap_log_level(config))
    try:
        yield pool
    finally:
        pool.close()


def cpu_workers(config: PipelineConfig, reconstructor: Reconstructor,
                group: ProcessGroup) -> int:
    """``--cpu-workers``, or one per core left free (see
    :func:`pipeline.exec.executor.default_cpu_workers`)."""
    if config.cpu_workers is not None:
        return config.cpu_workers
    return default_cpu_workers(reconstructor.memory_device() is not None,
                               group.local_world_size)


def _log_failure(record: dict[str, Any], causes_seen: set[str]) -> None:
    """Warn of the first failed window of each cause; the others go to the digest at the end
    (and to the debug log)."""
    if record["status"] == STATUS_OK:
        return
    key, window = cause_key(record["error"]), window_label(record)
    if key in causes_seen:
        logger.debug("window %s failed: %s", window, record["error"])
        return
    causes_seen.add(key)
    logger.warning("window %s failed: %s (windows failing alike are counted at the end)",
                   window, record["error"])


def _observe(reconstructor: Reconstructor, governor: MemoryGovernor | None,
             profile: StageTable) -> None:
    """Feed what the batch measured on its start to the governor and the stage table."""
    report = reconstructor.last_report
    if report is not None:
        for stage, span in report.stages:
            profile.add(stage, span)
        if governor is not None:
            for observation in report.observations:
                governor.observe(observation)
            if report.out_of_memory_at is not None:
                governor.observe_out_of_memory(report.out_of_memory_at)


def _record_memory(manifest: RunManifest, governor: MemoryGovernor | None,
                   profile: StageTable) -> None:
    if governor is not None:
        manifest.data["memory"] = governor.to_json()
    manifest.data["profile"] = profile.rows


def _merge(summary: RunSummary, options: MergeOptions) -> None:
    """Merge the finished windows; a failure is recorded, never loses the windows."""
    from ..post.merge import merge_output

    try:
        summary.merge = merge_output(summary.output_dir, options)
    except Exception as exc:  # noqa: BLE001 - the windows are written; report and go on
        logger.error("merging failed: %s", exc)
        summary.merge_error = f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _progress(config: PipelineConfig, total: int) -> Iterator[tqdm]:
    """The windows bar (off with ``-q`` or when stderr is not a terminal); its postfix shows
    the stage under way inside a batch, and its clock keeps moving through long stages (the
    feature store of a long sequence takes minutes before the first window): a thread
    redraws it every second."""
    with tqdm(total=total, desc="windows", unit="window",
              disable=None if config.show_progress else True) as bar:
        stop = threading.Event()
        clock = threading.Thread(target=keep_redrawing, args=(bar, stop), daemon=True,
                                 name="progress-clock")
        if not bar.disable:
            clock.start()
        try:
            yield bar
        finally:
            stop.set()
            if clock.is_alive():
                clock.join()


def keep_redrawing(bar: Any, stop: threading.Event, interval: float = 1.0) -> None:
    """Redraw ``bar`` every ``interval`` seconds until ``stop`` is set (tqdm redraws only
    when it is updated, so its elapsed time would stand still between windows)."""
    while not stop.wait(interval):
        bar.refresh()
