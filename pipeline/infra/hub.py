"""Hugging Face hub names and switches the pipeline reads (no heavy imports)."""

from __future__ import annotations

import os

VGGT_1B = "facebook/VGGT-1B"
"""The released VGGT checkpoint on the Hugging Face hub (vggt's default ``--model``)."""


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read now, not at import as huggingface_hub does)."""
    return env_flag("HF_HUB_OFFLINE")


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
