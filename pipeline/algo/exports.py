"""Per-window exports of a network's predictions, chosen with ``--export-format``.

``--export-format`` names formats joined by ``-`` (as Depth Anything 3's ``export_format``),
e.g. ``colmap-mini_npz-glb``. ``colmap`` (the window's ``sparse/`` model) is always written, by
the reconstructor itself; the others go to the window's ``exports/`` folder:

* ``mini_npz`` -> ``exports/mini.npz``: ``depth`` ``(S, H, W)`` float32 z-depth (world units,
  0 where the network saw no pixel), ``conf`` ``(S, H, W)`` float32 depth confidence (larger is
  better), ``extrinsics`` ``(S, 3, 4)`` float64 world-to-camera ``[R | t]`` (OpenCV axes; the
  world is frame 0's camera, so ``extrinsics[0] = [I | 0]``), ``intrinsics`` ``(S, 3, 3)``
  float64. Everything is on the ORIGINAL frames' pixel grid (``H, W`` the frames' size), with
  COLMAP's pixel convention (the centre of the top-left pixel is ``(0.5, 0.5)``). The cameras
  are the network's prediction (what the depth was predicted with); ``sparse/`` holds the
  bundle-adjusted ones.
* ``npz`` -> ``exports/full.npz``: the same keys plus ``image`` ``(S, H, W, 3)`` uint8 RGB
  frames and ``names`` ``(S,)`` frame names.
* ``glb`` -> ``exports/scene.glb``: a coloured point cloud unprojected from the depth where the
  confidence is at or above the ``conf_thresh_percentile``-th percentile of the window's
  confidences (of pixels with depth), at most ``num_max_points`` points (seeded subsample), plus
  one wireframe frustum per camera (frame 0's red, the others grey). Coordinates are the window's
  world (frame 0's camera) turned to glTF axes: ``(x, -y, -z)`` of the OpenCV world (y up,
  the first camera looking down -z). ``trimesh.load`` reads it back as a ``trimesh.Scene``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .network_sfm import WindowPredictions

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("colmap", "mini_npz", "npz", "glb")
"""Formats ``--export-format`` accepts."""

EXPORT_DIR = "exports"
"""A window's folder of exports."""

FILE_NAMES = {"mini_npz": "mini.npz", "npz": "full.npz", "glb": "scene.glb"}
"""File of each format inside ``exports/``."""

_GLTF_FROM_OPENCV = np.diag([1.0, -1.0, -1.0])


@dataclass(kw_only=True)
class ExportOptions:
    """What to export for each window, and how."""

    formats: tuple[str, ...] = ("colmap",)
    """Formats to write (``colmap`` is always among them); see :func:`parse_export_format`."""
    conf_thresh_percentile: float = 40.0
    """glb: points come from depth pixels whose confidence reaches this percentile (0-100)."""
    num_max_points: int = 1_000_000
    """glb: at most this many points."""
    seed: int = 0
    """glb: seed of the point subsample."""

    def __post_init__(self) -> None:
        unknown = set(self.formats) - set(EXPORT_FORMATS)
        if unknown:
            raise ValueError(f"unknown export format(s) {sorted(unknown)}; "
                             f"choose from {', '.join(EXPORT_FORMATS)}")
        if not 0.0 <= self.conf_thresh_percentile <= 100.0 or self.num_max_points < 1:
            raise ValueError("need 0 <= conf_thresh_percentile <= 100 and num_max_points >= 1")


def parse_export_format(text: str) -> tuple[str, ...]:
    """``"mini_npz-glb"`` -> ``("colmap", "mini_npz", "glb")``: ``colmap`` first and always,
    no duplicates.

    Raises:
        ValueError: an empty or unknown format name.
    """
    names = [n.strip() for n in text.split("-")]
    unknown = [n for n in names if n not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown} in {text!r}; "
                         f"choose from {', '.join(EXPORT_FORMATS)}, joined by '-'")
    return tuple(dict.fromkeys(["colmap", *names]))


def write_exports(window_dir: Path, preds: WindowPredictions, options: ExportOptions) -> list[Path]:
    """Write ``options.formats`` (but ``colmap``) of one window into ``window_dir/exports``.

    Args:
        window_dir: The window's (staging) folder.
        preds: The window's predictions on the original frames, with ``depth``,
            ``depth_conf`` and ``colors`` (see
            :class:`pipeline.algo.network_sfm.WindowPredictions`).
        options: :class:`ExportOptions`.

    Returns:
        The files written.
    """
    wanted = [f for f in options.formats if f != "colmap"]
    if not wanted:
        return []
    if preds.depth is None or preds.depth_conf is None or preds.colors is None:
        raise ValueError("exports need depth, confidence and colours in the predictions")
    folder = Path(window_dir) / EXPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"depth": preds.depth.astype(np.float32), "conf": preds.depth_conf.astype(np.float32),
              "extrinsics": preds.cam_from_world, "intrinsics": preds.intrinsics}
    written = []
    for fmt in wanted:
        path = folder / FILE_NAMES[fmt]
        if fmt == "mini_npz":
            np.savez_compressed(path, **arrays)
        elif fmt == "npz":
            np.savez_compressed(path, **arrays, image=preds.colors.astype(np.uint8),
                                names=np.array(preds.names))
        else:
            write_glb(path, preds, options)
        written.append(path)
    return written


def depth_points(preds: WindowPredictions, percentile: float, max_points: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """World points ``(N, 3)`` and their uint8 colours ``(N, 3)`` from the depth pixels whose
    confidence reaches the ``percentile``-th percentile (of pixels with depth > 0), at most
    ``max_points`` (seeded subsample). Pixel (col, row) sits at ``(col + 0.5, row + 0.5)``."""
    valid = preds.depth > 0
    if not valid.any():
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    keep = valid & (preds.depth_conf >= np.percentile(preds.depth_conf[valid], percentile))
    frame, rows, cols = np.nonzero(keep)
    if len(frame) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(frame), max_points, replace=False))
        frame, rows, cols = frame[pick], rows[pick], cols[pick]
    pix = np.stack([cols + 0.5, rows + 0.5, np.ones(len(cols))], axis=1)
    k_inv = np.linalg.inv(preds.intrinsics)[frame]
    cam = np.einsum("nij,nj->ni", k_inv, pix) * preds.depth[frame, rows, cols][:, None]
    pose = preds.cam_from_world[frame]
    world = np.einsum("nji,nj->ni", pose[:, :, :3], cam - pose[:, :, 3])
    return world, preds.colors[frame, rows, cols].astype(np.uint8)


def write_glb(path: Path, preds: WindowPredictions, options: ExportOptions) -> None:
    """The glb of :mod:`this module <pipeline.algo.exports>`: points plus camera frusta."""
    import trimesh

    points, colors = depth_points(preds, options.conf_thresh_percentile,
                                  options.num_max_points, options.seed)
    scene = trimesh.Scene()
    if len(points):
        rgba = np.c_[colors, np.full(len(colors), 255, np.uint8)]
        scene.add_geometry(trimesh.PointCloud(points @ _GLTF_FROM_OPENCV, colors=rgba),
                           geom_name="points")
    extent = _scene_scale(points)
    for i in range(len(preds.names)):
        frustum = _frustum(preds, i, 0.1 * extent) @ _GLTF_FROM_OPENCV
        colour = [255, 0, 0, 255] if i == 0 else [160, 160, 160, 255]
        lines = trimesh.load_path(frustum[_FRUSTUM_EDGES])
        lines.colors = np.tile(colour, (len(lines.entities), 1))
        scene.add_geometry(lines, geom_name=f"camera_{i:03d}")
    path.write_bytes(scene.export(file_type="glb"))
    logger.debug("wrote %s: %d points, %d cameras", path, len(points), len(preds.names))


_FRUSTUM_EDGES = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]])
"""Segments of a frustum: centre to the four image corners, then the image rectangle."""


def _scene_scale(points: np.ndarray) -> float:
    """Size of the scene: the spread of the middle 90 % of the points (1 without points)."""
    if len(points) < 2:
        return 1.0
    spread = np.linalg.norm(np.percentile(points, 95, axis=0) - np.percentile(points, 5, axis=0))
    return float(spread) if spread > 0 else 1.0


def _frustum(preds: WindowPredictions, i: int, depth: float) -> np.ndarray:
    """``(5, 3)`` world points of camera ``i``: its centre and its image corners at ``depth``."""
    w, h = preds.image_sizes[i]
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
    cam = corners @ np.linalg.inv(preds.intrinsics[i]).T * depth
    pose = preds.cam_from_world[i]
    pts = np.vstack([np.zeros(3), cam])
    return (pts - pose[:, 3]) @ pose[:, :3]
