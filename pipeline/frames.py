"""Kept for ``from pipeline.frames import list_image_files, prepare_frames``: frames live in
:mod:`pipeline.io.frames`."""

from .io.frames import *  # noqa: F401,F403
