"""Writing window folders atomically.

A window is first built in a hidden *staging* folder beside its final place
(``batch_XXX/.window_YYY.partial-PID``). Before it is renamed into place, what it holds is read
back (its COLMAP model must load: pycolmap writes silently truncated files on a full disk),
``window_info.json`` records every file with its size and SHA-256, and all is flushed to the disk
(``fsync``) before the rename, so a crash, a power loss or a full disk never leaves a
half-written folder that looks complete (see :mod:`pipeline.io.output` for the reading side).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import DiskFullError
from ..core.results import STATUS_FAILED, STATUS_OK
from ..infra.files import remove_tree, sync_folder, sync_tree, write_json
from ..infra.tempdirs import pid_alive
from .frames import Frame
from .output import WINDOW_INFO, WindowChecks, file_digests, list_files, load_registered_model

logger = logging.getLogger(__name__)

_PARTIAL = ".partial-"
_TRASH = ".trash-"
def create_staging(final_dir: Path, frames: Sequence[Frame], images: str = "link") -> Path:
    """Make the staging folder of a window, with ``images/`` holding its frames.

    Args:
        final_dir: Where the window will live once complete.
        frames: The window's frames; each appears in ``images/`` under ``frame.name``.
        images: ``"link"`` (absolute symlinks) or ``"copy"``; ``"none"`` still links, and the
            links are removed when the window is finalised (reconstructors read the frames there).
    """
    staging = staging_for(final_dir)
    if staging.exists():
        shutil.rmtree(staging)
    image_dir = staging / "images"
    image_dir.mkdir(parents=True)
    for frame in frames:
        target = image_dir / frame.name
        if images == "copy":
            shutil.copy2(frame.path, target)
        else:
            target.symlink_to(Path(frame.path).resolve())
    return staging


def finalize_window(staging: Path, final_dir: Path, info: dict[str, Any], *,
                    images: str = "link", checks: WindowChecks | None = None) -> Path:
    """Check what ``staging`` holds, record it in ``window_info.json`` and rename the folder to
    ``final_dir``.

    A successful window whose COLMAP model does not load back is turned into a failed one (its
    ``status`` and ``error`` in ``info`` are updated). ``info["files"]`` lists every file with its
    size, ``info["sha256"]`` with its checksum, and everything is flushed to the disk before
    the rename, so that a crash or power loss never leaves a window whose record vouches for
    files the disk does not hold. With ``checks``, a successful window whose model has too
    little structure, or an implausible camera, fails with that reason, and ``info["checks"]``
    records the thresholds and what the model had. An
    existing ``final_dir`` (incomplete, or being overwritten) is moved aside first and
    deleted only after the new folder is in place.

    Raises:
        DiskFullError: the disk filled up while the window was written.
        OSError: another failure to write.
    """
    if images == "none":
        shutil.rmtree(staging / "images", ignore_errors=True)
    if info["status"] == STATUS_OK:
        rec, problem = load_registered_model(staging / "sparse", info["registered_frames"])
        if problem:
            if disk_nearly_full(staging):
                raise DiskFullError(staging / "sparse", None)
            info.update(status=STATUS_FAILED, error=f"written model unusable: {problem}")
        elif checks is not None:
            info["checks"] = checks.record(rec)
            problem = checks.problem(rec)
            if problem:
                info.update(status=STATUS_FAILED, error=problem)
    info["files"] = list_files(staging)
    info["sha256"] = file_digests(staging, info["files"])
    write_json(staging / WINDOW_INFO, info)
    sync_tree(staging)
    return swap_into_place(staging, final_dir)


def staging_for(final_dir: Path) -> Path:
    """The hidden folder in which ``final_dir`` is built (named after this process)."""
    return final_dir.parent / f".{final_dir.name}{_PARTIAL}{os.getpid()}"


def swap_into_place(staging: Path, final_dir: Path) -> Path:
    """Rename the finished folder ``staging`` to ``final_dir``. An existing ``final_dir`` (an
    older version, or an incomplete one) is moved aside first and deleted only after the new
    folder is in place, so that a crash leaves either the old folder or the new one whole."""
    trash = None
    if final_dir.exists() or final_dir.is_symlink():
        trash = final_dir.parent / f".{final_dir.name}{_TRASH}{os.getpid()}"
        os.rename(final_dir, trash)
    os.rename(staging, final_dir)
    sync_folder(final_dir.parent)
    if trash is not None:
        remove_tree(trash)
    return final_dir


def disk_nearly_full(path: Path, margin: int = 1 << 20) -> bool:
    """Whether the filesystem of ``path`` has less than ``margin`` bytes free."""
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def discard_staging(staging: Path) -> None:
    """Remove a staging folder that will not be finalised."""
    remove_tree(staging)


def remove_stale_staging(output_dir: Path) -> int:
    """Delete staging and trash folders that crashed runs left behind; return how many."""
    removed = 0
    output_dir = Path(output_dir)
    for batch_dir in [output_dir, *sorted(output_dir.glob("batch_*"))]:
        if not batch_dir.is_dir() or batch_dir.is_symlink():
            continue
        for path in batch_dir.iterdir():
            marker = _PARTIAL if _PARTIAL in path.name else _TRASH if _TRASH in path.name else None
            if path.name.startswith(".") and marker and not _owner_alive(path.name, marker):
                if remove_tree(path):
                    logger.info("removed %s left by an interrupted run", path)
                    removed += 1
                else:
                    logger.warning("cannot remove %s left by an interrupted run", path)
    return removed


def _owner_alive(name: str, marker: str) -> bool:
    """Whether another live process (named by the pid in ``name``) may still be writing it."""
    try:
        pid = int(name.rsplit(marker, 1)[1])
    except ValueError:
        return False
    return pid != os.getpid() and pid_alive(pid)
