"""Measurement helpers shared by the network benchmarks (Linux, CPU peak RSS; subprocesses)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def settle_and_reset_peak() -> None:
    """Return freed heap to the OS and reset the peak-RSS counter, so the peak covers the forward
    only."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM (peak RSS) to the current RSS
        fh.write("5")


def run_worker(script: str, args: list[str]) -> dict | None:
    """Run ``script --worker ARGS`` in a fresh Python process; its last stdout line is JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, script, "--worker", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        logger.error("%s failed:\n%s", " ".join(args), proc.stderr[-2000:])
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    logger.info(json.dumps(result))
    return result
