"""A COLMAP database read by several processes at once (the feature store, whose chunks are
mapped in parallel workers).

COLMAP opens a database with a few writes (it creates missing tables and sets pragmas) and no
SQLite busy timeout, so two processes opening the same file at the same instant fail now and
then: "SQLite error: database is locked", raised as ``RuntimeError: No registered database
factory succeeded``. Measured here: 4 processes opening one database 200 times each failed 32
of 800 opens. The failure comes before any work (nothing read, nothing written, no random
number drawn), so the call is made again after a short wait and gives what it would have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pycolmap

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOCKED_MESSAGES = ("database is locked", "No registered database factory succeeded")
"""What COLMAP raises when another process holds the database's write lock while it opens it."""
ATTEMPTS = 30
"""Tries before the error is passed on (about 25 s of waiting in all)."""
FIRST_WAIT = 0.02
"""Seconds before the second try; doubled after each, up to :data:`LONGEST_WAIT`."""
LONGEST_WAIT = 1.0
"""The longest wait between two tries, in seconds."""


def is_locked(error: BaseException) -> bool:
    """Whether ``error`` is COLMAP failing to open a database another process was opening."""
    return isinstance(error, RuntimeError) and any(m in str(error) for m in LOCKED_MESSAGES)


def call_shared(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)``, a pycolmap call that opens a database other processes
    may be opening, tried again while it fails to open it (:func:`is_locked`)."""
    wait = FIRST_WAIT
    for attempt in range(1, ATTEMPTS):
        try:
            return function(*args, **kwargs)
        except RuntimeError as error:
            if not is_locked(error):
                raise
            logger.debug("database locked by another process (try %d): waiting %.2f s",
                         attempt, wait)
            time.sleep(wait)
            wait = min(2 * wait, LONGEST_WAIT)
    return function(*args, **kwargs)


@contextmanager
def open_shared(path: Path | str) -> Iterator[pycolmap.Database]:
    """The database at ``path``, opened with :func:`call_shared` and closed on exit."""
    db = call_shared(pycolmap.Database.open, str(path))
    try:
        yield db
    finally:
        db.close()
