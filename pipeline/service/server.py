"""The HTTP server (uvicorn) around the app, stopped by SIGTERM or Ctrl-C so that the caller
can still stop the running job cleanly."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

GRACEFUL_SHUTDOWN_S = 3
"""Seconds open requests (event streams) get to end once the server stops."""


class Server(uvicorn.Server):
    """uvicorn's server, except that a signal only stops it: uvicorn raises the signal again
    once it has stopped, which would end the process before the service records the running
    job (see :meth:`pipeline.service.jobs.Service.close`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                previous[signum] = signal.signal(signum, self.handle_exit)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def make_server(app: Any) -> Server:
    """A server for ``app`` that logs through the pipeline's logging (warnings only)."""
    return Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off",
                                 timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))


def serve_on(server: Server, sock: socket.socket) -> None:
    """Serve on the bound ``sock`` until a signal (or ``server.should_exit``)."""
    server.run(sockets=[sock])
