"""A real service for the tests: ``vae_data_pipeline_batch.py serve`` started as a process on
a loopback port the system picks, and plain HTTP requests to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGES, ROOT

START_TIMEOUT_S = 90.0


class Served:
    """One service process; ``request`` returns ``(status, JSON body or bytes)``."""

    def __init__(self, state: Path, args: list[str], token: str | None = None) -> None:
        self.state, self.token = state, token
        record = state / "service.json"
        record.unlink(missing_ok=True)
        self.log = (state.parent / f"{state.name}.log").open("ab")
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), "serve", "--port", "0",
             "--state-dir", str(state), *args, *(["--token", token] if token else [])],
            stdout=self.log, stderr=self.log, env=env)
        try:
            self._wait_started(record)
        except BaseException:
            self.kill()
            raise

    def _wait_started(self, record: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n"
                                   + self.log_text())
            try:
                found = json.loads(record.read_text())
            except (OSError, ValueError):
                found = None
            if found and found["pid"] == self.process.pid:
                self.url = found["url"]
                try:
                    if self.request("GET", "/healthz")[0] == 200:
                        return
                except urllib.error.URLError:
                    pass
            time.sleep(0.2)
        raise RuntimeError("the service did not start:\n" + self.log_text())

    def log_text(self) -> str:
        self.log.flush()
        return (self.state.parent / f"{self.state.name}.log").read_text(errors="replace")

    def request(self, method: str, path: str, body: Any = None, *,
                headers: dict[str, str] | None = None, raw: bytes | None = None,
                token: str | None | bool = True) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        token = self.token if token is True else token
        if token:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, content, kind = response.status, response.read(), \
                    response.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            status, content, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
        return status, json.loads(content) if "json" in kind else content

    def submit(self, **fields: Any) -> str:
        status, body = self.request("POST", "/jobs", fields)
        assert status == 201, body
        return body["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/jobs/{job_id}")
        assert status == 200, body
        return body

    def wait(self, job_id: str, until=lambda job: job["state"] in (
            "finished", "failed", "cancelled", "interrupted"), timeout: float = 240.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not get there: {self.job(job_id)}\n"
                             + self.log_text()[-3000:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.log.close()


def read_events(url: str, job_id: str, token: str | None = None) -> list[tuple[str, dict]]:
    """The job's event stream, read to its end: ``[(event, data), ...]``."""
    events, event = [], None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{url}/jobs/{job_id}/events", headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.append((event, json.loads(line[5:])))
    return events


@dataclass
class FinishedJob:
    """A service and one job it ran to the end."""

    served: Served
    job_id: str
    root: Path
    """The service's allowed folder (with the testdata); the job wrote ``root/served``."""
    events: list[tuple[str, dict]]
    """The job's event stream, as it came."""
    options: dict[str, Any]


@pytest.fixture(scope="session")
def colmap_job(tmp_path_factory):
    """A service running colmap and the job it finished (12 frames, merged), shared by the
    tests that only read it (one run instead of one per test)."""
    root = tmp_path_factory.mktemp("colmap_service")
    served = Served(root / "state", ["--allow-root", str(root), "--allow-root", str(IMAGES),
                                     "--reconstructor", "colmap"])
    try:
        options = {"input_dir": str(IMAGES), "output_dir": str(root / "served"),
                   "max_frames": 12, "merge": True}
        job_id = served.submit(**options)
        yield FinishedJob(served, job_id, root, read_events(served.url, job_id), options)
    finally:
        served.kill()


@pytest.fixture
def serve(tmp_path):
    """Start services (``serve(*args, state=..., token=...)``); all are stopped at the end."""
    started: list[Served] = []

    def start(*args: str, state: Path | None = None, token: str | None = None) -> Served:
        served = Served(state or tmp_path / "state", list(args), token)
        started.append(served)
        return served

    yield start
    for served in started:
        served.kill()
