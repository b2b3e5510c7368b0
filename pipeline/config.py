"""Kept for ``from pipeline.config import PipelineConfig``: the configuration lives in
:mod:`pipeline.runner.config`."""

from .runner.config import *  # noqa: F401,F403
