"""The resume signature of a window: what decides its result (the content hash of each frame,
the reconstructor, every option that changes the result, the ``images`` mode, the checks), as
JSON, and a stable hash of JSON values.

A rerun reuses a window only when its recorded signature equals the one the run expects
(:func:`pipeline.io.output.check_window`); :func:`signature_difference` names the first field
that differs, for the log line saying why a window is redone.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

SIGNATURE_VERSION = 3
"""Bumped when the signature's shape or meaning changes: older windows are then redone."""


NOT_RESULT_KEYS = frozenset({"num_threads", "gpu_index", "print_summary", "logging_type",
                             "minimizer_progress_to_stdout", "snapshot_path",
                             "snapshot_frequency", "image_path"})
"""Keys of pycolmap option objects that change how fast or how loudly work runs, not its result."""


def options_signature(value: Any) -> Any:
    """The JSON form of options that decide a result, for the resume signature.

    Dataclasses give every field except those declared with ``metadata={"result": False}``
    (worker counts, log levels, devices: how the work runs, not what it makes); pycolmap option
    objects give ``todict()`` without :data:`NOT_RESULT_KEYS`; enums their name, paths and sets
    plain strings and sorted lists.

    Raises:
        TypeError: a value of a kind the signature cannot represent (so that an option of a new
            kind fails loudly instead of silently dropping out of the signature).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: options_signature(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.metadata.get("result", True)}
    if hasattr(value, "todict") and type(value).__module__.startswith("pycolmap"):
        return _strip(options_signature(value.todict()))
    if isinstance(value, Mapping):
        return {str(k): options_signature(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(options_signature(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [options_signature(v) for v in value]
    if isinstance(value, enum.Enum) or type(value).__module__.startswith("pycolmap"):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value).__module__ == "torch":  # torch.dtype / torch.device
        return str(value)
    if type(value).__module__ == "numpy":  # arrays and scalars in pycolmap's option objects
        return options_signature(value.tolist())
    raise TypeError(f"cannot put a {type(value).__name__} into a resume signature")


def _strip(options: dict[str, Any]) -> dict[str, Any]:
    return {k: _strip(v) if isinstance(v, dict) else v for k, v in options.items()
            if k not in NOT_RESULT_KEYS}


def window_signature(frames: Iterable[Any], reconstructor: str, options: Any, images: str,
                     context: str | None = None, checks: Any = None) -> dict[str, Any]:
    """What a finished window must match to be reused.

    Args:
        frames: The window's :class:`pipeline.io.frames.Frame` objects (name and content hash).
        reconstructor: The reconstructor's name.
        options: The reconstructor's :func:`options_signature`.
        images: What the window's ``images/`` holds (``link``, ``copy``, ``none``).
        context: :func:`frames_hash` of other frames whose content decides the window's
            result (e.g. the chunk of the sequence it was cut from).
        checks: The :class:`WindowChecks` its status was decided with, if any.
    """
    signature = {"version": SIGNATURE_VERSION, "reconstructor": reconstructor,
                 "options": options, "images": images,
                 "frames": [[f.name, f.digest] for f in frames]}
    if checks is not None:
        signature["checks"] = options_signature(checks)
    if context is not None:
        signature["context"] = context
    return signature


def frames_hash(frames: Iterable[Any]) -> str:
    """One digest of frames' names and content hashes (a window's context)."""
    return stable_hash([[f.name, f.digest] for f in frames])


def stable_hash(data: Any) -> str:
    """A short stable hash of JSON-ready ``data`` (32 hex digits)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def signature_difference(old: Any, new: Mapping[str, Any]) -> str | None:
    """What differs between a window's recorded signature and the expected one, in words;
    ``None`` when they are equal."""
    if old == new:
        return None
    if not isinstance(old, Mapping) or old.get("version") != new.get("version"):
        return "it was made by another version of the pipeline"
    if old.get("reconstructor") != new.get("reconstructor"):
        return f"it was made by {old.get('reconstructor')}, not {new.get('reconstructor')}"
    old_frames, new_frames = old.get("frames") or [], new["frames"]
    if [f[0] for f in old_frames if isinstance(f, list)] != [f[0] for f in new_frames]:
        return "its frames are other frames"
    for (name, new_hash), old_frame in zip(new_frames, old_frames):
        if old_frame[1:2] != [new_hash]:
            return f"frame {name} has other content now"
    if old.get("images") != new.get("images"):
        return f"its images/ was made with --images {old.get('images')}"
    if old.get("context") != new.get("context"):
        return "frames around it that decide its result (its chunk, the sequence) changed"
    if old.get("checks") != new.get("checks"):
        return f"option {_first_difference(old.get('checks'), new.get('checks'))} changed"
    return f"option {_first_difference(old.get('options'), new.get('options'))} changed"


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """The first difference between two unequal JSON values: ``"dotted.path (old -> new)"``."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path or 'settings'} ({_short(a)} -> {_short(b)})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
