"""Files and folders the pipeline writes: JSON records written atomically, and folders it
owns (staging, trash, temporary work) removed whole.

A user (or a careless ``chmod -R 000``) may take the permissions away from a folder the
pipeline made; ``shutil.rmtree(..., ignore_errors=True)`` then leaves it behind without a word,
and every later run finds it again. :func:`remove_tree` gives the owner's permissions back first.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from ..core.errors import DiskFullError

logger = logging.getLogger(__name__)

_OWNER = stat.S_IRWXU

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""``errno`` values of a full disk or an exhausted quota."""


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a temporary file beside ``path`` renamed over it; on failure
    the temporary file is removed and ``path`` keeps its old content). The one way the package
    writes a record file.

    Raises:
        DiskFullError: the disk is full (or the quota is spent).
        OSError: any other failure to write.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename: no empty record after a crash
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a folder that refuses even that
            pass
        if exc.errno in NO_SPACE:
            raise DiskFullError(path, exc) from exc
        raise


def write_json(path: Path, data: Any, *, indent: int | None = 2, sort_keys: bool = False,
               allow_nan: bool = True) -> None:
    """Write ``data`` as JSON atomically (see :func:`write_text`); paths become strings and
    numpy scalars numbers. ``allow_nan=False`` refuses NaN and infinities (strict JSON) with a
    ``ValueError`` before anything is written.

    Raises:
        DiskFullError: the disk is full (or the quota is spent).
        OSError: any other failure to write.
    """
    write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan,
                                default=_json_default) + "\n")


def sync_tree(folder: Path) -> None:
    """Flush every regular file under ``folder``, and every folder, to the disk (``fsync``),
    so that a folder renamed into place afterwards survives a power loss with its content;
    links are not followed.

    Raises:
        DiskFullError: the disk is full (or the quota is spent).
        OSError: any other failure to write.
    """
    try:
        for root, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    _sync(path, os.O_RDONLY)
            sync_folder(Path(root))
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise DiskFullError(Path(folder), exc) from exc
        raise


def sync_folder(folder: Path) -> None:
    """Flush ``folder``'s own entries (a rename into it) to the disk; a file system that cannot
    (some network mounts refuse ``fsync`` on a folder) is left as it is."""
    try:
        _sync(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        logger.debug("cannot flush %s: %s", folder, exc)


def _sync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def remove_tree(path: Path) -> bool:
    """Delete ``path`` (a folder, a file or a link; a link is removed, never followed) even
    when folders in it have lost their permissions; returns whether it is gone. What still
    cannot be removed (another user's files, a read-only mount) stays, logged at debug level:
    callers treat it as left for a later run."""
    path = Path(path)
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
            return True
        shutil.rmtree(path)
        return True
    except OSError:
        pass
    _give_back_permissions(path)
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.debug("cannot remove %s: %s", path, exc)
        return False
    return True


def _give_back_permissions(path: Path) -> None:
    """``u+rwx`` on ``path`` and every folder below it (top-down, so that each can be listed
    before it is entered); links are skipped, so nothing outside ``path`` is touched."""
    try:
        os.chmod(path, os.stat(path).st_mode | _OWNER)
    except OSError:
        return
    for root, folders, _ in os.walk(path):
        for name in folders:
            folder = os.path.join(root, name)
            if os.path.islink(folder):
                continue
            try:
                os.chmod(folder, os.stat(folder).st_mode | _OWNER)
            except OSError:
                continue
