"""Kept for ``from pipeline.runner import run, process_window_batch``: the runner lives in
:mod:`pipeline.run`."""

from .run.runner import *  # noqa: F401,F403
