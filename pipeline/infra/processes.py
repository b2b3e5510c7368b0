"""Worker processes: ended with their parent, stopped at once.

Generic helpers of the process pools (the executor's and the classical reconstructor's own).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Worker initializer: end this process as soon as ``parent_pid`` is gone (a parent killed
    with ``kill -9`` never tells its workers; they would wait on their queue forever). A daemon
    thread polls the parent every ``interval`` seconds (pycolmap releases the GIL while it
    works, so the thread runs during long COLMAP calls too)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes at once (their windows are abandoned; SIGKILL, because
    COLMAP's failure handler answers SIGTERM with a stack dump) and let the pool go."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
