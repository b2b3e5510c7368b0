"""One live run per output folder: an exclusive lock on ``OUT/.lock``.

The lock is an advisory ``flock`` on the file, so the operating system releases it when its
holder ends in any way (``kill -9`` included). The file also names the holder (pid, host, start
time) for the error a second run prints, and for the warning of a run that takes over a lock a
dead process left behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.errors import InputError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class OutputBusyError(InputError):
    """Another live run holds the output folder."""


class OutputLock:
    """Exclusive lock of one output folder; use as a context manager.

    Args:
        output_dir: The folder (must exist).
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            OutputBusyError: a live process holds it (the message names it).
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock_exclusive(fd)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise OutputBusyError(
                    f"output folder {self.path.parent} is in use by another run ({_who(holder)}); "
                    "wait for it to finish or choose another --output-dir") from None
            except OSError as exc:  # a filesystem without locks: say so and go on unlocked
                os.close(fd)
                logger.warning("cannot lock %s (%s); make sure no other run writes into it",
                               self.path.parent, exc.strerror)
                return
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file while we waited: lock the new one
        previous = _read(fd)
        if previous.get("pid") not in (None, os.getpid()):
            logger.warning("taking over the lock of %s, left by %s, which is no longer running",
                           self.path.parent, _who(previous))
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as exc:  # a full disk: the lock holds, only the holder's name is missing
            logger.warning("cannot write the holder into %s: %s", self.path, exc.strerror)

    def release(self) -> None:
        """Remove the lock file and let the lock go."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a read-only or full disk: the flock still goes with the descriptor
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


PROBE_RETRIES = 5
"""Tries of a lock found taken before it counts as held: :func:`lock_holder` of another run
holds it for an instant, a run holds it for its whole length."""


def _lock_exclusive(fd: int) -> None:
    """``flock`` ``fd`` exclusively without waiting on a holder, past a probe's instant.

    Raises:
        BlockingIOError: another process holds the lock.
    """
    for attempt in range(PROBE_RETRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == PROBE_RETRIES - 1:
                raise
            time.sleep(0.02)


def lock_holder(output_dir: Path) -> dict[str, Any] | None:
    """The live process that holds ``output_dir``'s lock (what it wrote of itself: pid, host,
    start time), or None when none does. Looking takes the lock for an instant (a shared
    ``flock``; a run taking it then tries again, :data:`PROBE_RETRIES`), so take your own lock
    first, then look at the other folder's: of two runs doing so in opposite order, one
    always sees the other."""
    try:
        fd = os.open(Path(output_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file (or none readable): nobody holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(fd)
    except OSError:  # a filesystem without locks
        return None
    finally:
        os.close(fd)  # also lets a shared lock go
    return None


def busy_message(folder: Path, holder: dict[str, Any]) -> str:
    """Why ``folder`` cannot be used now: ``holder`` (see :func:`lock_holder`) runs there."""
    return f"{folder} is in use by another run ({_who(holder)})"


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _who(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that has not written its name yet"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started_at')}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
