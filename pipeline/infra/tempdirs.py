"""Temporary folders of a run (COLMAP's databases, chunk models): named after the process that
owns them, removed by it, and removed by the next run when their owner died without (SIGKILL,
a crash, a stop that timed out).

A folder is ``$TMPDIR/<prefix><pid>-<random>``; a folder whose process is gone is garbage.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .files import remove_tree

logger = logging.getLogger(__name__)

MIN_FREE = 64 << 20
"""Bytes a temporary folder's disk needs free for COLMAP to work there (below: it is full)."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (``True`` when it exists but is another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_temp(prefix: str) -> Path:
    """A new private folder ``$TMPDIR/<prefix><this pid>-<random>``."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def remove_dead_temps(prefixes: Iterable[str]) -> int:
    """Remove the temporary folders of these prefixes whose owning process is gone; return
    how many. Folders of live processes (other runs, this one) and names that carry no pid
    are left alone."""
    removed = 0
    try:
        entries = list(Path(tempfile.gettempdir()).iterdir())
    except OSError:
        return 0
    for path in entries:
        prefix = next((p for p in prefixes if path.name.startswith(p)), None)
        if prefix is None or not path.is_dir() or path.is_symlink():
            continue
        pid = path.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if remove_tree(path):
            logger.info("removed %s, left by a run that ended without cleaning up", path)
            removed += 1
    return removed


def temp_space_problem(min_free: int = MIN_FREE) -> str | None:
    """Why the temporary folder cannot hold COLMAP's work (its disk is full), or ``None``."""
    folder = tempfile.gettempdir()
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= min_free:
        return None
    return (f"the temporary folder {folder} has {free >> 20} MiB free (its disk is full): free "
            "space there, or point TMPDIR at a disk with room")


def explain(failure: str) -> str:
    """``failure`` (a crashed worker, a COLMAP error), with the temporary folder's full disk
    named first when that is what it is (COLMAP aborts, or fails in SQLite, without saying)."""
    problem = temp_space_problem()
    return failure if problem is None else f"{problem} ({failure})"
