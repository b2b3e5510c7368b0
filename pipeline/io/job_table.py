"""The service's job table: every job it was given, kept in SQLite so that it survives a
restart.

A job is ``queued`` until its device's worker takes it (``running``), then ``finished`` (its run
ended; ``exit_code`` says whether every window succeeded, as the command line's status does),
``failed`` (it could not run: bad input found late, a full disk), ``cancelled`` (asked to stop) or
``interrupted`` (the service stopped under it). On start the service queues again the jobs that
were ``running`` or ``interrupted`` when it last stopped; their run resumes from what is written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .run_record import now

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "finished", "failed", "cancelled", "interrupted")
STATES = (QUEUED, RUNNING, FINISHED, FAILED, CANCELLED, INTERRUPTED)
"""A job's states; the last four are final (``interrupted`` until the service starts again)."""
FINAL = (FINISHED, FAILED, CANCELLED, INTERRUPTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    number INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    worker TEXT NOT NULL,
    state TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    stage TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    error TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
)
"""
_ADDED_COLUMNS = {"cancel_requested": "INTEGER NOT NULL DEFAULT 0"}
"""Columns a table made by an earlier version lacks (added when it is opened)."""


@dataclass(kw_only=True)
class Job:
    """One row of the job table."""

    id: str
    """Its name in the API (``/jobs/{id}``)."""
    worker: str
    """The device whose worker runs it (``cpu``, ``cuda:0``)."""
    state: str
    """One of :data:`STATES`."""
    options: dict[str, Any]
    """Its run options: :class:`pipeline.runner.config.PipelineConfig` fields as given (the
    service's defaults fill the rest)."""
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    done: int = 0
    """Windows finished (ok or failed) in the current attempt."""
    failed: int = 0
    """Of those, windows that failed."""
    total: int | None = None
    """Windows to do in the current attempt, once planned."""
    stage: str | None = None
    """The work under way, in a few words."""
    attempts: int = 0
    """Times a worker started it (more than one: resumed after a restart)."""
    exit_code: int | None = None
    """The command line's exit status for the same run: 0 every window ok, 1 some failed (or
    the disk filled up), 2 bad input, 130 cancelled or interrupted."""
    error: str | None = None
    """Why it failed or stopped, on one line."""
    result: dict[str, Any] | None = field(default=None)
    """When it ended: ``line`` (the summary line), ``digest`` (its lines), ``success``,
    ``windows`` (ok/failed/skipped counts), ``peak_memory_mb``, ``wall_time``."""
    cancel_requested: bool = False
    """A cancel was asked for while it ran (kept across a restart: it is not run again)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = {k: row[k] for k in row.keys() if k != "number"}
        values["options"] = json.loads(values["options"])
        values["result"] = json.loads(values["result"]) if values["result"] else None
        values["cancel_requested"] = bool(values.get("cancel_requested"))
        return cls(**values)


class JobStore:
    """The job table in ``state_dir/jobs.sqlite3``; safe to use from several threads."""

    def __init__(self, state_dir: Path) -> None:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(state_dir) / "jobs.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        have = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")  # noqa: S608

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, options: dict[str, Any], worker: str) -> Job:
        """A new queued job."""
        job = Job(id=uuid.uuid4().hex[:12], worker=worker, state=QUEUED, options=options,
                  created_at=now())
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, worker, state, options, created_at) VALUES (?,?,?,?,?)",
                (job.id, worker, QUEUED, json.dumps(options), job.created_at))
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row) if row is not None else None

    def jobs(self, limit: int = 200) -> list[Job]:
        """The latest ``limit`` jobs, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY number DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [Job.from_row(r) for r in rows]

    def queued(self, worker: str | None = None) -> int:
        """Jobs waiting (for ``worker``, or for any)."""
        query, args = "SELECT COUNT(*) FROM jobs WHERE state = ?", [QUEUED]
        if worker is not None:
            query, args = query + " AND worker = ?", [*args, worker]
        with self._lock:
            return self._db.execute(query, args).fetchone()[0]

    def workers(self) -> list[str]:
        """The devices that have queued jobs."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT worker FROM jobs WHERE state = ?",
                                    (QUEUED,)).fetchall()
        return [r[0] for r in rows]

    def claim(self, worker: str) -> Job | None:
        """The oldest queued job of ``worker``, now ``running`` (a new attempt), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE state = ? AND worker = ? ORDER BY number LIMIT 1",
                (QUEUED, worker)).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1, done = 0, "
                "failed = 0, total = NULL, stage = NULL WHERE id = ?",
                (RUNNING, now(), row[0]))
        return self.get(row[0])

    def update(self, job_id: str, **values: Any) -> None:
        """Set columns of a job (``result`` as JSON)."""
        if "result" in values and values["result"] is not None:
            values["result"] = json.dumps(values["result"])
        columns = ", ".join(f"{name} = ?" for name in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?",  # noqa: S608 - names
                             (*values.values(), job_id))              # are ours, not a user's

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; whether it was queued."""
        with self._lock:
            changed = self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, exit_code = 130, "
                "error = 'cancelled before it started' WHERE id = ? AND state = ?",
                (CANCELLED, now(), job_id, QUEUED)).rowcount
        return bool(changed)

    def requeue_unfinished(self) -> tuple[list[str], list[str]]:
        """On start: jobs left ``running`` (the service died under them) or ``interrupted``
        (it was stopped) are queued again, their run resuming from what they wrote, except
        those whose cancel was asked for: they are ``cancelled`` now. Returns the ids of both."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, cancel_requested FROM jobs WHERE state IN (?, ?)",
                (RUNNING, INTERRUPTED)).fetchall()
            self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, exit_code = 130, stage = NULL, "
                "error = 'cancelled (the service stopped before the run reached a window "
                "boundary)' WHERE state IN (?, ?) AND cancel_requested",
                (CANCELLED, now(), RUNNING, INTERRUPTED))
            self._db.execute("UPDATE jobs SET state = ?, stage = 'resuming' WHERE state IN (?, ?)",
                             (QUEUED, RUNNING, INTERRUPTED))
        return ([r[0] for r in rows if not r[1]], [r[0] for r in rows if r[1]])

    def request_cancel(self, job_id: str) -> bool:
        """Record that a running job is to be cancelled; whether it was running."""
        with self._lock:
            changed = self._db.execute(
                "UPDATE jobs SET cancel_requested = 1, stage = 'cancelling' "
                "WHERE id = ? AND state = ?", (job_id, RUNNING)).rowcount
        return bool(changed)
