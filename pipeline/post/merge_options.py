"""The options of merging windows (``--merge`` and ``python -m pipeline.merge``), apart from
the merging itself so that the command line reads them without importing it."""

from __future__ import annotations

from dataclasses import dataclass

from ..infra.options import option

MERGE = "merge"
"""The ``--help`` section of the merge flags."""


@dataclass(kw_only=True)
class MergeOptions:
    """Settings of :func:`pipeline.post.merge.merge_output` (``--merge``, and
    ``python -m pipeline.merge``)."""

    min_shared_frames: int = option(3, group=MERGE, kind="int", metavar="N")
    """Windows sharing fewer registered frames than this are not joined."""
    depth_grid: int = option(32, group=MERGE, kind="int", metavar="N")
    """Shared frames with predicted depth in both windows (vggt --save-depth) add
    correspondences on a grid of this many columns (rows in proportion): the same pixel
    back-projected by each window."""
    max_camera_error: float = option(0.05, group=MERGE, kind="positive_float",
                                     metavar="FRACTION")
    """A pair is rejected when, after alignment, the shared camera centres differ (RMS) by more
    than this fraction of the scene depth (the median camera-to-point distance of the window)."""
    refine: bool = option(True, group=MERGE, kind="bool")
    """Refine all window transforms jointly after chaining them (a Sim(3) pose graph)."""
    voxel_fraction: float = option(0.002, group=MERGE, kind="positive_float",
                                   metavar="FRACTION")
    """Voxel size for downsampling the merged points, as a fraction of their extent (the
    diagonal of the box holding the central 98% of the points)."""
