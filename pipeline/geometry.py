"""Kept for ``from pipeline.geometry import ...``: the geometry lives in
:mod:`pipeline.core.geometry`."""

from .core.geometry import *  # noqa: F401,F403
