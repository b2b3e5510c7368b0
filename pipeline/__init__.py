"""Batch window reconstruction: overlapping windows of a frame sequence turned into COLMAP
scenes."""

__version__ = "0.1.0"
