"""``--backend URL``: the usual command, run by a started service instead of here.

The job is submitted (``POST /jobs``), followed through its event stream with the same progress
bar, and ends with the same summary, digest and exit status as a local run; Ctrl-C cancels it
(the service stops it at the next window boundary).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from ..io.job_table import FINAL
from .parsers import EXIT_INTERRUPTED, EXIT_USAGE, one_line

logger = logging.getLogger(__name__)

RECONNECT_S = 30.0
"""How long the client keeps trying to reach a service whose event stream broke."""


class ServiceError(Exception):
    """The service refused a request or cannot be reached (the message says why)."""


class Client:
    """Requests to the service at ``url`` (with ``token`` when given)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url.rstrip("/"), token

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        """The JSON answer to ``method path``.

        Raises:
            ServiceError: an error status (with the service's ``detail``) or no connection.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=self._headers(data is not None))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"{_detail(exc)} (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(f"cannot reach the service at {self.url}: {reason}") from None

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's server-sent events, as ``(event, data)``, until the stream ends.

        Raises:
            ServiceError: as :meth:`request`.
        """
        request = urllib.request.Request(f"{self.url}/jobs/{job_id}/events",
                                         headers=self._headers(False))
        try:
            response = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"{_detail(exc)} (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceError(f"cannot reach the service at {self.url}: "
                               f"{getattr(exc, 'reason', exc)}") from None
        with response:
            event, data = "message", []
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield event, json.loads("\n".join(data))
                    event, data = "message", []

    def _headers(self, json_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if json_body:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(exc.read()).get("detail")
    except (ValueError, AttributeError, OSError):
        detail = None
    if isinstance(detail, list):  # FastAPI's own validation errors
        detail = "; ".join(str(d.get("msg", d)) for d in detail)
    return one_line(detail or exc.reason)


def follow(client: Client, job_id: str, *, quiet: bool) -> dict[str, Any]:
    """Follow the job to its end with a progress bar; the final job. The stream is opened
    again when it breaks (for up to :data:`RECONNECT_S`)."""
    with tqdm(desc="windows", unit="window", disable=True if quiet else None) as bar:
        broken_since = None
        while True:
            try:
                for event, data in client.events(job_id):
                    broken_since = None
                    if event == "end":
                        return data
                    _show(bar, data)
            except ServiceError:
                broken_since = broken_since or time.monotonic()
                if time.monotonic() - broken_since > RECONNECT_S:
                    raise
            job = client.request("GET", f"/jobs/{job_id}")
            if job["state"] in FINAL:
                return job
            time.sleep(0.5)


def _show(bar: tqdm, data: dict[str, Any]) -> None:
    if data.get("total") is not None and bar.total != data["total"]:
        bar.reset(total=data["total"])
    bar.n = data.get("done") or 0
    bar.set_postfix_str(data.get("stage") or data["state"], refresh=False)
    bar.refresh()


def run_remote(url: str, token: str | None, fields: dict[str, Any], *, quiet: bool) -> int:
    """Submit the job, follow it, print its summary; the exit status a local run would have."""
    client = Client(url, token)
    try:
        job_id = client.request("POST", "/jobs", fields)["id"]
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logger.info("job %s queued on %s (its page: %s/#/job/%s)", job_id, url, client.url, job_id)
    try:
        try:
            job = follow(client, job_id, quiet=quiet)
        except KeyboardInterrupt:
            print("cancelling the job at the next window boundary ...", file=sys.stderr)
            client.request("POST", f"/jobs/{job_id}/cancel")
            job = follow(client, job_id, quiet=True)
    except ServiceError as exc:
        print(f"error: job {job_id}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _report(job)


def _report(job: dict[str, Any]) -> int:
    """Print the end of a job as a local run prints its end; its exit status."""
    result = job.get("result") or {}
    if job["state"] in ("cancelled", "interrupted"):
        print(f"{job['state']}; submit the same command again to finish the remaining windows",
              file=sys.stderr)
        return job.get("exit_code") or EXIT_INTERRUPTED
    if job.get("error"):
        print(f"error: {one_line(job['error'])}", file=sys.stderr)
    if result.get("line"):
        print(result["line"])
        for line in result.get("digest", []):
            print(f"  {line}")
    code = job.get("exit_code")
    return EXIT_USAGE if code is None else code
