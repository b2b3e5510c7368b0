"""Kept for ``from pipeline.config import PipelineConfig``: the configuration lives in
:mod:`pipeline.run.config`."""

from .run.config import *  # noqa: F401,F403
