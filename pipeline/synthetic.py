"""Kept for ``from pipeline.synthetic import ...``: synthetic scenes live in
:mod:`pipeline.io.synthetic`."""

from .io.synthetic import *  # noqa: F401,F403
