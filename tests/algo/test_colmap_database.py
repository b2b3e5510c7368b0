"""A COLMAP database opened by several processes at once: an open that finds it locked is tried
again (COLMAP's own open has no busy timeout)."""

from __future__ import annotations

import multiprocessing

import pycolmap
import pytest

from pipeline.algo import colmap_database
from pipeline.algo.colmap_database import call_shared, is_locked, open_shared

LOCKED = ("[database.cc:60] No registered database factory succeeded")


def _open_many(path: str, times: int) -> int:
    """Open ``path`` ``times`` times through :func:`open_shared`; the images read each time."""
    seen = 0
    for _ in range(times):
        with open_shared(path) as db:
            seen += db.num_images()
    return seen


def test_many_processes_open_one_database_at_once(tmp_path):
    """Measured without the retry: 4 processes opening one database 200 times each failed 32 of
    800 opens ("database is locked")."""
    path = tmp_path / "database.db"
    with pycolmap.Database.open(str(path)) as db:
        db.write_camera(pycolmap.Camera.create_from_model_name(1, "SIMPLE_PINHOLE", 100.0, 64, 48))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.starmap(_open_many, [(str(path), 150)] * 4) == [0] * 4


def test_an_open_that_finds_the_database_locked_is_tried_again(monkeypatch):
    monkeypatch.setattr(colmap_database, "FIRST_WAIT", 0.001)
    calls = []

    def opened_at_the_third_try():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(LOCKED)
        return "opened"

    assert call_shared(opened_at_the_third_try) == "opened" and len(calls) == 3


def test_a_lock_never_let_go_fails_after_the_last_try(monkeypatch):
    monkeypatch.setattr(colmap_database, "ATTEMPTS", 4)
    monkeypatch.setattr(colmap_database, "FIRST_WAIT", 0.001)
    calls = []

    def locked():
        calls.append(1)
        raise RuntimeError(LOCKED)

    with pytest.raises(RuntimeError) as failed:
        call_shared(locked)
    assert is_locked(failed.value) and len(calls) == 4


def test_other_errors_are_not_tried_again():
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("Failed to read image")

    with pytest.raises(RuntimeError, match="Failed to read image"):
        call_shared(broken)
    assert len(calls) == 1
