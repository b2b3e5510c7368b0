"""Running planned windows: batch sizes (the memory governor), the worker pool, the
pipelined executor, each finished window recorded, the progress bar.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..core.errors import DiskFullError
from ..core.failures import cause_key, window_label
from ..core.windows import Batch
from ..exec.distributed import ProcessGroup
from ..exec.executor import (
    CpuPool,
    ExecutorStats,
    InFlight,
    WindowExecutor,
    cores,
    default_cpu_workers,
)
from ..infra.memory import MemoryGovernor, StageTable, budget_mb
from ..io.frames import Frame
from ..io.run_record import RunManifest
from ..reconstructors import STATUS_OK, Reconstructor, WindowResult, colmap_log_level
from .config import PipelineConfig
from .control import RunControl, RunStopped
from .plan import SequencePlan
from .window_batch import finish_window, start_window_batch

logger = logging.getLogger(__name__)


MAX_AUTO_BATCH = 8
"""Windows per batch when no memory governor sizes them (colmap: at most one per core)."""


def make_governor(config: PipelineConfig, reconstructor: Reconstructor,
                  group: ProcessGroup) -> MemoryGovernor | None:
    """The memory governor of an automatic batch size for a network reconstructor, else None."""
    device = reconstructor.memory_device()
    if config.window_batch_size is not None or device is None:
        return None
    budget, source = budget_mb(device, config.max_memory_gb, processes=group.local_world_size)
    logger.info("memory budget %.0f MiB (%s); the first batch is one window, measured", budget,
                source)
    return MemoryGovernor(budget_mb=budget, budget_source=source)


def _batch_size(config: PipelineConfig, governor: MemoryGovernor | None,
                group: ProcessGroup) -> int:
    """Windows for the next batch: as asked, from the governor, under Ray
    :data:`MAX_AUTO_BATCH`, or colmap's core count."""
    if config.window_batch_size is not None:
        return config.window_batch_size
    if governor is not None:
        return governor.windows_per_batch()
    if config.engine == "ray":
        return MAX_AUTO_BATCH
    return max(1, min(MAX_AUTO_BATCH, cores() // group.local_world_size))


def process_plans(plans: list[SequencePlan], config: PipelineConfig,
                  reconstructor: Reconstructor, pool: CpuPool, governor: MemoryGovernor | None,
                  profile: StageTable, bar: tqdm,
                  on_window: Callable[[SequencePlan, dict[str, Any]], None] | None = None,
                  control: RunControl | None = None) -> ExecutorStats:
    """Every window still to do of ``plans`` through the executor (pipelined, or serial with
    ``--cpu-workers 0``), batches sized just before they start; windows of different sequences
    share batches. Each finished window goes to its sequence's ``run.json`` (and
    ``on_window``, and ``control``, whose stop takes effect here, between windows)."""
    owner = {plan.name: plan for plan in plans}
    causes_seen: set[str] = set()
    many = any(plan.name for plan in plans)  # a run over many names its sequences

    def start(batch: Batch[Frame], pool: CpuPool) -> list[InFlight]:
        if control is not None:
            control.check()
        outs = [Path(owner[w.sequence].config.output_dir) for w in batch.windows]
        flights = start_window_batch(batch.windows, batch.index, config, reconstructor, pool,
                                     outs=outs)
        _observe(reconstructor, governor, profile)
        report = reconstructor.last_report
        if report is not None and report.records:
            for name in dict.fromkeys(w.sequence for w in batch.windows):
                owner[name].manifest.data.update(report.records)
        return flights

    def finish(flight: InFlight, result: WindowResult) -> tuple[SequencePlan, dict[str, Any]]:
        plan = owner[flight.window.sequence]
        return plan, finish_window(flight, result, plan.config, reconstructor)

    def on_record(finished: tuple[SequencePlan, dict[str, Any]]) -> None:
        plan, record = finished
        for stage, span in (record.get("stages") or {}).items():
            profile.add(stage, span)
        plan.manifest.add(record)
        log_failure(dict(record, sequence=plan.name), causes_seen)
        if governor is not None:
            plan.manifest.data["memory"] = governor.to_json()
        plan.manifest.write()
        if on_window is not None:
            on_window(plan, record)
        bar.update(1)
        if control is not None:
            control.window(dict(record, sequence=plan.name) if many else record)
            control.check()

    device = reconstructor.memory_device()
    executor = WindowExecutor(
        reconstructor=reconstructor, pool=pool, start=start, finish=finish, on_record=on_record,
        batch_size=lambda: _batch_size(config, governor, plans[0].manifest.group),
        governor=governor, count_host_memory=device is not None and device.type == "cpu")
    return executor.run([w for plan in plans for w in plan.todo], size_of=lambda f: f.size)


@contextlib.contextmanager
def cpu_pool(config: PipelineConfig, reconstructor: Reconstructor, group: ProcessGroup,
             cluster: Any = None) -> Iterator[CpuPool]:
    """The run's worker pool (closed at the end; stopped by the executor when interrupted):
    Ray tasks under ``--engine ray`` (``cluster``: the
    :class:`pipeline.runner.ray_engine.RayConnection`)."""
    if cluster is not None:
        from .ray_engine import RayPool

        yield RayPool(cluster.ray)
        return
    pool = CpuPool(cpu_workers(config, reconstructor, group),
                   colmap_log_level=colmap_log_level(config))
    try:
        yield pool
    finally:
        pool.close()


def cpu_workers(config: PipelineConfig, reconstructor: Reconstructor,
                group: ProcessGroup) -> int:
    """``--cpu-workers``, or one per core left free (see
    :func:`pipeline.exec.executor.default_cpu_workers`)."""
    if config.cpu_workers is not None:
        return config.cpu_workers
    return default_cpu_workers(reconstructor.memory_device() is not None,
                               group.local_world_size)


def _observe(reconstructor: Reconstructor, governor: MemoryGovernor | None,
             profile: StageTable) -> None:
    """Feed what the batch measured on its start to the governor and the stage table."""
    report = reconstructor.last_report
    if report is not None:
        for stage, span in report.stages:
            profile.add(stage, span)
        if governor is not None:
            for observation in report.observations:
                governor.observe(observation)
            if report.out_of_memory_at is not None:
                governor.observe_out_of_memory(report.out_of_memory_at)


def record_memory(manifest: RunManifest, governor: MemoryGovernor | None,
                  profile: StageTable) -> None:
    if governor is not None:
        manifest.data["memory"] = governor.to_json()
    manifest.data["profile"] = profile.rows


def log_failure(record: dict[str, Any], causes_seen: set[str]) -> None:
    """Warn of the first failed window of each cause; the others go to the digest at the end
    (and to the debug log)."""
    if record["status"] == STATUS_OK:
        return
    key, window = cause_key(record["error"]), window_label(record)
    if key in causes_seen:
        logger.debug("window %s failed: %s", window, record["error"])
        return
    causes_seen.add(key)
    logger.warning("window %s failed: %s (windows failing alike are counted at the end)",
                   window, record["error"])


@contextlib.contextmanager
def progress_bar(config: PipelineConfig, total: int) -> Iterator[tqdm]:
    """The windows bar (off with ``-q`` or when stderr is not a terminal); its postfix shows
    the stage under way inside a batch, and its clock keeps moving through long stages (the
    feature store of a long sequence takes minutes before the first window): a thread
    redraws it every second."""
    with tqdm(total=total, desc="windows", unit="window",
              disable=None if config.show_progress else True) as bar:
        stop = threading.Event()
        clock = threading.Thread(target=keep_redrawing, args=(bar, stop), daemon=True,
                                 name="progress-clock")
        if not bar.disable:
            clock.start()
        try:
            yield bar
        finally:
            stop.set()
            if clock.is_alive():
                clock.join()


def keep_redrawing(bar: Any, stop: threading.Event, interval: float = 1.0) -> None:
    """Redraw ``bar`` every ``interval`` seconds until ``stop`` is set (tqdm redraws only
    when it is updated, so its elapsed time would stand still between windows)."""
    while not stop.wait(interval):
        bar.refresh()


def process_sequences(plans: list[SequencePlan], config: PipelineConfig,
                      reconstructor: Reconstructor, pool: CpuPool,
                      governor: MemoryGovernor | None, profile: StageTable,
                      on_window: Callable[[SequencePlan, dict[str, Any]], None] | None = None,
                      control: RunControl | None = None) -> dict[str, Any]:
    """Every window to do of ``plans`` (one sequence, or the sequences of a run over many)
    under one progress bar: in shared batches, or sequence after sequence for a reconstructor
    that plans each sequence (colmap). Returns how busy the work kept the device and the CPU
    (``run.json`` / ``dataset.json`` -> ``throughput``); ``control`` hears of the progress
    and can stop the run between windows."""
    total = sum(len(p.todo) for p in plans)
    if control is not None:
        control.total(total)
        control.check()
    with progress_bar(config, total) as bar:
        reconstructor.progress = _stage_reporter(bar, control)
        work_start = time.perf_counter()
        if reconstructor.plans_sequences:
            stats, planned = ExecutorStats(cpu_workers=pool.workers), plans[-1] if plans else None
            for plan in plans:  # planned again right before its windows run (if another was)
                if plan is not planned:
                    reconstructor.plan_sequence(plan.frames, plan.windows,
                                                Path(plan.config.output_dir))
                    planned = plan
                stats.add(process_plans([plan], config, reconstructor, pool, governor, profile,
                                        bar, on_window, control))
        else:
            stats = process_plans(plans, config, reconstructor, pool, governor, profile, bar,
                                  on_window, control)
        return {**profile.throughput(time.perf_counter() - work_start, total,
                                     reconstructor.device_stages), **stats.to_json()}


def _stage_reporter(bar: tqdm, control: RunControl | None) -> Callable[[str], None]:
    """What the reconstructor calls with the stage under way: the bar's postfix (and the
    run's control)."""
    if control is None:
        return bar.set_postfix_str

    def report(text: str) -> None:
        bar.set_postfix_str(text)
        control.stage(text)
    return report


def new_profile(reconstructor: Reconstructor) -> StageTable:
    """The run's stage table, starting with the model's load when there was one."""
    profile = StageTable()
    if reconstructor.load_stage:
        profile.add("load", reconstructor.load_stage)
    return profile


@dataclass
class Outcome:
    """How the work of a run ended, for its records."""

    status: str = "interrupted"
    """``finished``, ``failed`` (the disk filled up, a file could not be written, a defect),
    ``interrupted`` or ``cancelled``
    (:class:`pipeline.runner.control.RunStopped` says which)."""
    error: str | None = None
    """Why it failed."""


@contextlib.contextmanager
def recorded(plans: Sequence[SequencePlan], governor: MemoryGovernor | None,
             profile: StageTable, start: float,
             then: Callable[[Outcome], None] | None = None) -> Iterator[Outcome]:
    """The run's work inside: however it ends (finished, a full disk, which is re-raised, or
    interrupted), each plan's final ``run.json`` is written, then ``then(outcome)`` runs (a
    run over many writes its index and ``dataset.json``)."""
    outcome = Outcome()
    try:
        yield outcome
        outcome.status = "finished"
    except DiskFullError as exc:
        outcome.status, outcome.error = "failed", str(exc)
        raise
    except RunStopped as exc:
        outcome.status = exc.status
        raise
    except Exception as exc:  # a file that cannot be written, or a defect: said, not hidden
        outcome.status, outcome.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        for plan in plans:
            record_memory(plan.manifest, governor, profile)
            plan.manifest.finish(outcome.status, wall_time=time.perf_counter() - start,
                                 error=outcome.error)
        if then is not None:
            then(outcome)


def merge_recorded(plan: SequencePlan, options: Any) -> dict[str, Any]:
    """``--merge`` of the plan's output folder (:func:`pipeline.post.merge.merge_output` with
    ``options``), its outcome recorded in the plan's ``run.json`` under ``merge``; returns the
    merge's report and raises what it raises."""
    from ..post.merge import merge_output

    try:
        report = merge_output(Path(plan.config.output_dir), options)
    except Exception as exc:
        plan.manifest.record_merge({"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    except BaseException:  # Ctrl-C or SIGTERM: merged/ is as it was
        plan.manifest.record_merge({"status": "interrupted"})
        raise
    plan.manifest.record_merge({"status": "ok", "segments": len(report["segments"])})
    return report
