"""The output folder's lock (:mod:`pipeline.infra.lock`): what another run's probe of it does."""

from __future__ import annotations

import fcntl
import os
import threading

import pytest

from pipeline.infra.lock import LOCK_FILE, OutputBusyError, OutputLock, lock_holder


def test_the_holder_is_seen_and_nobody_once_it_is_gone(tmp_path):
    assert lock_holder(tmp_path) is None  # no lock file
    with OutputLock(tmp_path):
        holder = lock_holder(tmp_path)
        assert holder is not None and holder["pid"] == os.getpid()
        with pytest.raises(OutputBusyError, match="in use by another run"):
            OutputLock(tmp_path).acquire()  # a run stays held past every retry
    assert lock_holder(tmp_path) is None
    (tmp_path / LOCK_FILE).write_text('{"pid": 1}')  # a file left behind, nobody holding it
    assert lock_holder(tmp_path) is None


def test_a_probe_at_the_moment_a_run_starts_does_not_refuse_it(tmp_path):
    """Another run's look (a shared flock, held here for 30 ms, longer than any real look)
    when this run takes the lock: it waits the look out instead of calling the folder busy."""
    (tmp_path / LOCK_FILE).write_text("")
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.03, os.close, [fd]).start()
    lock = OutputLock(tmp_path)
    lock.acquire()
    try:
        assert lock_holder(tmp_path)["pid"] == os.getpid()
    finally:
        lock.release()
