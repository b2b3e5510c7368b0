"""The service's jobs: submitted (checked like the command line's options, their paths under
the allowed roots), kept in the job table, run by one warm :class:`~.worker.Worker` per
device, cancelled, reported."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..infra.lock import OutputBusyError, OutputLock
from ..infra.memory import current_mb
from ..io.frames import Frame, list_image_files
from ..io.job_table import QUEUED, RUNNING, Job, JobStore
from ..io.video import check_input_video
from ..runner.checks import check_config
from ..runner.config import PipelineConfig
from ..runner.inputs import sequence_sources
from .options import ServiceOptions
from .roots import AllowedRoots, ForbiddenPathError
from .worker import Worker, device_key

logger = logging.getLogger(__name__)

PATH_FIELDS = ("input_dir", "input_video", "input_root", "input_list", "output_dir")
"""The run options that name paths (``model`` too, when it names a file or folder)."""

JobParser = Callable[[dict[str, Any]], tuple[PipelineConfig, dict[str, Any]]]
"""A job's options (field names -> JSON values) -> its run configuration and every option's
value as JSON (the service's defaults applied); raises ``InputError`` for a bad value with the
command line's message."""


class JobNotFoundError(InputError):
    """No job of that id (HTTP 404)."""


class Service:
    """The job table, the workers and the checks of a running service.

    Args:
        options: How it serves.
        parse_job: Reads a job's options (built by the command line from its own parser, so
            that a job is checked exactly as the same flags would be).

    Raises:
        InputError: the state folder is used by another service, or a root does not exist.
    """

    def __init__(self, options: ServiceOptions, parse_job: JobParser) -> None:
        self.options, self.parse_job = options, parse_job
        self.roots = AllowedRoots.of(options.allow_roots)
        state = Path(options.state_dir)
        self._lock = OutputLock(state)
        try:
            state.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            self.store = JobStore(state)
        except OutputBusyError as exc:
            raise InputError(f"--state-dir {state}: another service uses it "
                             f"({str(exc).split('(', 1)[-1].split(')')[0]})") from None
        except (OSError, sqlite3.Error) as exc:
            self._lock.release()
            raise InputError(f"--state-dir {state}: cannot keep the job table there "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
        self.workers: dict[str, Worker] = {}
        self._workers_lock = threading.Lock()
        self._wake: dict[str, threading.Event] = {}
        requeued, cancelled = self.store.requeue_unfinished()
        for job_id in requeued:
            logger.info("job %s: queued again (the service stopped while it ran)", job_id)
        for job_id in cancelled:
            logger.info("job %s: cancelled (asked for before the service stopped)", job_id)

    def start(self) -> None:
        """Start the workers of the devices that have queued jobs."""
        for key in self.store.workers():
            self._worker(key)

    def _worker(self, key: str) -> Worker:
        with self._workers_lock:
            worker = self.workers.get(key)
            if worker is None:
                self._wake[key] = threading.Event()
                worker = Worker(key, self.store, self.make_config, self._wake[key],
                                self.options.unload_after_s, check_frames=self.check_frames)
                self.workers[key] = worker
                worker.start()
            return worker

    def make_config(self, options: dict[str, Any]) -> PipelineConfig:
        """A stored job's run configuration, its paths checked again as it starts (a folder
        replaced by a link since it was queued, a service restarted with other roots).

        Raises:
            InputError: a bad option value (the service restarted with other defaults).
            ForbiddenPathError: a path outside the allowed roots now.
        """
        config = self.parse_job(options)[0]
        self.check_paths(config)
        return config

    def check_frames(self, frames: Sequence[Frame]) -> None:
        """Refuse frames that lie outside the allowed roots (a link in an input folder that
        points elsewhere).

        Raises:
            ForbiddenPathError: one does.
        """
        for frame in frames:
            if not self.roots.contains(frame.path):
                raise ForbiddenPathError(
                    f"frame {frame.path} lies outside the folders this service may use (it "
                    f"links to {Path(frame.path).resolve()})")

    def submit(self, fields: dict[str, Any]) -> Job:
        """Check a job's options and queue it.

        Raises:
            InputError: a bad option value (the command line's message).
            ForbiddenPathError: a path outside the allowed roots.
        """
        config, options = self.parse_job(fields)
        if config.use_accelerate:
            raise InputError("--use-accelerate starts processes of its own: a service runs "
                             "its jobs in its own process; start one service per device")
        check_config(config)
        self.check_paths(config)
        key = device_key(config.device)
        job = self.store.add(options, key)
        logger.info("job %s: queued for %s", job.id, key)
        self._worker(key)
        self._wake[key].set()
        return job

    def check_paths(self, config: PipelineConfig) -> None:
        """Every path of the job under an allowed root (the sequences of ``--input-root`` and
        ``--input-list`` too; a checkpoint named by path).

        Raises:
            ForbiddenPathError: one is not.
        """
        for name in PATH_FIELDS:
            value = getattr(config, name)
            if value is not None:
                self.roots.check(value, f"--{name.replace('_', '-')}")
        if _names_a_path(config.model):
            self.roots.check(config.model, "--model")
        _check_inputs_exist(config)
        if config.input_root is not None or config.input_list is not None:
            for source in sequence_sources(config):
                self.roots.check(source.path, f"sequence {source.name}:")

    def get(self, job_id: str) -> Job:
        """Raises: JobNotFoundError."""
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, a running one at its next window boundary.

        Raises:
            JobNotFoundError: no such job.
        """
        job = self.get(job_id)
        if job.state == QUEUED and self.store.cancel_queued(job_id):
            logger.info("job %s: cancelled before it started", job_id)
        elif job.state == RUNNING and self.store.request_cancel(job_id):
            if job.worker in self.workers:
                self.workers[job.worker].cancel(job_id)
            logger.info("job %s: cancelling at the next window boundary", job_id)
        return self.get(job_id)

    def status(self) -> dict[str, Any]:
        """The workers, the model each holds, memory, loads and the queue."""
        workers = [w.status() for w in self.workers.values()]
        loaded = next((w for w in workers if w["model"] is not None), None)
        return {"model": loaded["model"] if loaded else None,
                "device": loaded["device"] if loaded else None,
                "model_loads": sum(w["model_loads"] for w in workers),
                "queue": self.store.queued(),
                "running": [w["job"] for w in workers if w["job"]],
                "workers": workers, "memory": _memory(), "pid": os.getpid()}

    def close(self) -> None:
        """Stop the workers (a running job is recorded ``interrupted`` at its next window
        boundary, or left ``running`` if it does not reach one within the grace; either way it
        is queued again at the next start), then the job table."""
        for worker in self.workers.values():
            worker.shutdown()
        for worker in self.workers.values():
            worker.join(self.options.stop_grace_s)
            if worker.is_alive():
                logger.warning("job %s did not stop within %.0f s; it resumes at the next "
                               "start", worker.job_id, self.options.stop_grace_s)
        self.store.close()
        self._lock.release()


def _check_inputs_exist(config: PipelineConfig) -> None:
    """Refuse a job whose input folder is missing or holds no frames, or whose video is
    missing, now, as the command line would (before it waits in the queue).

    Raises:
        InputError: in the words of :mod:`pipeline.io.frames`.
    """
    if config.input_dir is not None:
        list_image_files(config.input_dir, config.frame_pattern)  # no frames: refused now
    if config.input_video is not None:
        check_input_video(config.input_video)
    if config.input_list is not None and not Path(config.input_list).is_file():
        raise InputError(f"--input-list {config.input_list}: not a file")


def _names_a_path(model: str) -> bool:
    """Whether ``--model`` names a file or folder rather than a hub id."""
    return os.path.isabs(model) or model.startswith(".") or os.path.exists(model)


def _memory() -> dict[str, Any]:
    import torch

    memory: dict[str, Any] = {"rss_mb": round(current_mb(), 1)}
    if torch.cuda.is_available():
        memory["cuda"] = {f"cuda:{i}": {
            "allocated_mb": round(torch.cuda.memory_allocated(i) / 2**20, 1),
            "reserved_mb": round(torch.cuda.memory_reserved(i) / 2**20, 1),
            "total_mb": round(torch.cuda.get_device_properties(i).total_memory / 2**20, 1)}
            for i in range(torch.cuda.device_count())}
    return memory
