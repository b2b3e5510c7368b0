"""What reconstructing a window (and a batch) produced: the values every layer passes on.

:mod:`pipeline.reconstructors` re-exports them (``from pipeline.reconstructors import
WindowResult`` keeps working).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUS_OK = "ok"
STATUS_FAILED = "failed"


@dataclass(kw_only=True)
class WindowResult:
    """What reconstructing one window produced."""

    status: str
    """``"ok"``, or ``"failed"`` with ``error`` saying why."""
    error: str | None = None
    """One-line reason of a failure."""
    registered_frames: list[str] = field(default_factory=list)
    """Names of the frames that have a pose in the model."""
    num_points3D: int = 0
    """3D points in the model."""
    mean_reprojection_error: float | None = None
    """Mean reprojection error of the model's observations, in pixels."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per stage (e.g. ``features``, ``matching``, ``mapping``, ``write``)."""
    memory: dict[str, float] = field(default_factory=dict)
    """Memory peaks in MiB while its batch ran: ``peak_rss_mb`` of the process that
    reconstructed it and, on a GPU, ``cuda_peak_mb`` (``torch.cuda.max_memory_allocated``)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Reconstructor-specific facts worth keeping in ``window_info.json``."""
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per stage of this window's own work (e.g. ``tracking``, ``bundle_adjustment``,
    ``export``): ``seconds``, ``held_mb``, ``peak_mb`` and ``rss_peak_mb`` (see
    :class:`pipeline.infra.memory.PeakSpan`)."""

    @classmethod
    def failure(cls, error: str, **kwargs: Any) -> WindowResult:
        """A failed result with a one-line ``error``."""
        return cls(status=STATUS_FAILED, error=" ".join(str(error).split()), **kwargs)


@dataclass(kw_only=True)
class BatchReport:
    """What a reconstructor measured while reconstructing one batch (read by the runner)."""

    stages: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    """Batch-wide stages (``preprocess``, ``forward``), one entry per attempt that finished."""
    observations: list[Any] = field(default_factory=list)
    """:class:`pipeline.infra.memory.BatchObservation` of each forward that fitted."""
    out_of_memory_at: int | None = None
    """The smallest number of windows that ran out of memory together, if any did."""
    records: dict[str, Any] = field(default_factory=dict)
    """Facts about the batch's sequence for its ``run.json`` (e.g. colmap's ``calibration``),
    each stored under its key."""
