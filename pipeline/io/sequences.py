"""Many sequences in one run: finding them (``--input-root``, ``--input-list``), naming their
output folders, and the dataset's window index (``OUT/index.jsonl``).

A sequence is a folder that holds frames directly, or a video file. Its name is its path
relative to the input root (or to the list file's folder), with ``/`` turned into ``__`` and
every character but letters, digits, ``.``, ``_`` and ``-`` into ``_``; names that would clash
get ``-2``, ``-3``... Its windows go to ``OUT/<name>/``, laid out exactly as a run over that
sequence alone.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..infra.files import write_json, write_text
from ..infra.lock import OutputBusyError, busy_message, lock_holder
from .frames import is_frame_file
from .output import is_own_folder, read_window_intrinsics
from .run_record import now, package_versions

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
"""File endings read as videos under ``--input-root``."""

INDEX = "index.jsonl"
"""The dataset's window index, one JSON line per window (see :class:`WindowIndex`)."""
DATASET_MANIFEST = "dataset.json"
"""The dataset run's record: its sequences, their status and the run's figures."""
DATASET_RECORDS: dict[str, str] = {DATASET_MANIFEST: "sequences", INDEX: "sequence"}
"""The records a run over many sequences writes at the top of its output folder, each with a
key only this pipeline's version holds (see :func:`pipeline.io.output.refuse_foreign_records`)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class SequenceSource:
    """One sequence of a dataset run."""

    name: str
    """Its output folder's name (safe and unique in the run)."""
    path: Path
    """The frame folder or video file."""

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_EXTENSIONS


def safe_name(relative: str) -> str:
    """A folder name for a sequence at ``relative`` (a relative path)."""
    parts = [p for p in Path(relative).parts if p not in ("", ".", "..")]
    name = _UNSAFE.sub("_", "__".join(parts)).lstrip(".") or "sequence"
    return name[:200]


def unique_names(relatives: Sequence[str]) -> list[str]:
    """:func:`safe_name` of each, with ``-2``, ``-3``... added where names would clash (case
    folded, for case-insensitive filesystems) with each other or with what a run over many
    writes beside its sequences (``index.jsonl``, ``dataset.json``); a name of an output
    folder's own folders (``merged``, ``batch_000``) becomes ``sequence_merged``..."""
    taken: set[str] = {INDEX, DATASET_MANIFEST}
    names = []
    for relative in relatives:
        base = safe_name(relative)
        if is_own_folder(base.lower()):  # batch_000-2 would still be one: a prefix is not
            base = f"sequence_{base}"
        name, k = base, 2
        while name.lower() in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name.lower())
        names.append(name)
    return names


def stray_sequences(out: Path, names: Iterable[str]) -> list[str]:
    """The folders of ``out`` that hold a sequence's output but are none of ``names`` (the
    sequences of this run): an earlier run's sequence that this run does not have, or that it
    names otherwise now. ``index.jsonl`` and ``dataset.json`` do not list them."""
    keep = {n.lower() for n in names}
    try:
        children = sorted(p for p in Path(out).iterdir() if p.is_dir())
    except OSError:
        return []
    return [p.name for p in children if p.name.lower() not in keep
            and not is_own_folder(p.name) and is_output_folder(p)]


def refuse_running_dataset(out: Path) -> None:
    """Refuse to work in ``out`` when it is a sequence's folder of a run over many sequences
    that is running now (that run writes into it without its own lock; call this holding
    ``out``'s lock: the run over many looks at each sequence's lock after taking its own).

    Raises:
        OutputBusyError: the run over many, in the parent folder, is alive.
    """
    parent = Path(out).absolute().parent
    if not (parent / DATASET_MANIFEST).is_file():
        return
    holder = lock_holder(parent)
    if holder is not None:
        raise OutputBusyError(f"{busy_message(parent, holder)}: a run over many sequences, "
                              f"which writes into {out}; wait for it to finish")


OUTPUT_RECORDS = {"plan.json": "windows", "dataset.json": "sequences",
                  "window_info.json": "window_index", "index.jsonl": "sequence"}
"""Records only a pipeline output folder holds, each with a key only the pipeline's version
holds: a folder with one is never a sequence, nor is anything under it (its frames/, its
windows' images/). A user's own file of such a name is no record."""


def _holds_frames(folder: Path, pattern: str | None = None) -> bool:
    try:
        return any(is_frame_file(p, pattern) for p in folder.iterdir())
    except OSError:
        return False


def is_output_folder(folder: Path) -> bool:
    """Whether ``folder`` is (or lies in) a pipeline output folder, by its records."""
    return any(_is_record(folder / name, key) for name, key in OUTPUT_RECORDS.items()) or \
        (folder / ".lock").is_file() and (folder / "run.json").is_file()


def _is_record(path: Path, key: str) -> bool:
    """Whether ``path`` is a JSON object holding ``key`` (a JSON-lines file: its first line)."""
    try:
        with open(path) as handle:
            text = handle.readline() if path.suffix == ".jsonl" else handle.read()
        data = json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and key in data


def discover(root: Path, *, skip: Iterable[Path] = (),
             pattern: str | None = None) -> list[SequenceSource]:
    """Every folder under ``root`` (``root`` included) that holds frames, and every video file,
    in sorted path order. Passed by: folders in ``skip`` (the output folder), hidden ones,
    output folders of any run (:func:`is_output_folder`: an older output inside ``root``; when
    ``root`` itself is one, the folders its run wrote) and links back to a folder already
    walked (a link loop; with a warning). A folder that cannot be read is kept as a sequence,
    so that it fails with its reason instead of being dropped unseen. With ``pattern``
    (``--frame-pattern``), a folder is a sequence only when some of its image names match it.

    Raises:
        InputError: ``root`` is not a folder, or holds no sequence.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--input-root is not a folder: {root}")
    skipped = {Path(s).resolve() for s in skip}
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    pending = [root]
    while pending:
        here = pending.pop()
        try:
            stat = here.stat()
            entries = sorted(here.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            logger.warning("cannot read %s (%s): it fails as a sequence", here,
                           exc.strerror or exc)
            found.append(here)
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            logger.warning("skipping %s: a link back to a folder already looked at", here)
            continue
        seen.add((stat.st_dev, stat.st_ino))
        output = is_output_folder(here)
        if output and here != root:
            logger.info("skipping %s: a pipeline output folder, not a sequence", here)
            continue
        if any(is_frame_file(p, pattern) for p in entries):
            found.append(here)
        found += [p for p in entries if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()]
        # the root itself may be an earlier run's output over its own frames: its frames are a
        # sequence, the folders that run wrote are not
        pending += reversed([p for p in entries if p.is_dir() and not p.name.startswith(".")
                             and p.resolve() not in skipped
                             and not (output and is_own_folder(p.name))])
    if not found:
        frames = "frames" if pattern is None else f"frames matching --frame-pattern {pattern!r}"
        raise InputError(f"--input-root {root} holds no folder of {frames} and no video "
                         f"({', '.join(VIDEO_EXTENSIONS)})")
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    names = unique_names([p.relative_to(root).as_posix() for p in found])
    return [SequenceSource(name=n, path=p) for n, p in zip(names, found)]


def read_list(list_file: Path) -> list[SequenceSource]:
    """The sequences of ``list_file``: one folder or video path a line; blank lines and lines
    starting with ``#`` are skipped; relative paths are relative to the list file's folder.
    A path that does not exist stays in the list (it fails alone, with its reason).

    Raises:
        InputError: the file cannot be read, or lists nothing.
    """
    list_file = Path(list_file)
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--input-list {list_file}: cannot read it ({exc})") from exc
    base = list_file.resolve().parent
    paths = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            path = Path(entry).expanduser()
            paths.append(path if path.is_absolute() else base / path)
    if not paths:
        raise InputError(f"--input-list {list_file} lists no sequence")
    paths = _once_each(paths, list_file)
    relatives = []
    for path in paths:
        try:
            relatives.append(path.resolve().relative_to(base).as_posix())
        except ValueError:
            relatives.append(path.name)
    return [SequenceSource(name=n, path=p) for n, p in zip(unique_names(relatives), paths)]


def _once_each(paths: list[Path], list_file: Path) -> list[Path]:
    """``paths`` with each folder or video once: entries that resolve to the same place
    (``dir``, ``dir/``, ``../x/dir``, a link to it) are one sequence, with a warning."""
    kept: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in kept:
            logger.warning("--input-list %s names %s twice (as %s and %s): it is one sequence",
                           list_file, key, kept[key], path)
            continue
        kept[key] = path
    return list(kept.values())


class WindowIndex:
    """``OUT/index.jsonl``: every window of the dataset, one JSON line each, in sequence and
    window order. Rewritten whole (a temporary file renamed over it) at most every
    ``interval`` seconds while windows finish, and at the end, so a reader never sees half a
    line. A sequence that could not be read (or is shorter than a window) has one line with
    ``window_index`` null and status ``failed``."""

    def __init__(self, out: Path, interval: float = 1.0) -> None:
        self.path = Path(out) / INDEX
        self.interval = interval
        self.lines: dict[tuple[str, int], dict[str, Any]] = {}
        self._written = 0.0

    def add(self, entry: dict[str, Any]) -> None:
        """Add or replace the line of ``entry["sequence"]``, ``entry["window_index"]``."""
        index = entry["window_index"]
        self.lines[(entry["sequence"], -1 if index is None else index)] = entry

    def write(self, *, force: bool = False) -> None:
        """Write the file when ``interval`` has passed since the last write (or ``force``)."""
        if not force and time.monotonic() - self._written < self.interval:
            return
        text = "".join(json.dumps(self.lines[k], sort_keys=True) + "\n"
                       for k in sorted(self.lines))
        write_text(self.path, text)
        self._written = time.monotonic()


def index_entry(sequence: str, record: dict[str, Any], window_dir: Path,
                out: Path) -> dict[str, Any]:
    """The index line of a window from its record (``window_info.json``) and folder."""
    ok = record.get("status") == "ok"
    intrinsics, distortion = {}, {}
    if ok:
        try:
            intrinsics, distortion = read_window_intrinsics(window_dir)
        except Exception as exc:  # noqa: BLE001 - the index says what it could not read
            logger.debug("index: no intrinsics of %s (%s)", window_dir, exc)
    details = record.get("details") or {}
    return {
        "sequence": sequence, "window_index": record.get("window_index"),
        "status": record.get("status"), "error": record.get("error"),
        "folder": window_dir.relative_to(out).as_posix(), "frames": record.get("frames"),
        "registered_frames": record.get("registered_frames"),
        "image_size": record.get("image_size"), "image_sizes": record.get("image_sizes"),
        "intrinsics": intrinsics, "distortion": distortion,
        "has_depth": (window_dir / "depth").is_dir(), "exports": details.get("exports", []),
    }


def sequence_failure_entry(source: SequenceSource, error: str) -> dict[str, Any]:
    """The index line of a sequence that could not be read (or is shorter than a window)."""
    return {"sequence": source.name, "window_index": None, "status": "failed", "error": error,
            "folder": source.name, "source": str(source.path), "frames": [],
            "registered_frames": [], "image_size": None, "image_sizes": [], "intrinsics": {},
            "has_depth": False,
            "exports": []}


class DatasetManifest:
    """``OUT/dataset.json``: the run over many sequences as a whole: its configuration, each
    sequence's source, status and window counts, and the run's throughput, profile and memory
    (each sequence's ``run.json`` has its windows)."""

    def __init__(self, out: Path, config: Any, reconstructor: Any,
                 sources: Sequence[SequenceSource]) -> None:
        self.path = Path(out) / DATASET_MANIFEST
        self.sources = {s.name: s for s in sources}
        self.data: dict[str, Any] = {
            "status": "running", "started_at": now(), "finished_at": None, "wall_time": None,
            "config": config.to_json(), "reconstructor": reconstructor.describe(),
            "versions": package_versions(), "index": INDEX, "error": None,
            "sequences": [{"name": s.name, "source": str(s.path), "status": "pending",
                           "error": None} for s in sources],
            "throughput": None, "profile": None, "memory": None}
        self._write()

    def _entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.data["sequences"] if e["name"] == name)

    def failed(self, source: SequenceSource, error: str) -> None:
        """``source`` could not be read (or is shorter than a window)."""
        self._entry(source.name).update(status="failed", error=error)

    def planned(self, plans: Sequence[Any]) -> None:
        """The readable sequences are planned (:class:`pipeline.runner.SequencePlan`)."""
        for plan in plans:
            self._entry(plan.name).update(status="planned", frames=len(plan.frames),
                                          windows=len(plan.windows), to_do=len(plan.todo))
        self._write()

    def finish(self, status: str, wall_time: float, error: str | None, plans: Sequence[Any],
               governor: Any, profile: Any) -> None:
        """The final record (never raises: the run's own outcome is what counts)."""
        for plan in plans:
            counts = plan.manifest.data.get("summary") or {}
            self._entry(plan.name).update(
                status=plan.manifest.data.get("status"), ok=counts.get("ok", 0),
                failed=counts.get("failed", 0))
        self.data.update(status=status, finished_at=now(), wall_time=round(wall_time, 3),
                         error=error, profile=profile.rows,
                         memory=None if governor is None else governor.to_json())
        try:
            self._write()
        except OSError as exc:
            logger.error("cannot write %s: %s", self.path, exc)

    def keep_digest(self, digest: list[dict[str, Any]]) -> None:
        """The run's digest (failed windows by cause, named ``sequence/window``; sequences not
        reconstructed; merges that split or failed), as the command prints it at the end."""
        self.data["digest"] = digest
        try:
            self._write()
        except OSError as exc:
            logger.error("cannot write %s: %s", self.path, exc)

    def _write(self) -> None:
        write_json(self.path, self.data)
