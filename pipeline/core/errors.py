"""Exceptions raised by the library; only ``pipeline.cli.main.main`` turns them into exit codes."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class InputError(PipelineError, ValueError):
    """Bad user input: a missing folder, an unreadable frame, an invalid option.

    The command line reports its message on one line and exits with status 2.
    """


class DiskFullError(PipelineError, OSError):
    """The disk (or the quota) holding the output is full; the run stops, what is written stays.

    Args:
        path: What could not be written.
        cause: The ``OSError`` that said so, if any.
    """

    def __init__(self, path: object, cause: OSError | None = None) -> None:
        import os
        import shutil
        from pathlib import Path

        self.path = Path(str(path))
        folder = next((p for p in (self.path, *self.path.parents) if p.exists()), Path("."))
        mount = next((p for p in (folder, *folder.absolute().parents) if os.path.ismount(p)),
                     folder)
        try:
            free = f"{shutil.disk_usage(folder).free / 1024:.0f} KiB free"
        except OSError:
            free = "free space unknown"
        reason = cause.strerror if cause is not None and cause.strerror else (
            "No space left on device")
        super().__init__(f"{reason}: the disk mounted at {mount} ({free}) is full while writing "
                         f"{self.path}; free some space and rerun the same command to finish")

    def __reduce__(self):  # picklable across processes, like other exceptions
        return (DiskFullError, (self.path, None))
