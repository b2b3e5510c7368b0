"""The outcome of a run: :class:`RunSummary`, its one-line summary and its digest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.failures import DigestEntry, failure_digest, plural
from ..core.results import STATUS_FAILED, STATUS_OK
from ..infra.memory import StageTable

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RunSummary:
    """The outcome of :func:`run`."""

    output_dir: Path
    """Where the windows and ``run.json`` are."""
    num_frames: int
    """Frames of the sequence."""
    windows: list[dict[str, Any]] = field(default_factory=list)
    """One record per window (as in ``run.json``), in window order."""
    wall_time: float = 0.0
    """Seconds from start to end."""
    merge: dict[str, Any] | None = None
    """The merge report (``merged/merge.json``) when merging was asked for and succeeded."""
    merge_error: str | None = None
    """Why merging failed, when it was asked for and failed."""
    profile: StageTable | None = None
    """Per-stage time and peak memory of this process's work."""
    throughput: dict[str, Any] | None = None
    """How busy the windows kept the device and the CPU (see :meth:`StageTable.throughput`)."""
    device: str = "cpu"
    """Where the reconstructor ran, and which process this was (for the profile table)."""
    is_main: bool = True
    """False in the processes of a multi-process run other than process 0."""
    sequences: list[dict[str, Any]] | None = None
    """In a run over many sequences: each sequence's name, source, status and counts (as in
    ``dataset.json``)."""
    notes: list[DigestEntry] = field(default_factory=list)
    """Digest lines besides the failures: windows whose calibration had little support."""

    @property
    def failed_sequences(self) -> list[dict[str, Any]]:
        """The sequences of a run over many that could not be read or were too short."""
        return [s for s in self.sequences or [] if s["status"] == STATUS_FAILED]

    def count(self, status: str) -> int:
        """Windows whose status is ``status``."""
        return sum(1 for w in self.windows if w["status"] == status)

    @property
    def num_skipped(self) -> int:
        """Windows a previous run had completed."""
        return sum(1 for w in self.windows if w.get("skipped"))

    @property
    def success(self) -> bool:
        """Every window (and every sequence) succeeded, and so did the merge if one was asked
        for."""
        return (not self.count(STATUS_FAILED) and self.merge_error is None
                and not self.failed_sequences)

    def digest(self) -> list[str]:
        """The failed windows grouped by cause, a line each with what to try (also kept in
        ``run.json`` under ``digest``)."""
        return [entry.line() for entry in failure_digest(self.windows) + self.notes]

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        merged = ""
        if self.merge is not None:
            merged = f" | merged: {len(self.merge['segments'])} segment(s)"
        elif self.merge_error is not None:
            merged = " | merge failed"
        sequences = ""
        if self.sequences is not None:
            sequences = (f"{plural(len(self.sequences), 'sequence')} ("
                         f"{len(self.failed_sequences)} failed) | ")
        return (f"{sequences}{plural(len(self.windows), 'window')}: {self.count(STATUS_OK)} ok, "
                f"{self.count(STATUS_FAILED)} failed ({self.num_skipped} already complete) | "
                f"{plural(self.num_frames, 'frame')} | {self.wall_time:.1f} s{merged} | "
                f"output: {self.output_dir}")
