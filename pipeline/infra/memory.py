"""The memory governor: measure what a batch costs, and size batches to the memory there is.

Measuring. :func:`reset_peak` and :func:`peak_mb` bracket a piece of work: on a CUDA device the
peak is ``torch.cuda.max_memory_allocated``; on the CPU it is the process's peak resident set
(``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs``; Linux only, elsewhere
the lifetime peak ``ru_maxrss`` is reported and cannot be reset).

The model. A network forward's peak is ``held + windows * per_window``: ``held`` is what the
process holds apart from the batch (weights, buffers; measured before the forward and after the
batch, not fitted) and ``per_window`` what one window of ``S`` frames adds at the current
resolution. Windows of a batch never attend to each
other, so the cost is linear in the batch size; within a window it grows with the frame count and
the pixels per frame. The first batch of a run is a single window: that is the probe forward, its
outputs are used like any other batch's. Every later batch refines ``per_window`` (the largest
observed value is kept, so the estimate only errs towards safety), and the batch size is the
largest that keeps ``held + windows * per_window`` within ``headroom`` of the budget.

The budget (:func:`budget_mb`) is what this process may hold in all: on CUDA the device's free
memory plus what this process has reserved; on the CPU the available system memory (shared
evenly between the processes of a multi-process run) plus this process's resident set; always
capped by ``--max-memory-gb``.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MEMINFO = Path("/proc/meminfo")


def _is_cuda(device: Any) -> bool:
    """Whether ``device`` (a ``torch.device`` or None) is a CUDA device."""
    return getattr(device, "type", None) == "cuda"


def _status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MiB, or None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def can_reset_cpu_peak() -> bool:
    """Whether the process's peak resident set can be reset (Linux ``clear_refs``)."""
    return _CLEAR_REFS.exists() and _status_mb("VmHWM") is not None


def settle(device: Any = None) -> None:
    """Free what can be freed: Python garbage, glibc's free heap, the CUDA cache."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if _is_cuda(device):
        import torch

        torch.cuda.empty_cache()


def reset_peak(device: Any = None) -> None:
    """Start a new peak measurement on ``device`` (and always of the process's resident set)."""
    if _is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    if can_reset_cpu_peak():
        try:
            _CLEAR_REFS.write_text("5")  # "5": reset VmHWM to the current resident set
        except OSError:
            pass


OUT_OF_MEMORY_MARKS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_ALLOC_FAILED", "can't allocate memory")
"""Words of the ``RuntimeError`` s that are an allocation failure without being a
``torch.OutOfMemoryError``: cuBLAS and cuDNN failing to get their workspace, the CPU allocator
of older torch releases."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device (or the CPU) running out of memory: a
    ``torch.OutOfMemoryError``, or a ``RuntimeError`` a library raised for a failed allocation
    (:data:`OUT_OF_MEMORY_MARKS`)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OUT_OF_MEMORY_MARKS)


def current_mb(device: Any = None) -> float:
    """Memory held now, MiB: allocated on a CUDA ``device``, else the resident set."""
    if _is_cuda(device):
        import torch

        return torch.cuda.memory_allocated(device) / 2**20
    rss = _status_mb("VmRSS")
    return rss if rss is not None else cpu_peak_mb()


def cpu_peak_mb() -> float:
    """Peak resident set since the last :func:`reset_peak` (Linux), else over the process's life."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def peak_mb(device: Any = None) -> float:
    """Peak since the last :func:`reset_peak`: CUDA allocated on a CUDA ``device``, else RSS."""
    if _is_cuda(device):
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return cpu_peak_mb()


def memory_record(device: Any = None) -> dict[str, float]:
    """Peaks since the last reset for ``window_info.json``: ``peak_rss_mb`` (the process's
    resident set) and, on a CUDA ``device``, ``cuda_peak_mb``."""
    record = {"peak_rss_mb": round(cpu_peak_mb(), 1)}
    if _is_cuda(device):
        record["cuda_peak_mb"] = round(peak_mb(device), 1)
    return record


@dataclass(kw_only=True)
class PeakSpan:
    """What one measured piece of work held and peaked at."""

    held_mb: float
    """Memory held when it started, MiB (CUDA allocated on a CUDA device, else resident set)."""
    peak_mb: float = 0.0
    """Peak while it ran, MiB, same measure as ``held_mb``."""
    rss_peak_mb: float = 0.0
    """Peak resident set of the process while it ran, MiB (equals ``peak_mb`` on the CPU)."""
    seconds: float = 0.0
    """Wall time, seconds."""

    def to_json(self) -> dict[str, float]:
        """Rounded values for JSON."""
        return {k: round(v, 3 if k == "seconds" else 1) for k, v in asdict(self).items()}


class PeakMeter:
    """Nested peak measurements over counters that can only be reset (see :func:`reset_peak`).

    Starting a measurement folds the peak so far into every open one before resetting, and
    ending one folds it into itself and the open ones, so an outer span's peak covers its inner
    spans: ``with meter.measure() as batch: ... with meter.measure() as stage: ...``.
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self._open: list[PeakSpan] = []

    def _fold(self) -> None:
        rss = cpu_peak_mb()
        device = peak_mb(self.device) if _is_cuda(self.device) else rss
        for span in self._open:
            span.peak_mb, span.rss_peak_mb = max(span.peak_mb, device), max(span.rss_peak_mb, rss)

    @contextmanager
    def measure(self) -> Iterator[PeakSpan]:
        """Measure the body; the span is complete when the block ends (also on an error)."""
        self._fold()
        reset_peak(self.device)
        span = PeakSpan(held_mb=current_mb(self.device))
        self._open.append(span)
        start = time.perf_counter()
        try:
            yield span
        finally:
            span.seconds = time.perf_counter() - start
            self._fold()
            self._open.remove(span)

    @contextmanager
    def stage(self, name: str, into: dict[str, dict[str, float]]) -> Iterator[PeakSpan]:
        """:meth:`measure`, storing the span as JSON under ``into[name]`` when the body ends."""
        with self.measure() as span:
            yield span
        into[name] = span.to_json()


@dataclass
class StageTable:
    """Per-stage totals of :class:`PeakSpan` measurements, for ``--profile-memory``."""

    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    """Stage -> ``calls``, ``seconds`` (total), ``peak_mb`` and ``rss_peak_mb`` (largest)."""

    def add(self, stage: str, span: PeakSpan | dict[str, float]) -> None:
        """Count one measurement of ``stage``."""
        values = span.to_json() if isinstance(span, PeakSpan) else span
        row = self.rows.setdefault(
            stage, {"calls": 0, "seconds": 0.0, "peak_mb": 0.0, "rss_peak_mb": 0.0}
        )
        row["calls"] += 1
        row["seconds"] += values["seconds"]
        row["peak_mb"] = max(row["peak_mb"], values["peak_mb"])
        row["rss_peak_mb"] = max(row["rss_peak_mb"], values["rss_peak_mb"])

    def throughput(self, wall: float, windows: int,
                   device_stages: tuple[str, ...]) -> dict[str, float | int | None]:
        """How busy the run kept its device and its CPU, from the stage totals.

        Args:
            wall: Seconds the windows took (from the first batch to the last).
            windows: Windows reconstructed in that time.
            device_stages: The stages that run on the accelerator (the reconstructor's
                :attr:`~pipeline.reconstructors.Reconstructor.device_stages`); every other
                stage but ``load`` is CPU work.

        Returns:
            ``wall_s``, ``windows``, ``windows_per_s``, ``cpu_busy_s`` (summed over worker
            processes, so it may exceed the wall time) and, with device stages,
            ``device_busy_s`` and ``device_idle_fraction`` (of the wall time).
        """
        busy = {stage: row["seconds"] for stage, row in self.rows.items() if stage != "load"}
        device = sum(seconds for stage, seconds in busy.items() if stage in device_stages)
        out: dict[str, float | int | None] = {
            "wall_s": round(wall, 3), "windows": windows,
            "windows_per_s": round(windows / wall, 4) if wall > 0 else None,
            "cpu_busy_s": round(sum(busy.values()) - device, 3)}
        if device_stages:
            out["device_busy_s"] = round(device, 3)
            out["device_idle_fraction"] = (round(max(0.0, 1.0 - device / wall), 4)
                                           if wall > 0 else None)
        return out

    def format(self, device: str) -> str:
        """The table as text (one row per stage, in the order first seen)."""
        lines = [
            f"{'stage':<20} {'calls':>5} {'total s':>9} {'mean s':>8} "
            f"{'peak MiB':>9} {'peak RSS MiB':>13}   (peak: {device})"
        ]
        for stage, r in self.rows.items():
            lines.append(
                f"{stage:<20} {r['calls']:>5} {r['seconds']:>9.2f} "
                f"{r['seconds'] / r['calls']:>8.2f} {r['peak_mb']:>9.0f} "
                f"{r['rss_peak_mb']:>13.0f}"
            )
        return "\n".join(lines)


def _available_system_mb() -> float:
    """``MemAvailable`` of ``/proc/meminfo`` in MiB (elsewhere: total physical memory)."""
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def budget_mb(
    device: Any, max_memory_gb: float | None = None, *, processes: int = 1
) -> tuple[float, str]:
    """What this process may hold in all on ``device``, MiB, and where the number comes from.

    Args:
        device: The network's device.
        max_memory_gb: A cap given by the user (GiB), or None.
        processes: Processes of this run sharing the machine's memory (CPU only).
    """
    if _is_cuda(device):
        import torch

        free, total = torch.cuda.mem_get_info(device)
        mine = torch.cuda.memory_reserved(device)
        budget, source = (
            (free + mine) / 2**20,
            f"free CUDA memory of {device} ({total / 2**30:.1f} GiB card)",
        )
    else:
        available = _available_system_mb() / max(1, processes)
        budget = current_mb() + available
        source = "available system memory" + (f" / {processes} processes" if processes > 1 else "")
    if max_memory_gb is not None and max_memory_gb * 1024 < budget:
        return max_memory_gb * 1024.0, f"--max-memory-gb {max_memory_gb:g}"
    return budget, source


MIN_AUTO_RES = 224
"""The lowest network input size (pixels) the governor lowers a resolution to by itself."""


def lower_resolutions(res: int, lowest: int = MIN_AUTO_RES) -> list[int]:
    """The resolutions below ``res`` that out-of-memory recovery tries, in order: steps of
    about an eighth, multiples of 14, down to ``lowest`` (empty when ``res <= lowest``)."""
    out, current = [], res
    while (step := max(lowest, int(current * 0.875) // 14 * 14)) < current:
        out.append(step)
        current = step
    return out


@dataclass(kw_only=True)
class BatchObservation:
    """One measured batch."""

    windows: int
    """Windows in the batch."""
    held_mb: float
    """Memory held apart from the batch, MiB: the larger of what was held just before the
    forward and after the batch (memory-mapped weights become resident during the first)."""
    peak_mb: float
    """Peak during the batch (forward and per-window work), MiB."""
    process_res: int | None = None
    """Resolution (long side of the network input) the batch ran at."""


@dataclass(kw_only=True)
class MemoryGovernor:
    """Sizes batches from measured ones (see the module docstring)."""

    budget_mb: float
    """What the process may hold in all, MiB."""
    budget_source: str = ""
    """Where ``budget_mb`` comes from, for run.json."""
    headroom: float = 0.85
    """Fraction of the budget batches are planned to use (allocator slack, tracking, BA)."""
    max_windows: int = 64
    """Never more windows per batch than this."""
    observations: list[BatchObservation] = field(default_factory=list)
    """Every measured batch, in order."""
    out_of_memory_at: int | None = None
    """The smallest batch that ran out of memory; later batches stay below it."""
    queued_mb: float = 0.0
    """Memory held by windows waiting between the stages (frames prepared ahead, jobs on their
    way to or in the CPU workers), MiB, when it counts against the budget (host memory): set
    by the executor before each batch is sized."""

    @property
    def per_window_mb(self) -> float | None:
        """What one window adds at the latest resolution: the largest value observed, MiB."""
        latest = self.observations[-1].process_res if self.observations else None
        values = [
            (o.peak_mb - o.held_mb) / o.windows
            for o in self.observations
            if o.process_res == latest
        ]
        return max(values) if values else None

    def observe(self, observation: BatchObservation) -> None:
        """Record a measured batch; the first that needed more than the budget is named in a
        warning (batches stay at one window, over the limit)."""
        self.observations.append(observation)
        if observation.peak_mb > self.budget_mb and not any(
                o.peak_mb > self.budget_mb for o in self.observations[:-1]):
            logger.warning("a batch of %d window(s) held %.0f MiB, more than the memory budget "
                           "of %.0f MiB (%s): batches stay at one window, and the budget cannot "
                           "be kept", observation.windows, observation.peak_mb, self.budget_mb,
                           self.budget_source or "given")

    def observe_out_of_memory(self, windows: int) -> None:
        """A batch of ``windows`` ran out of memory (and was split): stay below that."""
        if windows > 1:
            self.out_of_memory_at = min(windows, self.out_of_memory_at or windows)

    def windows_per_batch(self) -> int:
        """The batch size for the next batch: 1 until a batch has been measured (the probe)."""
        per_window = self.per_window_mb
        if per_window is None:
            return 1
        held = self.observations[-1].held_mb
        room = self.budget_mb * self.headroom - held - self.queued_mb
        fits = math.floor(room / max(per_window, 1.0))
        ceiling = self.max_windows if self.out_of_memory_at is None else self.out_of_memory_at - 1
        return int(min(ceiling, max(1, fits)))

    def predicted_peak_mb(self, windows: int) -> float | None:
        """Predicted peak of a batch of ``windows``, MiB (None before the probe)."""
        if self.per_window_mb is None:
            return None
        return self.observations[-1].held_mb + windows * self.per_window_mb

    def to_json(self) -> dict[str, Any]:
        """The memory model for run.json."""
        return {
            "budget_mb": round(self.budget_mb, 1),
            "budget_source": self.budget_source,
            "headroom": self.headroom,
            "per_window_mb": None if self.per_window_mb is None else round(self.per_window_mb, 1),
            "held_mb": round(self.observations[-1].held_mb, 1) if self.observations else None,
            "queued_mb": round(self.queued_mb, 1),
            "windows_per_batch": self.windows_per_batch(),
            "out_of_memory_at": self.out_of_memory_at,
            "observations": [
                {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(o).items()}
                for o in self.observations
            ],
        }


def array_bytes(*values: Any) -> int:
    """Bytes held by the numpy arrays and torch tensors among ``values`` (and in lists, tuples
    and dicts of them, and the fields of dataclasses)."""
    total = 0
    for value in values:
        if hasattr(value, "element_size") and hasattr(value, "nelement"):  # torch
            total += value.element_size() * value.nelement()
        elif hasattr(value, "nbytes") and hasattr(value, "dtype"):  # numpy
            total += int(value.nbytes)
        elif isinstance(value, (list, tuple)):
            total += array_bytes(*value)
        elif isinstance(value, dict):
            total += array_bytes(*value.values())
        elif hasattr(value, "__dataclass_fields__"):
            total += array_bytes(*(getattr(value, f) for f in value.__dataclass_fields__))
    return total
