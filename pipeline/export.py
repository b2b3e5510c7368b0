"""Writing window folders atomically, and reading them back to decide what a rerun must redo.

A window is first built in a hidden *staging* folder beside its final place
(``batch_XXX/.window_YYY.partial-PID``) and renamed into place once ``window_info.json`` is
written, so a crash never leaves a half-written folder that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .frames import Frame

logger = logging.getLogger(__name__)

WINDOW_INFO = "window_info.json"
_PARTIAL = ".partial-"
_TRASH = ".trash-"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def create_staging(final_dir: Path, frames: Sequence[Frame], images: str = "link") -> Path:
    """Make the staging folder of a window, with ``images/`` holding its frames.

    Args:
        final_dir: Where the window will live once complete.
        frames: The window's frames; each appears in ``images/`` under ``frame.name``.
        images: ``"link"`` (absolute symlinks) or ``"copy"``; ``"none"`` still links, and the
            links are removed when the window is finalised (reconstructors read the frames there).
    """
    staging = final_dir.parent / f".{final_dir.name}{_PARTIAL}{os.getpid()}"
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
                    images: str = "link") -> Path:
    """Write ``window_info.json`` into ``staging`` and rename it to ``final_dir``.

    An existing ``final_dir`` (incomplete, or being overwritten) is moved aside first and deleted
    only after the new folder is in place.
    """
    if images == "none":
        shutil.rmtree(staging / "images", ignore_errors=True)
    write_json(staging / WINDOW_INFO, info)
    trash = None
    if final_dir.exists():
        trash = final_dir.parent / f".{final_dir.name}{_TRASH}{os.getpid()}"
        os.rename(final_dir, trash)
    os.rename(staging, final_dir)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return final_dir


def discard_staging(staging: Path) -> None:
    """Remove a staging folder that will not be finalised."""
    shutil.rmtree(staging, ignore_errors=True)


def read_window_info(window_dir: Path) -> dict[str, Any] | None:
    """The window's ``window_info.json``, or ``None`` when missing or unreadable."""
    try:
        return json.loads((Path(window_dir) / WINDOW_INFO).read_text())
    except (OSError, ValueError):
        return None


def is_complete(window_dir: Path, signature: dict[str, Any]) -> bool:
    """Whether ``window_dir`` holds a successful window made with the same ``signature``.

    The signature names what makes a window's result (its frames, reconstructor and camera
    settings); a window made with other settings is redone.
    """
    info = read_window_info(window_dir)
    return (info is not None and info.get("status") == "ok"
            and info.get("signature") == signature
            and (Path(window_dir) / "sparse").is_dir())


def remove_stale_staging(output_dir: Path) -> int:
    """Delete staging and trash folders that crashed runs left behind; return how many."""
    removed = 0
    for batch_dir in Path(output_dir).glob("batch_*"):
        for path in batch_dir.iterdir():
            marker = _PARTIAL if _PARTIAL in path.name else _TRASH if _TRASH in path.name else None
            if path.name.startswith(".") and marker and not _owner_alive(path.name, marker):
                logger.info("removing %s left by an interrupted run", path)
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


def _owner_alive(name: str, marker: str) -> bool:
    """Whether another live process (named by the pid in ``name``) may still be writing it."""
    try:
        pid = int(name.rsplit(marker, 1)[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
