"""The pipelined executor (:mod:`pipeline.exec.executor`): the loader, the worker pool, retries
after
a worker dies, interrupts, the memory the queue holds, and that pipelined runs write exactly
what serial runs write."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGES
from pipeline.core.windows import Window
from pipeline.exec.executor import (
    CpuPool,
    FrameLoader,
    InFlight,
    WindowExecutor,
    completed_pending,
    default_cpu_workers,
    group_by_shape,
    result_of,
    submit_job,
)
from pipeline.infra.memory import BatchObservation, MemoryGovernor, array_bytes
from pipeline.io.output import iter_windows, read_window_info, read_window_poses
from pipeline.reconstructors import WindowResult
from pipeline.runner import run
from pipeline.runner.config import PipelineConfig

# ---- jobs run by real worker processes (module level, so that they pickle) --------------------


@dataclass
class SleepJob:
    """Ok after ``seconds``; reports the worker's pid."""

    seconds: float = 0.0
    payload: np.ndarray | None = None

    def run(self) -> WindowResult:
        start = time.time()
        time.sleep(self.seconds)
        return WindowResult(status="ok", details={"pid": os.getpid(), "start": start,
                                                  "end": time.time()})

    def nbytes(self) -> int:
        return array_bytes(self.payload)


@dataclass
class DieJob:
    """Kills its worker, as the kernel's OOM killer would."""

    def run(self) -> WindowResult:
        os._exit(9)

    def nbytes(self) -> int:
        return 0


@dataclass
class RaiseJob:
    def run(self) -> WindowResult:
        raise ValueError("no model")

    def nbytes(self) -> int:
        return 0


class Windows:
    """Windows of plain items with a size, like frames."""

    @dataclass(frozen=True)
    class Item:
        size: tuple[int, int] = (4, 4)

    @classmethod
    def make(cls, count: int, size: tuple[int, int] = (4, 4)) -> list[Window]:
        return [Window(index=i, start=i, items=(cls.Item(size),) * 2) for i in range(count)]


def executor_over(jobs: dict[int, object], pool: CpuPool, tmp_path: Path, *, batch: int = 2,
                  interrupt_at_batch: int | None = None):
    """A :class:`WindowExecutor` whose batches send ``jobs[window.index]`` to ``pool``; the
    records it files are returned in a list."""
    records: list[dict] = []
    batches: list[list[int]] = []

    class Reconstructor:  # what the executor calls of one (pipeline.reconstructors.base)
        progress = None
        prepares_ahead = False

        def attach_pool(self, pool):
            pass

        def start(self, windows):
            pass

    def start(b, pool):
        if interrupt_at_batch is not None and len(batches) == interrupt_at_batch:
            raise KeyboardInterrupt
        batches.append([w.index for w in b.windows])
        flights = []
        for w in b.windows:
            staging = tmp_path / f"window_{w.index}.partial"
            staging.mkdir()
            job = jobs[w.index]
            pending = submit_job(pool, job) if job is not None else completed_pending(
                WindowResult(status="ok"))
            flights.append(InFlight(window=w, batch_index=b.index, staging=staging, final=staging,
                                    pending=pending, generation=pool.generation))
        return flights

    def finish(flight, result):
        flight.staging.rmdir()
        return {"window_index": flight.window.index, "status": result.status,
                "error": result.error, "details": result.details}

    executor = WindowExecutor(reconstructor=Reconstructor(), pool=pool, start=start,
                              finish=finish, on_record=records.append, batch_size=lambda: batch)
    return executor, records, batches


# ---- the worker pool -----------------------------------------------------------------------------

def test_inline_pool_runs_jobs_at_once_and_keeps_their_errors():
    pool = CpuPool(0)
    ok = submit_job(pool, SleepJob())
    assert ok.future.done() and result_of(ok).status == "ok"
    assert result_of(ok).details["pid"] == os.getpid()
    failed = result_of(submit_job(pool, RaiseJob()))
    assert failed.status == "failed" and failed.error == "ValueError: no model"
    assert "finish" in result_of(ok).timings  # the job's own seconds


def test_default_workers_leave_a_core_to_the_device():
    cores = len(os.sched_getaffinity(0))
    assert default_cpu_workers(False) == cores
    assert default_cpu_workers(True) == max(1, cores - 1)
    assert default_cpu_workers(True, processes=cores * 2) == 1


def test_jobs_run_in_workers_while_the_next_batches_start(tmp_path):
    pool = CpuPool(2)
    try:
        jobs = {i: SleepJob(0.5) for i in range(6)}
        executor, records, batches = executor_over(jobs, pool, tmp_path)
        stats = executor.run(Windows.make(6), size_of=lambda item: item.size)
    finally:
        pool.close()
    assert sorted(r["window_index"] for r in records) == list(range(6))
    assert {r["status"] for r in records} == {"ok"}
    assert {r["details"]["pid"] for r in records} - {os.getpid()}  # in worker processes
    assert batches == [[0, 1], [2, 3], [4, 5]]
    assert stats.max_in_flight >= 4  # a batch started before the one before had finished
    assert stats.finish_busy_s == pytest.approx(3.0, abs=0.5)
    spans = sorted((r["details"]["start"], r["details"]["end"]) for r in records)
    # two workers at once: some job started before the one before it had ended (an order of
    # events, not a speed: spawning the workers takes a second or more on a busy machine)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_a_dead_worker_costs_only_its_own_window(tmp_path):
    pool = CpuPool(2)
    try:
        jobs = {0: SleepJob(0.3), 1: DieJob(), 2: SleepJob(0.3), 3: SleepJob()}
        executor, records, _ = executor_over(jobs, pool, tmp_path, batch=4)
        stats = executor.run(Windows.make(4), size_of=lambda item: item.size)
    finally:
        pool.close()
    status = {r["window_index"]: (r["status"], r["error"]) for r in records}
    assert status[1][0] == "failed" and "worker process" in status[1][1]
    assert all(status[i] == ("ok", None) for i in (0, 2, 3))  # sent again to new workers
    assert stats.worker_restarts >= 1
    assert not list(tmp_path.glob("*.partial"))


def test_an_interrupt_stops_the_workers_and_removes_every_staging(tmp_path):
    pool = CpuPool(2)  # room for two batches in flight
    jobs = {i: SleepJob(30) for i in range(4)}
    executor, records, _ = executor_over(jobs, pool, tmp_path, batch=2, interrupt_at_batch=1)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        executor.run(Windows.make(4), size_of=lambda item: item.size)
    assert records == [] and not list(tmp_path.glob("*.partial"))
    assert pool._pool is None  # killed, not waited for 30 s
    assert time.perf_counter() - start < 20


def test_windows_of_one_shape_are_batched_together_in_order():
    small, large = Windows.make(3, (4, 4)), Windows.make(2, (8, 8))
    mixed = [small[0], large[0], small[1], large[1], small[2]]
    assert [w.items[0].size for w in group_by_shape(mixed, lambda i: i.size)] == \
        [(4, 4)] * 3 + [(8, 8)] * 2


# ---- the loader ----------------------------------------------------------------------------------

def test_loader_prepares_ahead_in_order_and_never_further_than_asked():
    windows = Windows.make(8)
    prepared, lock = [], threading.Lock()

    def prepare(window):
        with lock:
            prepared.append(window.index)
        return np.zeros(10, np.uint8)

    loader = FrameLoader(prepare, windows, ahead=2, size_of=lambda a: a.nbytes)
    try:
        deadline = time.monotonic() + 5
        while len(prepared) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert prepared == [0, 1]  # two ahead, then it waits
        assert loader.nbytes() == 20
        for window in windows:
            assert loader.take(window).shape == (10,)
        assert prepared == list(range(8))  # each window prepared once
    finally:
        loader.stop()


def test_loader_errors_surface_where_the_window_is_taken_and_order_may_be_left():
    windows = Windows.make(4)

    def prepare(window):
        if window.index == 1:
            raise OSError("unreadable frame")
        return window.index

    loader = FrameLoader(prepare, windows, ahead=1)
    try:
        assert loader.take(windows[0]) == 0
        with pytest.raises(OSError, match="unreadable"):
            loader.take(windows[1])
        assert loader.take(windows[3]) == 3  # out of order: prepared by the caller
        assert loader.take(windows[2]) == 2
    finally:
        loader.stop()


# ---- memory --------------------------------------------------------------------------------------

def test_the_governor_leaves_room_for_what_waits_between_stages():
    governor = MemoryGovernor(budget_mb=1000, headroom=1.0)
    governor.observe(BatchObservation(windows=1, held_mb=200, peak_mb=300))
    assert governor.windows_per_batch() == 8
    governor.queued_mb = 400
    assert governor.windows_per_batch() == 4
    assert governor.to_json()["queued_mb"] == 400


def test_array_bytes_counts_nested_arrays():
    @dataclass
    class Record:
        a: np.ndarray
        b: list

    record = Record(np.zeros((4, 4), np.float32), [np.zeros(3, np.uint8), {"c": np.zeros(2)}])
    assert array_bytes(record) == 64 + 3 + 16


# ---- whole runs: pipelined writes what serial writes ---------------------------------------------

def run_both(tmp_path: Path, max_frames: int = 12, **options) -> tuple[Path, Path]:
    outs = []
    for workers in (0, 2):
        out = tmp_path / f"workers{workers}"
        summary = run(PipelineConfig(input_dir=IMAGES, output_dir=out, max_frames=max_frames,
                                     window_size=4, window_stride=4, show_progress=False,
                                     cpu_workers=workers, **options))
        assert summary.success
        outs.append(out)
    return outs[0], outs[1]


def assert_same_windows(serial: Path, pipelined: Path, atol: float) -> None:
    windows = list(iter_windows(serial))
    assert windows
    for window in windows:
        a, b = read_window_info(serial / window.path), read_window_info(pipelined / window.path)
        assert (a["status"], a["registered_frames"], a["num_points3D"]) == \
            (b["status"], b["registered_frames"], b["num_points3D"])
        poses_a, poses_b = (read_window_poses(serial / window.path),
                            read_window_poses(pipelined / window.path))
        for name, pose in poses_a.items():
            np.testing.assert_allclose(poses_b[name], pose, atol=atol)


@pytest.mark.slow
def test_pipelined_classical_windows_equal_serial(tmp_path):
    serial, pipelined = run_both(tmp_path, reconstructor="colmap", chunk_frames=0)
    assert_same_windows(serial, pipelined, atol=1e-9)
    throughput = read_json(pipelined / "run.json")["throughput"]
    assert throughput["cpu_workers"] == 2 and throughput["finish_busy_s"] > 0


@pytest.mark.slow
def test_pipelined_network_windows_equal_serial(tmp_path, tiny_vggt_checkpoint):
    serial, pipelined = run_both(tmp_path, reconstructor="vggt", model=str(tiny_vggt_checkpoint),
                                 max_query_pts=64, query_frame_num=2, min_points=0,
                                 min_frame_observations=0, process_res=112)
    assert_same_windows(serial, pipelined, atol=0)
    t = read_json(pipelined / "run.json")["throughput"]
    assert t["cpu_workers"] == 2 and t["finish_busy_s"] > 0 and t["main_busy_s"] > 0
    assert read_json(serial / "run.json")["throughput"]["cpu_workers"] == 0


@pytest.mark.slow
def test_pipelined_da3_windows_equal_serial(tmp_path, tiny_da3_checkpoint):
    serial, pipelined = run_both(tmp_path, max_frames=8, reconstructor="da3",
                                 model=str(tiny_da3_checkpoint),
                                 min_points=0, min_frame_observations=0,
                                 export_format="colmap-mini_npz")
    assert_same_windows(serial, pipelined, atol=0)
    for window in iter_windows(pipelined):
        info = read_window_info(pipelined / window.path)
        if info["status"] == "ok":
            assert (pipelined / window.path / "exports" / "mini.npz").is_file()
            assert "matching" in info["stages"]  # tracks matched in the worker


def read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())
