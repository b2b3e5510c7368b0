"""Where a job may read and write: every path it names must lie under one of the service's
allowed roots, after resolving it (symbolic links followed, ``..`` removed)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError


class ForbiddenPathError(InputError):
    """A job names a path outside the allowed roots (HTTP 403; in a run over many sequences,
    a sequence whose frames lie outside fails alone)."""


@dataclass(frozen=True)
class AllowedRoots:
    """The folders under which a job's inputs and outputs must lie (resolved)."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, folders: Iterable[str | os.PathLike]) -> AllowedRoots:
        """The roots ``folders`` name (resolved now; each must be an existing folder).

        Raises:
            ForbiddenPathError: a root that is not an existing folder.
        """
        roots = []
        for folder in folders:
            path = Path(folder).expanduser().resolve()
            if not path.is_dir():
                raise ForbiddenPathError(f"--allow-root {folder}: not an existing folder")
            roots.append(path)
        return cls(tuple(dict.fromkeys(roots)))

    def contains(self, path: str | os.PathLike) -> bool:
        """Whether ``path``, resolved, is one of the roots or lies under one (``/data2`` is
        not under ``/data``)."""
        resolved = Path(path).resolve()
        return any(resolved == root or resolved.is_relative_to(root) for root in self.roots)

    def check(self, path: str | os.PathLike, what: str) -> Path:
        """``path`` resolved, when it lies under a root.

        Raises:
            ForbiddenPathError: it does not (or is relative: a service has no current folder
                its clients share).
        """
        if "\x00" in os.fspath(path):
            raise InputError(f"{what} {path!r}: a path cannot hold a NUL character")
        if not os.path.isabs(path):
            raise ForbiddenPathError(f"{what} {path}: give an absolute path")
        if not self.contains(path):
            raise ForbiddenPathError(f"{what} {path} is outside the folders this service may "
                                     f"use ({', '.join(str(r) for r in self.roots)})")
        return Path(path).resolve()
