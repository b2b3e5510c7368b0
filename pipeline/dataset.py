"""Kept for ``from pipeline.dataset import WindowDataset``: the training dataset lives in
:mod:`pipeline.io.dataset`."""

from .io.dataset import *  # noqa: F401,F403
