"""The pipelined executor: frames decoded ahead, forwards in the main process, windows finished
by a pool of worker processes, all at the same time.

Three stages overlap (``--cpu-workers N``):

1. **Loading** (:class:`FrameLoader`, a thread): the frames of the next windows are decoded and
   brought to the network grid, at most one batch ahead (pinned memory on CUDA, so the copy to
   the device does not block).
2. **Device** (the main process): one forward per batch, and whatever else needs the network
   (VGGT's track head). The reconstructor turns each window into a picklable job
   (:class:`pipeline.reconstructors.network.SfmJob`: arrays, not the model).
3. **Finishing** (:class:`CpuPool`, ``N`` spawned worker processes): each job becomes a COLMAP
   model in the window's staging folder (tracks, bundle adjustment, filtering, export). The main
   process finalises each window (atomic rename, ``window_info.json``, ``run.json``) as its job
   completes, while the next batches run.

The classical reconstructor's windows are all CPU: it uses the same pool for its work. With
``--cpu-workers 0`` every batch is finished before the next starts, in the main process (the
serial path; colmap keeps its own worker processes, so that a COLMAP abort costs one window).

Jobs in flight are bounded (two per worker); the memory they hold in the host is counted by the
memory governor when host memory is what bounds the batches (a CPU run).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..core.results import WindowResult
from ..core.windows import take_batch
from ..infra.processes import exit_with_parent, stop_workers
from ..infra.tempdirs import explain
from ..io.window_folders import discard_staging

logger = logging.getLogger(__name__)

JOBS_PER_WORKER = 2
"""Jobs in flight per worker: one running, one waiting, so a worker never idles."""


class WindowJob(Protocol):
    """The CPU part of one window, sent to a worker process (it must pickle)."""

    def run(self) -> Any:
        """Finish the window; returns its :class:`pipeline.reconstructors.WindowResult`."""

    def nbytes(self) -> int:
        """Host memory the job's arrays hold, bytes."""


def run_job(job: WindowJob) -> Any:
    """Pool entry point: ``job.run()`` (a module-level function pickles by name); the seconds
    it took go to the result's ``timings["finish"]``."""
    start = time.perf_counter()
    result = job.run()
    result.timings["finish"] = time.perf_counter() - start
    return result


def cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_cpu_workers(device_in_main: bool, processes: int = 1) -> int:
    """One worker per core left free: the main process keeps a core when it drives a device
    (vggt, da3); ``processes`` sharing the machine (accelerate) split the cores."""
    free = cores() // max(1, processes) - (1 if device_in_main else 0)
    return max(1, free)


def _worker_setup(parent_pid: int, colmap_log_level: int) -> None:
    """Worker initializer: exit with the parent, leave Ctrl-C to the parent (which stops the
    workers itself), and keep COLMAP as quiet as the run asks."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent_pid)
    import pycolmap

    pycolmap.logging.minloglevel = colmap_log_level
    # glog's failure handler would answer the SIGTERM of a pool shut down after a worker died
    # with a stack dump on stderr: end quietly instead
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def completed(value: Any = None, error: BaseException | None = None) -> Future:
    """A future that is already done with ``value`` (or ``error``)."""
    future: Future = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


class CpuPool:
    """Worker processes that finish windows; with 0 workers, jobs run in the calling process
    as they are submitted.

    Workers are spawned (forking a process that runs threads, as torch and pycolmap do, can
    deadlock), exit when the parent dies, and ignore SIGINT. A pool whose worker died is
    replaced by :meth:`restart`.
    """

    local_disk = True
    """Its workers run on this machine: they see its temporary folder."""

    def __init__(self, workers: int, *, colmap_log_level: int = 3) -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        self.workers = workers
        self.colmap_log_level = colmap_log_level
        self._pool: ProcessPoolExecutor | None = None
        self.generation = 0
        """How often the pool was replaced (a job's worker died)."""

    @property
    def inline(self) -> bool:
        """True when jobs run in the calling process."""
        return self.workers == 0

    def executor(self) -> ProcessPoolExecutor:
        """The process pool (started on first use)."""
        if self.inline:
            raise RuntimeError("an inline pool has no worker processes")
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_setup, initargs=(os.getpid(), self.colmap_log_level))
        return self._pool

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in a worker (inline: now, its exception kept in the future)."""
        if self.inline:
            try:
                return completed(fn(*args))
            except Exception as exc:  # noqa: BLE001 - reported through the future
                return completed(error=exc)
        return self.executor().submit(fn, *args)

    def restart(self) -> None:
        """Drop a broken pool; the next submission starts a new one."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.generation += 1

    def stop(self) -> None:
        """Kill the workers now (their jobs are abandoned)."""
        if self._pool is not None:

            stop_workers(self._pool)
            self._pool = None

    def close(self, *, cancel: bool = False) -> None:
        """Wait for the workers to finish their jobs (``cancel``: the jobs not started yet are
        dropped) and end."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None


@dataclass
class _Prepared:
    item: Any = None
    error: BaseException | None = None


class FrameLoader:
    """Prepares windows ahead of the device in a background thread.

    ``prepare(window)`` runs for each window of ``order`` (:class:`pipeline.core.windows.Window`,
    told apart by their ``key``) in turn, at most :attr:`ahead` windows ahead of what
    :meth:`take` has consumed. :meth:`take` must follow ``order`` (a window not
    ready when the loader is held up elsewhere is prepared in the caller instead).
    """

    def __init__(self, prepare: Callable[[Any], Any], order: Sequence[Any], *, ahead: int = 1,
                 size_of: Callable[[Any], int] | None = None) -> None:
        self.prepare = prepare
        self.ahead = max(1, ahead)
        """Windows prepared and not yet taken, at most (the executor sets one batch)."""
        self.wait_seconds = 0.0
        """Time :meth:`take` spent waiting for the loader."""
        self._size_of = size_of
        self._order = {w.key for w in order}
        self._windows = list(order)
        self._ready: dict[Any, _Prepared] = {}
        self._taken: set[Any] = set()
        self._busy: Any = None
        self._stopped = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="frame-loader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for window in self._windows:
            with self._cond:
                while len(self._ready) >= self.ahead and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                if window.key in self._taken:
                    continue
                self._busy = window.key
            try:
                prepared = _Prepared(item=self.prepare(window))
            except Exception as exc:  # noqa: BLE001 - raised again where it is taken
                prepared = _Prepared(error=exc)
            with self._cond:
                self._busy = None
                if window.key not in self._taken:
                    self._ready[window.key] = prepared
                self._cond.notify_all()

    def take(self, window: Any) -> Any:
        """The prepared ``window`` (waits for the loader when it is under way)."""
        start = time.perf_counter()
        with self._cond:
            while (window.key not in self._ready and not self._stopped
                   and self._thread.is_alive() and self._will_come(window.key)):
                self._cond.wait(0.5)
            prepared = self._ready.pop(window.key, None)
            self._taken.add(window.key)
            self._cond.notify_all()
        self.wait_seconds += time.perf_counter() - start
        if prepared is None:
            return self.prepare(window)
        if prepared.error is not None:
            raise prepared.error
        return prepared.item

    def _will_come(self, key: Any) -> bool:
        """Whether the loader will deliver window ``key`` without the caller taking others
        first."""
        if self._busy == key:
            return True
        return len(self._ready) < self.ahead and key in self._order

    def nbytes(self) -> int:
        """Host memory held by windows prepared and not yet taken, bytes."""
        if self._size_of is None:
            return 0
        with self._cond:
            return sum(self._size_of(p.item) for p in self._ready.values() if p.item is not None)

    def stop(self) -> None:
        """Stop preparing (what is under way finishes in the background)."""
        with self._cond:
            self._stopped = True
            self._ready.clear()
            self._cond.notify_all()


@dataclass
class Pending:
    """A window whose result is on its way."""

    future: Future
    """Resolves to its :class:`pipeline.reconstructors.WindowResult`."""
    job: WindowJob | None = None
    """The job computing it in a worker (None: computed already, or elsewhere)."""

    def nbytes(self) -> int:
        """Host memory its job holds until it completes, bytes."""
        return 0 if self.job is None or self.future.done() else self.job.nbytes()


def submit_job(pool: CpuPool, job: WindowJob) -> Pending:
    """``job`` sent to ``pool``."""
    return Pending(pool.submit(run_job, job), job)


def completed_pending(result: Any) -> Pending:
    """A window whose result is known already."""
    return Pending(completed(result))


def result_of(pending: Pending) -> Any:
    """The window's result; a job that raised, or a worker that died, fails the window alone
    (waits for it when it is still running)."""
    try:
        return pending.future.result()
    except BrokenProcessPool:
        return WindowResult.failure(explain("the worker process finishing this window died "
                                            "(often: out of memory)"))
    except Exception as exc:  # noqa: BLE001 - one window never stops the others
        return WindowResult.failure(explain(f"{type(exc).__name__}: {exc}"))


@dataclass(kw_only=True)
class InFlight:
    """A window between the start of its batch and the finalisation of its folder."""

    window: Any
    """The :class:`pipeline.core.windows.Window`."""
    batch_index: int
    """Its batch."""
    staging: Path
    """Its staging folder."""
    final: Path
    """Its folder once finished."""
    pending: Pending
    """Its result to come."""
    signature_options: Any = None
    """The reconstructor's options signature when the batch started."""
    started: float = field(default_factory=time.perf_counter)
    """``time.perf_counter()`` when its batch started."""
    generation: int = 0
    """The pool generation its job went to (a worker death is answered once per pool)."""


@dataclass(kw_only=True)
class ExecutorStats:
    """How the stages kept busy (``run.json`` → ``throughput``)."""

    cpu_workers: int = 0
    """Worker processes finishing windows (0: the serial path)."""
    main_busy_s: float = 0.0
    """Seconds the main process spent starting batches (decode when not ahead, forward,
    tracking)."""
    finish_busy_s: float = 0.0
    """Seconds of finishing jobs, summed over the workers (may exceed the wall time)."""
    loader_wait_s: float = 0.0
    """Seconds the main process waited for frames the loader had not prepared yet."""
    max_in_flight: int = 0
    """The most windows between their batch's start and their folder at once."""
    worker_restarts: int = 0
    """Pools replaced because a worker died."""

    def add(self, other: ExecutorStats) -> None:
        """Fold in the figures of another executor run (the next sequence's)."""
        self.main_busy_s += other.main_busy_s
        self.finish_busy_s += other.finish_busy_s
        self.loader_wait_s += other.loader_wait_s
        self.max_in_flight = max(self.max_in_flight, other.max_in_flight)
        self.worker_restarts += other.worker_restarts

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class WindowExecutor:
    """Runs a run's windows through the stages (see the module docstring).

    The runner supplies what happens at either end: ``start(batch, pool)`` makes the staging
    folders and calls the reconstructor's ``start_batch`` (returning :class:`InFlight`),
    ``finish(flight, result)`` finalises a window's folder and returns its record, and
    ``on_record(record)`` files it (manifest, progress). ``batch_size()`` sizes each batch just
    before it starts.
    """

    def __init__(self, *, reconstructor: Any, pool: CpuPool, start: Callable[..., list[InFlight]],
                 finish: Callable[[InFlight, Any], dict[str, Any]],
                 on_record: Callable[[dict[str, Any]], None], batch_size: Callable[[], int],
                 governor: Any = None, count_host_memory: bool = False) -> None:
        self.reconstructor = reconstructor
        self.pool = pool
        self.start, self.finish, self.on_record = start, finish, on_record
        self.batch_size = batch_size
        self.governor = governor
        self.count_host_memory = count_host_memory
        self.stats = ExecutorStats(cpu_workers=pool.workers)
        self.in_flight: list[InFlight] = []
        self.loader: FrameLoader | None = None

    def run(self, todo: Sequence[Any], size_of: Callable[[Any], Any]) -> ExecutorStats:
        """Reconstruct ``todo`` (windows of :class:`pipeline.io.frames.Frame`); windows of one
        shape are batched together in their order. The reconstructor gets the pool, then
        :meth:`~pipeline.reconstructors.Reconstructor.start` with the windows."""
        order = group_by_shape(todo, size_of)
        self.reconstructor.attach_pool(self.pool)  # before it starts any work of its own
        self.reconstructor.start(order)
        if not self.pool.inline and self.reconstructor.prepares_ahead:
            self.loader = FrameLoader(self.reconstructor.prepare_window, order,
                                      size_of=lambda p: p.nbytes())
            self.reconstructor.loader = self.loader
        pending, index = list(order), 0
        try:
            while pending:
                self._collect(block=False)
                while self._jobs_running() >= JOBS_PER_WORKER * max(1, self.pool.workers):
                    self._collect(block=True)
                size = self._next_size()
                batch, pending = take_batch(pending, size, index, size_of=size_of)
                started = time.perf_counter()
                self.in_flight += self.start(batch, self.pool)
                self.stats.main_busy_s += time.perf_counter() - started
                self.stats.max_in_flight = max(self.stats.max_in_flight, len(self.in_flight))
                if self.pool.inline:
                    self._collect_all()
                index += 1
            self._collect_all()
        except BaseException:
            self._abandon()
            raise
        finally:
            if self.loader is not None:
                self.stats.loader_wait_s = self.loader.wait_seconds
                self.loader.stop()
                self.reconstructor.loader = None
        return self.stats

    def _next_size(self) -> int:
        """The next batch's size, with the host memory of what waits counted first."""
        if self.governor is not None and self.count_host_memory:
            held = sum(2 * f.pending.nbytes() for f in self.in_flight)  # sender and worker
            held += self.loader.nbytes() if self.loader is not None else 0
            self.governor.queued_mb = held / 2**20
        size = self.batch_size()
        if self.loader is not None:
            self.loader.ahead = size  # one batch ahead
        return size

    def _jobs_running(self) -> int:
        """Windows whose result is still on its way (in a worker, or in a device actor)."""
        return sum(1 for f in self.in_flight if not f.pending.future.done())

    def _collect_all(self) -> None:
        while self.in_flight:
            self._collect(block=True)

    def _collect(self, *, block: bool) -> None:
        """Finalise the windows whose results are in (waiting for one when ``block``)."""
        if not self.in_flight:
            return
        if block and not any(f.pending.future.done() for f in self.in_flight):
            progress = self.reconstructor.progress
            if progress is not None:
                progress(f"finishing {len(self.in_flight)} window"
                         f"{'' if len(self.in_flight) == 1 else 's'} in CPU workers")
            wait([f.pending.future for f in self.in_flight], return_when=FIRST_COMPLETED)
        if any(_worker_died(f) for f in self.in_flight):
            self._retry_after_death()
        for flight in [f for f in self.in_flight if f.pending.future.done()]:
            self.in_flight.remove(flight)
            result = result_of(flight.pending)
            if "finish" in result.timings:
                self.stats.finish_busy_s += result.timings["finish"]
            self.on_record(self.finish(flight, result))

    def _retry_after_death(self) -> None:
        """A worker died (killed for memory, or a library aborted): every job of its pool
        failed with it. They are sent again to a new pool one at a time, so that the window
        that killed its worker dies alone and fails while the others finish. Rare; the main
        process waits meanwhile."""
        died = [f for f in self.in_flight if f.pending.job is not None
                and f.generation == self.pool.generation]
        wait([f.pending.future for f in died])  # a broken pool fails all its jobs at once
        suspects = [f for f in died if _worker_died(f)]
        logger.warning("a CPU worker died; its %d window(s) are finished again one at a time",
                       len(suspects))
        self.stats.worker_restarts += 1
        self.pool.restart()
        for flight in suspects:
            flight.pending = submit_job(self.pool, flight.pending.job)
            flight.generation = self.pool.generation
            wait([flight.pending.future])
            if _worker_died(flight):
                logger.warning("window %d: its CPU worker died again; it fails",
                               flight.window.index)
                self.stats.worker_restarts += 1
                self.pool.restart()

    def _abandon(self) -> None:
        """Interrupted or failed: stop the workers and remove every unfinished staging."""
        if self.loader is not None:
            self.loader.stop()
        self.pool.stop()
        for flight in self.in_flight:
            discard_staging(flight.staging)
        self.in_flight = []


def _worker_died(flight: InFlight) -> bool:
    future = flight.pending.future
    return future.done() and isinstance(future.exception(), BrokenProcessPool)


def group_by_shape(windows: Sequence[Any], size_of: Callable[[Any], Any]) -> list[Any]:
    """``windows`` with those of one shape (frame count and frame sizes) together, in order of
    first appearance, so that batches take consecutive windows (and the loader's order is
    theirs)."""
    groups: dict[tuple, list[Any]] = {}
    for window in windows:
        key = (len(window), tuple(size_of(f) for f in window.items))
        groups.setdefault(key, []).append(window)
    return [w for group in groups.values() for w in group]
