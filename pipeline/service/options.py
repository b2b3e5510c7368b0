"""The service's own options (``serve``'s flags besides the run options jobs default to)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TOKEN_ENV = "WINDOW_RECON_TOKEN"
"""The environment variable that gives the token when ``--token`` does not."""


@dataclass(kw_only=True)
class ServiceOptions:
    """How the service listens, whom it serves and where it may read and write."""

    host: str = "127.0.0.1"
    """The address to bind (loopback by default; any other needs a token)."""
    port: int = 8008
    """The port to bind (0: one the system picks; ``STATE_DIR/service.json`` names it)."""
    allow_roots: tuple[Path, ...] = field(default_factory=lambda: (Path.cwd(),))
    """Every input and output path of a job must lie under one of these folders."""
    token: str | None = None
    """A bearer token every request must carry (``Authorization: Bearer T``); None: none."""
    state_dir: Path = Path(".window-recon-service")
    """Where the job table (``jobs.sqlite3``) and ``service.json`` are kept."""
    unload_after_s: float = 0.0
    """Unload a worker's model after it has been idle this many seconds (0: keep it)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (HTTP 413 beyond)."""
    stop_grace_s: float = 20.0
    """Seconds a running job has to reach a window boundary when the service stops."""
