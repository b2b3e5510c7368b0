"""Whether an output folder's ``merged/`` is the merge of its windows as they are now.

A merge records in ``merged/merge.json`` the windows it was made from (``sources``: each
planned window folder's ``window_info.json``, by content hash). A later run that redoes a
window makes that merge stale; such a ``merged/`` is removed at the end of the run (``--merge``
builds it again), and ``evaluate`` does not score it. A ``merged/`` without ``merge.json`` was
not made by a merge: it is the user's, never replaced or removed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..infra.files import remove_tree
from .frames import file_digest
from .output import read_plan

logger = logging.getLogger(__name__)

MERGED_DIR = "merged"
"""The merged scene's folder inside an output folder."""
MERGE_REPORT = "merge.json"
"""The merge's report inside ``merged/``; its presence marks the folder as a merge's."""

CURRENT, STALE, UNKNOWN, FOREIGN = "current", "stale", "unknown", "foreign"
"""What :func:`merged_state` says of a ``merged/`` folder (``None``: there is none)."""


def window_sources(output_dir: Path) -> dict[str, str | None]:
    """``{window folder relative to output_dir: content hash of its window_info.json}`` for
    every window of the run plan (``None`` for a window without a record); ``{}`` without a
    readable plan."""
    output_dir = Path(output_dir)
    try:
        entries = read_plan(output_dir)["windows"]
    except InputError:
        return {}
    sources: dict[str, str | None] = {}
    for entry in entries:
        path = str(entry.get("path")) if isinstance(entry, dict) else str(entry)
        try:
            sources[path] = file_digest((output_dir / path / "window_info.json").read_bytes())
        except OSError:
            sources[path] = None
    return sources


def merged_state(output_dir: Path) -> str | None:
    """:data:`CURRENT` (made from the windows as they are), :data:`STALE` (a window was redone,
    added or removed since), :data:`UNKNOWN` (an older version's merge, which did not record its
    windows), :data:`FOREIGN` (not a merge's folder), or ``None`` when there is no
    ``merged/``."""
    merged = Path(output_dir) / MERGED_DIR
    if not (merged.exists() or merged.is_symlink()):
        return None
    try:
        report: Any = json.loads((merged / MERGE_REPORT).read_text())
    except (OSError, ValueError):
        return FOREIGN
    if not isinstance(report, dict):
        return FOREIGN
    if not isinstance(report.get("sources"), dict):
        return UNKNOWN
    return CURRENT if report["sources"] == window_sources(output_dir) else STALE


def refuse_foreign_merged(output_dir: Path) -> None:
    """Raise when ``output_dir/merged`` exists but no merge made it (a merge would replace it).

    Raises:
        InputError: naming the folder.
    """
    if merged_state(output_dir) == FOREIGN:
        raise InputError(f"{Path(output_dir) / MERGED_DIR} exists and no merge made it (it has "
                         f"no {MERGE_REPORT}): the merge writes there; move it away first")


def remove_stale_merged(output_dir: Path) -> bool:
    """Remove ``output_dir/merged`` when it is :data:`STALE`, with a warning; return whether
    it was removed."""
    if merged_state(output_dir) != STALE:
        return False
    merged = Path(output_dir) / MERGED_DIR
    if remove_tree(merged):
        logger.warning("%s was merged from windows since redone: removed (--merge, or python -m "
                       "pipeline.merge %s, merges them again)", merged, output_dir)
        return True
    logger.warning("%s was merged from windows since redone and cannot be removed: it is "
                   "stale", merged)
    return False
