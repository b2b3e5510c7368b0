"""``vae_data_pipeline_batch.py serve``: the warm model service (see :mod:`pipeline.service`).

Its flags: how it listens and whom it serves (``--host``, ``--port``, ``--allow-root``,
``--token``, ``--state-dir``, ``--unload-after``), then every run option but the input and output
ones, as the defaults of the jobs it is sent. A job's options are read by the command line's own
parser, so a job is refused exactly as the same flags would be.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.errors import InputError, PipelineError
from ..infra.files import write_json
from ..infra.options import flagged_fields
from ..runner.checks import SOURCE_FIELDS
from ..runner.config import PipelineConfig
from ..service.guard import is_loopback
from ..service.options import TOKEN_ENV, ServiceOptions
from .command import (
    CLIENT_DESTS,
    build_parser,
    config_from_args,
    configure_logging,
    usage_problem,
)
from .parsers import EXIT_OK, EXIT_USAGE, OneLineParser, RaisingParser, add_flags, one_line

logger = logging.getLogger(__name__)

JOB_ONLY = (*SOURCE_FIELDS, "output_dir", "frame_pattern", "fps", "overwrite")
"""Run options a job gives itself (no service-wide default)."""


def serve_parser() -> argparse.ArgumentParser:
    defaults = ServiceOptions()
    p = OneLineParser(
        prog="vae_data_pipeline_batch.py serve",
        description="Keep the model loaded and run the jobs sent over HTTP (POST /jobs, or the "
                    "usual command with --backend URL); the page at / follows them.")
    s = p.add_argument_group("service")
    s.add_argument("--host", default=defaults.host, help="Address to bind (default: "
                   "%(default)s; any address but loopback needs a token).")
    s.add_argument("--port", type=int, default=defaults.port, help="Port to bind (default: "
                   "%(default)s; 0: a free one, written to STATE_DIR/service.json).")
    s.add_argument("--allow-root", action="append", type=Path, metavar="DIR", help="Every "
                   "input and output path of a job must lie under one of these folders "
                   "(repeatable; default: the current folder).")
    s.add_argument("--token", help=f"Bearer token every request must carry (default: "
                   f"${TOKEN_ENV}; none: loopback only).")
    s.add_argument("--state-dir", type=Path, default=defaults.state_dir, help="Where the job "
                   "table is kept (default: %(default)s).")
    s.add_argument("--unload-after", type=float, default=defaults.unload_after_s, metavar="S",
                   help="Unload a model idle for S seconds (default: 0, keep it loaded).")
    add_flags(p, PipelineConfig, skip=JOB_ONLY)
    return p


def service_options(args: argparse.Namespace) -> ServiceOptions:
    """Raises: InputError: a non-loopback address without a token, a bad port."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0 to 65535, got {args.port}")
    if not is_loopback(args.host) and token is None:
        raise InputError(f"--host {args.host} is not a loopback address: give --token (or "
                         f"${TOKEN_ENV}) so that only those who know it can run jobs")
    if args.unload_after < 0:
        raise InputError(f"--unload-after must be 0 or more seconds, got {args.unload_after}")
    return ServiceOptions(host=args.host, port=args.port, token=token,
                          allow_roots=tuple(args.allow_root or [Path.cwd()]),
                          state_dir=args.state_dir, unload_after_s=args.unload_after)


def job_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The run options ``serve``'s flags give every job (those a job gives itself left out)."""
    return {d: getattr(args, d) for d, _, _ in flagged_fields(PipelineConfig)
            if d not in JOB_ONLY}


def job_parser(defaults: dict[str, Any]):
    """A job's options -> ``(PipelineConfig, every option as JSON)``, read by the command
    line's parser with ``defaults`` (the service's) for what the job does not give."""
    parser = build_parser(RaisingParser)
    parser.set_defaults(**defaults)
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    dests = {dest for dest, _, _ in flagged_fields(PipelineConfig)}

    def parse(fields: dict[str, Any]) -> tuple[PipelineConfig, dict[str, Any]]:
        argv, switches, nulls = [], {}, []
        for key, value in fields.items():
            action = actions.get(key)
            if action is None or key in CLIENT_DESTS or key not in dests:
                raise InputError(f"unknown run option {key!r}")
            flag = next(o for o in action.option_strings if o.startswith("--"))
            if value is None:
                if parser.get_default(key) is not None:
                    raise InputError(f"{flag}: null is not a value it takes (leave it out for "
                                     f"its default, {_json(parser.get_default(key))!r})")
                nulls.append(key)
            elif action.nargs == 0:
                if not isinstance(value, bool):
                    raise InputError(f"{flag}: must be true or false, got {value!r}")
                switches[key] = value
            elif isinstance(value, bool) or isinstance(value, (dict, list)) and \
                    not all(isinstance(v, (int, float)) for v in value):
                raise InputError(f"{flag}: not a value it takes: {value!r}")
            else:
                text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
                argv += [flag, text]
        args = parser.parse_args(argv)
        for key, value in switches.items():
            setattr(args, key, value)
        for key in nulls:
            setattr(args, key, None)
        problem = usage_problem(args)
        if problem:
            raise InputError(problem)
        config = replace(config_from_args(args), show_progress=False)
        return config, {d: _json(getattr(args, d)) for d in sorted(dests)}

    return parse


def _json(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound here, so that a port in use is a one-line error)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)  # from now on a client waits in the backlog until the server runs
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(argv: Sequence[str]) -> int:
    """Run the service until SIGTERM or Ctrl-C; the exit status."""
    args = serve_parser().parse_args(argv)
    configure_logging(verbose=args.verbose, quiet=False)
    try:
        options = service_options(args)  # before the heavy imports: bad usage answers at once
        from ..service.server import make_server, serve_on
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError:
        print("error: the service needs FastAPI and uvicorn: pip install fastapi uvicorn",
              file=sys.stderr)
        return EXIT_USAGE
    import pycolmap  # noqa: F401 - before uvicorn's signal handlers (see cli.main)

    from ..service.app import create_app
    from ..service.jobs import Service

    try:
        sock = _bind(options.host, options.port)
        service = Service(options, job_parser(job_defaults(args)))
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    server: Any = None
    server = make_server(create_app(service, stopping=lambda: server.should_exit))
    record = Path(options.state_dir) / "service.json"
    try:
        service.start()
        host, port = sock.getsockname()[:2]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        write_json(record, {"url": url, "pid": os.getpid(), "host": host, "port": port})
        logger.info("serving on %s (jobs in %s; paths under %s)%s", url, options.state_dir,
                    ", ".join(str(r) for r in service.roots.roots),
                    "" if options.token else "; no token: loopback only")
        serve_on(server, sock)
    finally:
        logger.info("stopping: the running job stops at its next window boundary")
        service.close()
        record.unlink(missing_ok=True)
    return EXIT_OK
