"""Layer 7, one run from a configuration: the configuration (the pipeline's options and the
reconstructors' flags), checks, planning and resume, one sequence or many, the Ray engine.
Imports the layers below.

``from pipeline.runner import run, process_window_batch`` keeps working: the names below are
imported from their modules when first used, so that importing :mod:`pipeline.runner.config`
(the command line's ``--help``) does not import the whole runner.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run": "entry", "RunSummary": "summary", "process_window_batch": "window_batch",
    "start_window_batch": "window_batch", "finish_window": "window_batch",
    "window_checks": "window_batch", "load_frames": "inputs",
    "choose_reconstructor": "choice", "unread_problem": "checks", "cpu_workers": "schedule",
    "keep_redrawing": "schedule", "SequencePlan": "plan",
}
"""Name -> the module of this package that defines it."""

_REEXPORTS = {"build_reconstructor": "..reconstructors",
              "reconstructor_options": "..reconstructors"}
"""Names documented here that live in the reconstructors' registry."""

__all__ = sorted([*_EXPORTS, *_REEXPORTS])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    elif name in _REEXPORTS:
        module = importlib.import_module(_REEXPORTS[name], __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
