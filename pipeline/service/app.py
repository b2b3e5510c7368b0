"""The HTTP API and the web page of the service (FastAPI; JSON; server-sent events).

``POST /jobs`` queues a job (its options as :class:`pipeline.runner.config.PipelineConfig`
fields), ``GET /jobs`` and ``GET /jobs/{id}`` report them, ``GET /jobs/{id}/events`` streams
their progress, ``POST /jobs/{id}/cancel`` stops one, ``GET /status`` and ``GET /healthz`` say
how the service is. The page (``/``) and what it reads (``/jobs/{id}/windows``, ``.../scene``,
``.../thumb``, ``.../file``) show a job's windows, merged results and 3D views; its scripts are
shipped in ``static/`` (nothing from a CDN).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..core.errors import InputError
from ..io.browse import output_merges, output_windows, thumbnail, window_details, window_scene
from ..io.job_table import FINAL, Job
from .guard import Guard, is_loopback
from .jobs import JobNotFoundError, Service
from .roots import ForbiddenPathError

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
"""The page's files (``index.html``, its script and style, the vendored three.js)."""

EVENT_POLL_S = 0.25
"""How often an event stream looks at its job."""
KEEP_ALIVE_S = 15.0
"""An event stream with nothing new sends a comment this often."""


def create_app(service: Service, *, stopping: Callable[[], bool] = lambda: False) -> Any:
    """The ASGI app serving ``service``; ``stopping`` says when the server is shutting down
    (event streams end then)."""
    app = FastAPI(title="window-recon service", docs_url=None, redoc_url=None)  # docs: a CDN

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> JSONResponse:
        status = 404 if isinstance(exc, JobNotFoundError) else 422
        return JSONResponse({"detail": _one_line(exc)}, status_code=status)

    @app.exception_handler(ForbiddenPathError)
    async def forbidden(request: Request, exc: ForbiddenPathError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=403)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/status")
    def status() -> dict[str, Any]:
        return service.status()

    @app.post("/jobs", status_code=201)
    async def submit(request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "send the job's options as application/json")
        try:
            fields = json.loads(await request.body())
        except ValueError:
            raise HTTPException(422, "the body is not JSON") from None
        except RecursionError:
            raise HTTPException(422, "the body nests too deeply") from None
        if not isinstance(fields, dict):
            raise HTTPException(422, "the body must be a JSON object of run options")
        job = await asyncio.to_thread(service.submit, fields)
        return {"id": job.id, "state": job.state}

    @app.get("/jobs")
    def jobs() -> dict[str, Any]:
        return {"jobs": [job.to_json() for job in service.store.jobs()]}

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return service.get(job_id).to_json()

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        return service.cancel(job_id).to_json()

    @app.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        service.get(job_id)
        stream = _event_stream(service, job_id, request, stopping)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/jobs/{job_id}/windows")
    def windows(job_id: str) -> dict[str, Any]:
        found = service.get(job_id)
        out = _output(found)
        return {"windows": output_windows(out), "merges": output_merges(out),
                "digest": (found.result or {}).get("digest", [])}

    @app.get("/jobs/{job_id}/window/{path:path}")
    def window(job_id: str, path: str) -> dict[str, Any]:
        return window_details(_folder(_output(service.get(job_id)), path))

    @app.get("/jobs/{job_id}/scene/{path:path}")
    def scene(job_id: str, path: str) -> dict[str, Any]:
        return window_scene(_folder(_output(service.get(job_id)), path))

    @app.get("/jobs/{job_id}/thumb/{path:path}")
    def thumb(job_id: str, path: str, size: int = 192) -> Response:
        image = _frame(service, _output(service.get(job_id)), path)
        return Response(thumbnail(image, max(16, min(size, 1024))), media_type="image/jpeg")

    @app.get("/jobs/{job_id}/file/{path:path}")
    def file(job_id: str, path: str) -> FileResponse:
        target = _inside(_output(service.get(job_id)), path)
        if target.suffix.lower() not in (".png", ".json", ".jpg", ".txt") or \
                not target.is_file():
            raise HTTPException(404, f"no such file {path!r}")
        return FileResponse(target)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    loopback = is_loopback(service.options.host) and service.options.token is None
    return Guard(app, token=service.options.token, loopback_only=loopback,
                 max_body_bytes=service.options.max_body_bytes)


async def _event_stream(service: Service, job_id: str, request: Request,
                        stopping: Callable[[], bool]) -> AsyncIterator[str]:
    """``progress`` events whenever the job's state, counts or stage change, then one
    ``end`` event with the whole job once it is final (or the server stops)."""
    last, quiet_since = None, time.monotonic()
    while True:
        job = service.store.get(job_id)
        if job is None:
            return
        snapshot = _progress(job)
        if snapshot != last:
            yield f"event: progress\ndata: {json.dumps(snapshot)}\n\n"
            last, quiet_since = snapshot, time.monotonic()
        if job.state in FINAL or stopping():
            yield f"event: end\ndata: {json.dumps(job.to_json())}\n\n"
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - quiet_since > KEEP_ALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(EVENT_POLL_S)


def _progress(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": job.state, "done": job.done, "failed": job.failed,
            "total": job.total, "stage": job.stage, "attempts": job.attempts}


def _output(job: Job) -> Path:
    return Path(job.options["output_dir"])


def _inside(out: Path, relative: str) -> Path:
    """``out / relative``, refused (404) unless it stays inside ``out``."""
    if "\x00" in relative:
        raise HTTPException(404, f"no such path {relative!r} in the job's output")
    target = (out / relative).resolve()
    if ".." in Path(relative).parts or not target.is_relative_to(out.resolve()):
        raise HTTPException(404, f"no such path {relative!r} in the job's output")
    return target


def _folder(out: Path, relative: str) -> Path:
    """The folder ``out / relative`` (404 unless it is one inside ``out``)."""
    folder = _inside(out, relative)
    if not folder.is_dir():
        raise HTTPException(404, f"no such folder {relative!r} in the job's output")
    return folder


def _frame(service: Service, out: Path, path: str) -> Path:
    """A window's frame ``WINDOW/images/NAME``: a link to the input (under the allowed
    roots) or a copy."""
    window, _, name = path.rpartition("/images/")
    folder = _inside(out, window)
    if not name or "/" in name or name.startswith("."):
        raise HTTPException(404, f"no such frame {path!r}")
    image = folder / "images" / name
    if not image.is_file() or not service.roots.contains(image):
        raise HTTPException(404, f"no such frame {path!r}")
    return image


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
