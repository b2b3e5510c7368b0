"""Kept for ``from pipeline.windows import create_windows``: windows live in
:mod:`pipeline.core.windows`."""

from .core.windows import *  # noqa: F401,F403
