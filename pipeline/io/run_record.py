"""``run.json``: a run's record (configuration, versions, device, each window's status), kept
current while the run works and merged across the processes of a multi-process run."""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import PipelineError
from ..core.failures import DigestEntry, calibration_entry, digest_json, failure_digest
from ..core.results import STATUS_FAILED, STATUS_OK
from ..infra.files import write_json
from .output import RUN_MANIFEST

logger = logging.getLogger(__name__)

def now() -> str:
    """The time now (UTC, ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


_MANIFEST_KEYS = ("window_index", "path", "status", "error", "start_frame", "num_frames",
                  "num_registered", "num_points3D", "mean_reprojection_error", "timings", "memory")


class RunManifest:
    """``run.json``: configuration, versions, device and each window's status, kept current.

    In a multi-process run, process 0 writes ``run.json`` (folding in what the others have
    recorded so far) and each other process its own ``.run.rank<N>.json``, merged at the end.
    """

    def __init__(self, config: Any, frames: Sequence[Any], windows: Sequence[Any],
                 reconstructor: Any, group: Any) -> None:
        """Start the record of a run of ``config`` (a
        :class:`pipeline.runner.config.PipelineConfig`)
        over ``frames`` and ``windows`` by ``reconstructor``, in process ``group`` (see
        :class:`pipeline.exec.distributed.ProcessGroup`)."""
        out = Path(config.output_dir)
        self.group = group
        self.out = out
        self.path = out / RUN_MANIFEST if group.is_main else self._part(group.rank)
        self.records: dict[int, dict[str, Any]] = {}
        self.data: dict[str, Any] = {
            "pipeline_version": __version__, "status": "running", "started_at": now(),
            "finished_at": None, "wall_time": None, "config": config.to_json(),
            "reconstructor": reconstructor.describe(), "versions": package_versions(),
            "device": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "reconstructor": reconstructor.device},
            "process": {"pid": os.getpid(), "host": platform.node()},
            "frames": {"count": len(frames), "first": frames[0].name, "last": frames[-1].name},
            "plan": None, "num_windows": len(windows), "summary": {}, "error": None,
            "memory": None, "profile": None, "windows": [],
        }
        if group.world_size > 1:
            self.data["processes"] = []

    def add(self, record: dict[str, Any], *, skipped: bool = False) -> None:
        entry = {k: record.get(k) for k in _MANIFEST_KEYS}
        entry["skipped"] = skipped
        self.records[record["window_index"]] = entry

    def _part(self, rank: int) -> Path:
        """Where process ``rank`` (not 0) keeps its records during a multi-process run."""
        return self.out / f".run.rank{rank}.json"

    def _parts(self) -> list[dict[str, Any]]:
        """The other processes' records so far (process 0 of a multi-process run only)."""
        if not self.group.is_main or self.group.world_size == 1:
            return []
        parts = []
        for rank in range(1, self.group.world_size):
            try:
                parts.append(json.loads(self._part(rank).read_text()))
            except (OSError, ValueError):
                continue
        return parts

    def write(self, status: str = "running", wall_time: float | None = None) -> None:
        records = dict(self.records)
        parts = self._parts()
        for part in parts:
            records.update({w["window_index"]: w for w in part["windows"]})
        windows = [records[i] for i in sorted(records)]
        self.data.update(status=status, windows=windows, summary={
            "ok": sum(w["status"] == STATUS_OK for w in windows),
            "failed": sum(w["status"] == STATUS_FAILED for w in windows),
            "skipped": sum(w["skipped"] for w in windows),
            "pending": self.data["num_windows"] - len(windows)})
        entries = failure_digest(windows)
        note = calibration_entry(self.data.get("calibration"), windows)
        self.data["digest"] = digest_json(entries + ([note] if note else []))
        if "processes" in self.data:
            mine = list(self.records.values())
            self.data["processes"] = [self._process_entry(self.data, mine, self.group.rank)] + [
                self._process_entry(part, part["windows"], rank)
                for rank, part in enumerate(parts, start=1)]
        if status != "running":
            self.data.update(finished_at=now(), wall_time=wall_time)

        write_json(self.path, self.data)

    @staticmethod
    def _process_entry(data: dict[str, Any], windows: list[dict[str, Any]],
                       rank: int) -> dict[str, Any]:
        return {"rank": rank, "status": data["status"], "device": data["device"]["reconstructor"],
                "memory": data["memory"], "profile": data["profile"],
                "windows": sorted(w["window_index"] for w in windows if not w["skipped"])}

    def finish(self, status: str, wall_time: float, error: str | None = None) -> None:
        """Write the final state; process 0 waits for the others and merges their records.
        A manifest that cannot be written (a full disk) is logged, never raised: the run's own
        outcome is what the caller reports."""
        self.data["error"] = error
        try:
            self._finish(status, wall_time)
        except (PipelineError, OSError) as exc:
            logger.error("cannot record the end of the run in %s: %s", self.path, exc)

    def record_merge(self, outcome: dict[str, Any]) -> None:
        """Record how ``--merge`` ended, after the windows: ``{"status": "ok", "segments": N}``,
        ``{"status": "failed", "error": ...}`` or ``{"status": "interrupted"}`` (then the run's
        status too). Logged, never raised, when it cannot be written."""
        self.data["merge"] = outcome
        if outcome.get("status") == "interrupted":
            self.data["status"] = "interrupted"
        try:
            write_json(self.path, self.data)
        except (PipelineError, OSError) as exc:
            logger.error("cannot record the merge in %s: %s", self.path, exc)

    def _finish(self, status: str, wall_time: float) -> None:
        self.write(status, wall_time)
        if self.group.world_size == 1 or status != "finished":
            return  # an interrupted process does not wait for the others
        self.group.barrier()
        if self.group.is_main:
            parts = self._parts()
            if any(p["status"] != "finished" for p in parts):
                status = "interrupted"
            self.write(status, wall_time)
            for rank in range(1, self.group.world_size):
                self._part(rank).unlink(missing_ok=True)


def package_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that shape the results (without importing them)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "pipeline": __version__}
    for name in ("numpy", "pycolmap", "torch", "pillow", "av", "tqdm"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def add_to_digest(output_dir: Path, entries: Sequence[DigestEntry],
                  record: str = RUN_MANIFEST) -> None:
    """Add ``entries`` to the digest kept in ``output_dir/record`` (``run.json``, or a run over
    many's ``dataset.json``) after the run wrote it: what is learnt only once the run is over
    (nodes of a cluster lost). A record that cannot be read or written is logged, never
    raised."""
    path = Path(output_dir) / record
    try:
        data = json.loads(path.read_text())
        data["digest"] = list(data.get("digest") or []) + digest_json(entries)
        write_json(path, data)
    except (OSError, ValueError, PipelineError) as exc:
        logger.error("cannot add to the digest in %s: %s", path, exc)

