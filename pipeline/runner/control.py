"""Following and stopping a run from the program that started it (the service).

The command line follows a run with its progress bar and stops it with a signal; a program
that calls :func:`pipeline.runner.run` in a thread of its own passes a :class:`RunControl`
instead: it hears of every stage and finished window, and its :meth:`RunControl.stop` ends the
run at the next window boundary the way SIGTERM does (windows under way are dropped, their
staging removed, ``run.json`` says why the run stopped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class RunStopped(KeyboardInterrupt):
    """Raised inside a run that :meth:`RunControl.stop` ended; a :class:`KeyboardInterrupt`,
    so that every clean-up an interrupted run does happens."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status
        """What ``run.json`` records: ``cancelled`` or ``interrupted``."""


@dataclass(kw_only=True)
class RunControl:
    """Hooks into one run; every hook is called in the thread that runs it."""

    on_total: Callable[[int], None] | None = None
    """Called with the number of windows to do once they are planned."""
    on_window: Callable[[dict[str, Any]], None] | None = None
    """Called with each finished window's record (as in ``run.json``; ``sequence`` added in a
    run over many)."""
    on_stage: Callable[[str], None] | None = None
    """Called with a few words on the work under way (the progress bar's postfix)."""
    check_frames: Callable[[Sequence[Any]], None] | None = None
    """Called with each sequence's frames (:class:`pipeline.io.frames.Frame`) once they are
    listed, before any work on them; raises :class:`~pipeline.core.errors.InputError` to refuse
    them (the service refuses frames that lie outside its allowed roots; in a run over many
    sequences, that sequence fails alone)."""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _status: str = "cancelled"
    _status_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stop(self, status: str = "cancelled") -> None:
        """Ask the run to end at the next window boundary, recorded as ``status``
        (``cancelled`` or ``interrupted``; a cancel asked for stays one). Safe from any
        thread."""
        with self._status_lock:
            if not (self._stop.is_set() and self._status == "cancelled"):
                self._status = status
            self._stop.set()

    @property
    def stopping(self) -> bool:
        """A stop was asked for."""
        return self._stop.is_set()

    def check(self) -> None:
        """Raise :class:`RunStopped` when a stop was asked for (called at window
        boundaries)."""
        if self._stop.is_set():
            raise RunStopped(self._status)

    def frames(self, frames: Sequence[Any]) -> None:
        """Raises: InputError: :attr:`check_frames` refuses ``frames``."""
        if self.check_frames is not None:
            self.check_frames(frames)

    def total(self, count: int) -> None:
        if self.on_total is not None:
            self.on_total(count)

    def window(self, record: dict[str, Any]) -> None:
        if self.on_window is not None:
            self.on_window(record)

    def stage(self, text: str) -> None:
        if self.on_stage is not None:
            self.on_stage(text)
