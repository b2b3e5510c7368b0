"""One sequence planned: its windows, what a rerun reuses (resume), ``plan.json`` and
the first ``run.json``; the output folder set up and held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.errors import DiskFullError, InputError, PipelineError
from ..core.failures import DigestEntry, calibration_entry, plural
from ..core.windows import Window, create_windows
from ..exec.distributed import ProcessGroup
from ..infra.files import NO_SPACE
from ..infra.lock import OutputLock
from ..io.frames import Frame
from ..io.output import PLAN, check_window, read_window_info, refresh_links, write_plan
from ..io.run_record import RunManifest
from ..io.sequences import refuse_running_dataset
from ..io.signature import window_signature
from ..io.window_folders import remove_stale_staging
from ..reconstructors import Reconstructor
from .config import PipelineConfig
from .window_batch import window_checks

logger = logging.getLogger(__name__)


MAX_REDO_LOGS = 10
"""Windows whose reason for being redone is logged at INFO; the rest at DEBUG."""


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


def plan_windows(config: PipelineConfig, frames: list[Frame], reconstructor: Reconstructor,
                 group: ProcessGroup, reason: str, name: str = "") -> SequencePlan:
    """Windows, resume decisions, ``plan.json`` and the first ``run.json`` of one sequence."""
    out = Path(config.output_dir)
    windows = create_windows(frames, config.window_size, config.window_stride)
    if name:
        windows = [replace(w, sequence=name) for w in windows]
    with setup_errors(out):
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
    frames, or another size and stride): they are kept, and merge and evaluate ignore them.
    Those whose ``images/`` link to frames that have changed since are removed
    (:func:`_links_changed`)."""
    if not group.is_main:
        return
    planned = {w.relative_dir.as_posix() for w in windows}
    leftovers = [p for p in sorted(out.glob("batch_*/window_*"))
                 if p.relative_to(out).as_posix() not in planned]
    current = {frame.name: frame.digest for w in windows for frame in w.items}
    stale = [p for p in leftovers if _links_changed(p, current)]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    if stale:
        logger.warning("removed %s left by an earlier run whose images/ link to frames that have "
                       "changed since (e.g. %s; a video extracted again with other settings): "
                       "their pictures no longer matched their cameras",
                       plural(len(stale), "window folder"), stale[0].relative_to(out))
    leftovers = [p for p in leftovers if p.exists()]
    if leftovers:
        logger.warning("%d window folder(s) are not part of this run (e.g. %s), left by an "
                       "earlier run over other frames or windows: kept, but merge and evaluate "
                       "ignore them", len(leftovers), leftovers[0].relative_to(out))


def _links_changed(window_dir: Path, current: dict[str, str]) -> bool:
    """Whether the window's ``images/`` are links (``--images link``) and one of its frames
    now has other content: one of this run's frames by that name with another hash. Copied
    images stay true to their cameras; a frame deleted since leaves the window incomplete, not
    wrong (kept, like every window outside the plan)."""
    record = read_window_info(window_dir) or {}
    signature = record.get("signature")
    if not isinstance(signature, dict) or signature.get("images") != "link":
        return False
    for entry in signature.get("frames") or []:
        if not (isinstance(entry, list) and len(entry) == 2):
            continue
        name, digest = entry
        if name in current and current[name] != digest:
            return True
    return False


@contextlib.contextmanager
def setup_errors(out: Path) -> Iterator[None]:
    """Turn failures to write while setting up (before any window) into one-line input errors."""
    try:
        yield
    except DiskFullError as exc:  # nothing of the windows could be written: a usage-level error
        raise InputError(str(exc)) from exc
    except PipelineError:
        raise
    except OSError as exc:
        where = exc.filename or out
        if exc.errno in NO_SPACE:  # frames converted or extracted filled the disk
            raise InputError(str(DiskFullError(where, exc))) from exc
        raise InputError(f"cannot write {where}: {exc.strerror or exc}") from exc


def prepare_output(out: Path, lock: OutputLock) -> None:
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
    try:
        refuse_running_dataset(out)
    except InputError:
        lock.release()
        raise
    remove_stale_staging(out)


def sequence_notes(plan: SequencePlan) -> list[DigestEntry]:
    """The digest's lines for a sequence besides its failures (named in a run over many)."""
    note = calibration_entry(plan.manifest.data.get("calibration"), plan.manifest.data["windows"])
    if note is None:
        return []
    if plan.name:
        note.cause = f"{plan.name}: {note.cause}"
    return [note]
