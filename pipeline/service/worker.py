"""The warm worker: one thread per device takes the device's queued jobs one after another
and runs each through :func:`pipeline.runner.run`, as the command line would, with the device's
network kept loaded between jobs (:mod:`pipeline.algo.models.cache`).

A job whose checkpoint, device, dtype or offload differ from the network held loads its own (the
one held is unloaded first). Between jobs the allocator's cached memory is returned; each job
records its peak. A network left idle for ``unload_after_s`` is unloaded.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..algo.models.cache import ModelCache, models_kept_in, release_memory
from ..core.errors import DiskFullError, PipelineError
from ..core.results import STATUS_FAILED, STATUS_OK
from ..io.job_table import CANCELLED, FAILED, FINISHED, INTERRUPTED, Job, JobStore
from ..io.run_record import now
from ..runner.config import PipelineConfig
from ..runner.control import RunControl, RunStopped
from ..runner.entry import run

logger = logging.getLogger(__name__)

EXIT_CODES = {"ok": 0, "windows_failed": 1, "usage": 2, "stopped": 130}
"""The command line's exit statuses a job's ``exit_code`` takes (see :mod:`pipeline.cli`)."""

STAGE_WRITE_INTERVAL_S = 0.2
"""The stage under way is written to the job table at most this often (windows always)."""


def device_key(device: str) -> str:
    """The worker a job's ``--device`` goes to: the device resolved (``auto``: CUDA when there
    is one), a CUDA device with its index.

    Raises:
        InputError: no such device here.
    """
    import torch

    from ..reconstructors.network import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    if resolved.type == "cpu":  # one CPU, however it is named (cpu, cpu:0)
        return "cpu"
    return str(resolved)


class Worker(threading.Thread):
    """Runs the jobs of one device (``key``) until :meth:`shutdown`.

    Args:
        key: The device (see :func:`device_key`).
        store: The job table.
        make_config: A job's options -> its run configuration (the service's defaults applied).
        wake: Set when a job is queued (the worker also looks every second).
        unload_after_s: Unload a network idle this long (0: keep it loaded).
        check_frames: Refuses a run's frames (see :attr:`RunControl.check_frames`).
    """

    def __init__(self, key: str, store: JobStore,
                 make_config: Callable[[dict[str, Any]], PipelineConfig],
                 wake: threading.Event, unload_after_s: float = 0.0, *,
                 check_frames: Callable[[Sequence[Any]], None] | None = None) -> None:
        super().__init__(name=f"worker-{key}", daemon=True)
        self.key, self.store, self.make_config = key, store, make_config
        self.check_frames = check_frames
        self.wake, self.unload_after_s = wake, unload_after_s
        self.cache = ModelCache()
        self.job_id: str | None = None
        """The job running now."""
        self._control: RunControl | None = None
        self._closing = threading.Event()
        self._cancelled: set[str] = set()

    def run(self) -> None:
        while not self._closing.is_set():
            try:
                job = self.store.claim(self.key)
                if job is None:
                    self._maybe_unload()
                    self.wake.wait(1.0)
                    self.wake.clear()
                    continue
                self.run_job(job)
            except sqlite3.Error as exc:  # the job table's disk is full or gone: wait, retry
                logger.error("%s: the job table cannot be used (%s); retrying", self.key, exc)
                self._closing.wait(5.0)

    def cancel(self, job_id: str) -> None:
        """Stop the job ``job_id``, running or about to run on this worker, at its next window
        boundary."""
        self._cancelled.add(job_id)
        control = self._control
        if self.job_id == job_id and control is not None:
            control.stop(CANCELLED)

    def shutdown(self) -> None:
        """Stop taking jobs; the job running stops at its next window boundary, recorded as
        ``interrupted`` (queued again when the service starts)."""
        self._closing.set()
        control = self._control
        if control is not None:
            control.stop(INTERRUPTED)
        self.wake.set()

    def status(self) -> dict[str, Any]:
        """What the worker holds and does, for ``GET /status``."""
        held = self.cache.held
        return {"device": self.key, "job": self.job_id, "model_loads": self.cache.loads,
                "model": None if held is None else {"checkpoint": held[0], "device": held[1],
                                                    "dtype": held[2], "cpu_offload": held[3]}}

    def _maybe_unload(self) -> None:
        idle = time.monotonic() - self.cache.last_used
        if self.unload_after_s and self.cache.held is not None and idle > self.unload_after_s:
            logger.info("%s: model idle for %.0f s", self.key, idle)
            self.cache.clear()

    def run_job(self, job: Job) -> None:
        """Run ``job`` and record how it ended (never raises)."""
        logger.info("job %s: started on %s (attempt %d)", job.id, self.key, job.attempts)
        control = self._new_control(job)
        self.job_id, self._control = job.id, control
        if job.id in self._cancelled:  # asked for while it was being claimed
            control.stop(CANCELLED)
        elif self._closing.is_set():
            control.stop(INTERRUPTED)
        started = time.perf_counter()
        try:
            config = self.make_config(job.options)
            with models_kept_in(self.cache):
                summary = run(config, control)
        except RunStopped as exc:
            self._end(job, exc.status, EXIT_CODES["stopped"], f"{exc.status} at a window "
                      "boundary; submitting it again finishes the rest", None)
        except DiskFullError as exc:
            self._end(job, FAILED, EXIT_CODES["windows_failed"], str(exc), None)
        except PipelineError as exc:
            self._end(job, FAILED, EXIT_CODES["usage"], str(exc), None)
        except Exception as exc:  # noqa: BLE001 - a job's defect never stops the service
            logger.exception("job %s failed", job.id)
            self._end(job, FAILED, EXIT_CODES["windows_failed"],
                      f"{type(exc).__name__}: {exc}", None)
        else:
            result = _result(summary)
            result.update(_peaks(summary))
            result["wall_time"] = round(time.perf_counter() - started, 3)
            code = EXIT_CODES["ok"] if summary.success else EXIT_CODES["windows_failed"]
            self._end(job, FINISHED, code, None, result)
        finally:
            self.job_id, self._control = None, None
            self._cancelled.discard(job.id)
            self.cache.touch()  # idle from now
            release_memory()

    def _new_control(self, job: Job) -> RunControl:
        """The run's hooks: windows done and failed, the total, the stage (at most every
        :data:`STAGE_WRITE_INTERVAL_S`) into the job table."""
        last_stage, counts = [0.0], {"done": 0, "failed": 0}

        def on_total(total: int) -> None:
            self._progress(job, total=total)

        def on_window(record: dict[str, Any]) -> None:
            counts["done"] += 1
            counts["failed"] += record["status"] == STATUS_FAILED
            self._progress(job, **counts)

        def on_stage(text: str) -> None:
            if time.monotonic() - last_stage[0] >= STAGE_WRITE_INTERVAL_S:
                last_stage[0] = time.monotonic()
                cancelling = job.id in self._cancelled
                self._progress(job, stage=f"cancelling ({text})" if cancelling else text)

        return RunControl(on_total=on_total, on_window=on_window, on_stage=on_stage,
                          check_frames=self.check_frames)

    def _progress(self, job: Job, **values: Any) -> None:
        """Record progress in the job table; a table that cannot be written loses only the
        progress (the run's own records stay right)."""
        try:
            self.store.update(job.id, **values)
        except sqlite3.Error as exc:
            logger.warning("job %s: cannot record its progress: %s", job.id, exc)

    def _end(self, job: Job, state: str, code: int, error: str | None,
             result: dict[str, Any] | None) -> None:
        logger.info("job %s: %s (exit status %d)%s", job.id, state, code,
                    f": {error}" if error else "")
        self.store.update(job.id, state=state, exit_code=code, error=error, result=result,
                          finished_at=now(), stage=None)


def _result(summary: Any) -> dict[str, Any]:
    """What a finished job keeps of its run's summary."""
    return {"line": summary.line(), "digest": summary.digest(), "success": summary.success,
            "windows": {"total": len(summary.windows), "ok": summary.count(STATUS_OK),
                        "failed": summary.count(STATUS_FAILED), "skipped": summary.num_skipped},
            "output_dir": str(summary.output_dir),
            "merge": None if summary.merge is None else {
                "segments": len(summary.merge.get("segments", []))},
            "merge_error": summary.merge_error,
            "sequences": summary.sequences}


def _peaks(summary: Any) -> dict[str, float | None]:
    """A job's peak memory from its stages' measurements (MiB): ``peak_memory_mb`` on its
    device (CUDA allocated, or the resident set on the CPU) and ``peak_rss_mb``."""
    rows = list(summary.profile.rows.values()) if summary.profile is not None else []
    device = [row.get("peak_mb", 0.0) for row in rows]
    rss = [row.get("rss_peak_mb", 0.0) for row in rows]
    return {"peak_memory_mb": round(max(device), 1) if device else None,
            "peak_rss_mb": round(max(rss), 1) if rss else None}
