"""The end-of-run digest: failed windows grouped by reason, with the next step each suggests.

A long run can fail dozens of windows for one cause; instead of as many identical warnings, the
run ends with one line per cause (how many windows, the first few, and what to try), and the
same digest is kept in ``run.json`` under ``digest``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

EXAMPLE_WINDOWS = 5
"""Windows named per cause."""


@dataclass(frozen=True)
class Cause:
    """A kind of window failure, recognised by a pattern of its reason."""

    label: str
    """A few words naming the cause."""
    pattern: str
    """Regular expression searched in the window's ``error``."""
    hint: str
    """The next step the cause suggests."""


CAUSES = (
    Cause("temporary disk full", r"^the temporary folder .* is full",
          "free space in the temporary folder, or point TMPDIR at a disk with room, then rerun"),
    Cause("too little structure", r"^too little structure",
          "the frames barely move or see little texture: try --frame-step 2-5 or a larger "
          "--window-size (--min-points / --min-frame-observations set the bar)"),
    Cause("implausible camera", r"^implausible camera",
          "a focal length solved wrong (too few views to calibrate): --shared-camera, known "
          "intrinsics (--camera-params) or a longer --window-size help; --fov-range sets the "
          "bar (a telephoto or fisheye lens)"),
    Cause("not posed", r"COLMAP found no model|COLMAP posed \d+ of",
          "too little camera motion or overlap within the window: try --frame-step 2-5 or a "
          "larger --window-size; known intrinsics help (--camera-params)"),
    Cause("too few frames registered", r"frames registered \(need",
          "some frames did not join the model: try --frame-step, a larger --window-size, or "
          "lower --min-registered"),
    Cause("out of memory", r"out of memory",
          "try a smaller --process-res or --window-batch-size, --cpu-offload, or "
          "--allow-approximate"),
    Cause("worker crashed", r"worker process .*(crashed|died)",
          "a COLMAP worker died (often memory): try fewer --cpu-workers; -v shows COLMAP's log"),
    Cause("sequence reconstruction failed", r"(building the feature store|mapping frames .*) "
          r"failed",
          "the chunk around these windows could not be mapped: -v shows COLMAP's log; "
          "--chunk-frames 0 reconstructs each window alone"),
    Cause("model not written", r"^written model unusable|^cannot write",
          "check the output folder's disk space and permissions, then rerun"),
)
"""Known causes, tried in order; other reasons are grouped by their text."""


@dataclass(kw_only=True)
class DigestEntry:
    """Windows that failed for one cause."""

    cause: str
    """The cause's label, or the reason itself when no known cause matches."""
    count: int = 0
    """Windows that failed for it (0: a line about a sequence, not its windows: one that could
    not be reconstructed, a merge that split or failed)."""
    windows: list[int | str] = field(default_factory=list)
    """The first :data:`EXAMPLE_WINDOWS` of them: window indices, or in a run over many
    sequences ``"<sequence>/<index>"`` (:func:`window_label`)."""
    example: str = ""
    """The full reason of the first of them."""
    hint: str | None = None
    """What to try, when the cause is known."""

    def line(self) -> str:
        """One line: count, cause, example windows and hint."""
        more = ", ..." if self.count > len(self.windows) else ""
        where = f"window{'s' if self.count > 1 else ''} {', '.join(map(str, self.windows))}{more}"
        text = f"{plural(self.count, 'window')}: {self.cause}" if self.count else self.cause
        if self.windows:
            text += f" ({where})"
        if self.hint:
            text += f"; {self.hint}"
        elif self.cause != self.example:
            text += f": {self.example}"
        return text


def cause_of(error: str | None) -> Cause | None:
    """The known cause of a failure reason, if one matches."""
    for cause in CAUSES:
        if error and re.search(cause.pattern, error):
            return cause
    return None


def cause_key(error: str | None) -> str:
    """What failures are grouped by: the known cause's label, else the reason with its numbers
    and quoted names blanked (``frame_012.png`` and ``frame_013.png`` fail alike)."""
    return _key(error, cause_of(error))


def _key(error: str | None, cause: Cause | None) -> str:
    """:func:`cause_key` of ``error`` whose known cause is ``cause``."""
    if cause is not None:
        return cause.label
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", error or "unknown reason")
    return re.sub(r"\d+(\.\d+)?", "N", text)[:160]


def failure_digest(records: Iterable[Mapping[str, Any]]) -> list[DigestEntry]:
    """The failed windows of ``records`` (window records as in ``run.json``; with their
    ``sequence`` in a run over many), grouped by cause, the most frequent first."""
    entries: dict[str, DigestEntry] = {}
    for record in records:
        if record.get("status") == "ok":
            continue
        error = record.get("error") or "unknown reason"
        cause = cause_of(error)
        key = _key(error, cause)
        entry = entries.setdefault(key, DigestEntry(
            cause=key, example=error, hint=cause.hint if cause else None))
        entry.count += 1
        if len(entry.windows) < EXAMPLE_WINDOWS:
            entry.windows.append(window_label(record))
    return sorted(entries.values(), key=lambda e: -e.count)


def window_label(record: Mapping[str, Any]) -> int | str:
    """How a failure names its window: its index, or ``"<sequence>/<index>"`` when the record
    belongs to a sequence of a run over many."""
    index = int(record.get("window_index", -1))
    sequence = record.get("sequence")
    return f"{sequence}/{index}" if sequence else index


def calibration_entry(calibration: Mapping[str, Any] | None,
                      records: Iterable[Mapping[str, Any]]) -> DigestEntry | None:
    """A digest line for windows of a sequence whose calibration had little support (colmap's
    ``run.json`` → ``calibration``), ok or not: they may be wrong without failing."""
    if not calibration or calibration.get("support") != "weak":
        return None
    count = sum(1 for _ in records)
    return DigestEntry(cause="focal length found with little support", count=count,
                       example=calibration.get("hint") or "", hint=calibration.get("hint"))


def digest_json(entries: Iterable[DigestEntry]) -> list[dict[str, Any]]:
    """The digest as JSON for ``run.json``."""
    return [asdict(entry) for entry in entries]


def plural(count: int, noun: str) -> str:
    """``"1 window"``, ``"2 windows"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
