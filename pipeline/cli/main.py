"""The command line: ``python vae_data_pipeline_batch.py --input-dir DIR --output-dir OUT``.

Exit codes: 0 every window succeeded (and the merge, if asked for); 1 some windows failed (the
others are written), the merge failed, or the disk filled up during the run; 2 bad usage or
input, or an output folder that cannot be written or that another run holds (one ``error:``
line); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..core.errors import DiskFullError, PipelineError
from ..service.options import TOKEN_ENV
from .command import (
    build_parser,
    config_from_args,
    configure_logging,
    job_fields,
    usage_problem,
)
from .parsers import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, EXIT_WINDOWS_FAILED, one_line

__all__ = ["build_parser", "config_from_args", "configure_logging", "main",
           "terminate_as_interrupt"]

logger = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM or SIGHUP: handled like Ctrl-C (staging removed, workers
    stopped, ``run.json`` says ``interrupted``), then exit ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


TERMINATE_GRACE_S = 20.0
"""Seconds a terminated run has to stop cleanly before the process exits regardless."""


@contextlib.contextmanager
def terminate_as_interrupt(grace: float = TERMINATE_GRACE_S) -> Iterator[None]:
    """While the run lasts, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread,
    so they end the run the way Ctrl-C does; the previous handlers are restored after.

    A supervisor that sends SIGTERM expects the process to end: if the clean stop (staging
    removed, workers stopped, ``run.json`` written) takes more than ``grace`` seconds (the
    signal can land inside a library's critical section), or a second signal comes, the
    process exits with ``128 + signal`` at once. Its workers end with it, its lock is released by
    the OS, and the next run removes what it left."""
    timers: list[threading.Timer] = []

    def handler(signum: int, frame: object) -> None:
        if timers:  # a second signal: stop now
            os._exit(128 + signum)
        timer = threading.Timer(grace, _exit_now, args=(signum, grace))
        timer.daemon = True
        timer.start()
        timers.append(timer)
        raise Terminated(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()
        for signum, old in previous.items():
            signal.signal(signum, old)


def _exit_now(signum: int, grace: float) -> None:
    """End the process when a terminated run has not stopped within ``grace`` seconds."""
    sys.stderr.write(f"error: the run did not stop within {grace:.0f} s of "
                     f"{signal.Signals(signum).name}; exiting now (rerun to finish)\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def _throughput_line(t: dict[str, Any]) -> str:
    """``--profile-memory``'s line on how busy the device and the CPU were."""
    rate = f"{t['windows_per_s']:.3f} windows/s" if t.get("windows_per_s") else "-"
    text = (f"{t['windows']} windows in {t['wall_s']:.1f} s ({rate}); CPU stages "
            f"{t['cpu_busy_s']:.1f} s")
    if "device_busy_s" in t:
        idle = t.get("device_idle_fraction")
        text += (f"; device busy {t['device_busy_s']:.1f} s"
                 + (f", idle {100 * idle:.0f}% of the time" if idle is not None else ""))
    if "main_busy_s" in t:
        workers = t.get("cpu_workers") or 0
        text += (f"; main process busy {t['main_busy_s']:.1f} s, finishing "
                 f"{t['finish_busy_s']:.1f} s "
                 + (f"in {workers} CPU worker{'' if workers == 1 else 's'}" if workers
                    else "in the main process (serial)")
                 + (f", waited {t['loader_wait_s']:.1f} s for frames"
                    if t.get("loader_wait_s") else ""))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline from command-line arguments (``serve ...``: the service); return the
    exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from .serve import serve

        return serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = usage_problem(args)
    if problem:
        parser.error(problem)
    configure_logging(verbose=args.verbose, quiet=args.quiet)
    if args.backend is not None:
        from .client import run_remote

        return run_remote(args.backend, args.token or os.environ.get(TOKEN_ENV),
                          job_fields(parser, args), quiet=args.quiet)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..runner import run

    config = config_from_args(args)
    import pycolmap  # noqa: F401 - before our SIGTERM handler: importing pycolmap installs
    # glog's failure signal handler, which would abort on SIGTERM instead of ending the run
    try:
        with logging_redirect_tqdm(), terminate_as_interrupt():
            summary = run(config)
    except DiskFullError as exc:  # windows were under way: what is written stays
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_WINDOWS_FAILED
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print("interrupted; rerun the same command to finish the remaining windows",
              file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except OSError as exc:  # e.g. a folder of the output made read-only: what is written stays
        logger.debug("the run stopped", exc_info=True)
        print(f"error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return EXIT_WINDOWS_FAILED
    except Exception as exc:  # a defect: one line, the traceback with -v, run.json says failed
        logger.debug("the run stopped", exc_info=True)
        print(f"error: the run stopped on {type(exc).__name__}: {one_line(exc)} (a defect of "
              "the pipeline; -v shows where)", file=sys.stderr)
        return EXIT_WINDOWS_FAILED
    if config.profile_memory and summary.profile is not None:
        print(summary.profile.format(summary.device))
        if summary.throughput:
            print(_throughput_line(summary.throughput))
    if summary.is_main:
        print(summary.line())
        for line in summary.digest():
            print(f"  {line}")
    return EXIT_OK if summary.success else EXIT_WINDOWS_FAILED
