"""The COLMAP camera models users can ask for, and the order of their parameters (no heavy
imports: the options, the command line and the reconstructors share these)."""

from __future__ import annotations

CAMERA_TYPES = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL")
"""COLMAP camera models users can ask for."""

CAMERA_PARAMS = {"SIMPLE_PINHOLE": ("f", "cx", "cy"), "PINHOLE": ("fx", "fy", "cx", "cy"),
                 "SIMPLE_RADIAL": ("f", "cx", "cy", "k")}
"""The parameters of each camera model, in COLMAP's order."""
