"""What the service's web page shows of an output folder: its windows' records, its merged
results, a window's frames as thumbnails and its points and cameras, read from the files a run
wrote (never changed here)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from .output import open_window_model, read_window_cameras, read_window_info

MAX_VIEW_POINTS = 60_000
"""Points sent to the 3D view at most (every k-th of the model's, in id order)."""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def output_windows(out: Path) -> list[dict[str, Any]]:
    """Every window ``out`` holds a record of, as in ``run.json`` (in a run over many, each
    sequence's, ``path`` then relative to ``out`` and ``sequence`` added); windows of a run
    still under way appear as they finish."""
    dataset = _read_json(out / "dataset.json")
    if dataset is not None:
        windows = []
        for sequence in dataset.get("sequences", []):
            run = _read_json(out / sequence["name"] / "run.json") or {}
            windows += [dict(w, sequence=sequence["name"], path=f"{sequence['name']}/{w['path']}")
                        for w in run.get("windows", [])]
        return windows
    return list((_read_json(out / "run.json") or {}).get("windows", []))


def output_merges(out: Path) -> list[dict[str, Any]]:
    """The merged results under ``out`` (``merged/``, ``merged/segment_*``, each sequence's):
    the folder relative to ``out``, its report's counts and its trajectory picture if any."""
    merges = []
    for report in sorted(out.glob("merged/merge.json")) + sorted(out.glob("*/merged/merge.json")):
        data = _read_json(report) or {}
        for folder in [report.parent, *sorted(report.parent.glob("segment_*"))]:
            picture = folder / "trajectory.png"
            if folder != report.parent and not folder.is_dir():
                continue
            merges.append({
                "folder": str(folder.relative_to(out)),
                "segments": len(data.get("segments", [])),
                "windows": data.get("num_windows") or data.get("windows_merged"),
                "picture": str(picture.relative_to(out)) if picture.is_file() else None})
    return merges


def window_details(window_dir: Path) -> dict[str, Any]:
    """A window's record (``window_info.json``) and its frames' names in ``images/``.

    Raises:
        InputError: no window record there.
    """
    info = read_window_info(window_dir)
    if info is None:
        raise InputError(f"no window record in {window_dir}")
    images = window_dir / "images"
    names = sorted(p.name for p in images.iterdir()) if images.is_dir() else []
    return {"info": info, "images": names}


def window_scene(window_dir: Path, max_points: int = MAX_VIEW_POINTS) -> dict[str, Any]:
    """A window's points and cameras for a 3D view, in the window's world (its first frame's
    camera, OpenCV axes: x right, y down, z forward).

    Returns:
        ``points``: flat ``[x, y, z, ...]`` (at most ``max_points``, every k-th in id order);
        ``colors``: flat ``[r, g, b, ...]`` in 0..255; ``cameras``: per posed frame its ``name``,
        ``center`` (3), ``rotation`` (3x3 world-from-camera, rows), ``fx``, ``fy``, ``width``,
        ``height``; ``num_points``: the model's point count.

    Raises:
        InputError: no COLMAP model can be read there.
    """
    rec = open_window_model(window_dir)
    ids = sorted(rec.points3D.keys())
    step = max(1, -(-len(ids) // max_points))
    chosen = ids[::step]
    xyz = np.array([rec.points3D[i].xyz for i in chosen], dtype=float).reshape(-1, 3)
    rgb = np.array([rec.points3D[i].color for i in chosen], dtype=np.uint8).reshape(-1, 3)
    cameras = []
    for name, cam in read_window_cameras(window_dir).items():
        R, t = cam.cam_from_world[:, :3], cam.cam_from_world[:, 3]
        cameras.append({"name": name, "center": (-R.T @ t).round(6).tolist(),
                        "rotation": R.T.round(6).tolist(), "fx": float(cam.K[0, 0]),
                        "fy": float(cam.K[1, 1]), "width": cam.size[0], "height": cam.size[1]})
    return {"points": xyz.round(5).ravel().tolist(), "colors": rgb.ravel().tolist(),
            "cameras": cameras, "num_points": len(ids)}


def thumbnail(path: Path, size: int) -> bytes:
    """``path`` (an image) as a JPEG whose longer side is at most ``size`` pixels.

    Raises:
        InputError: not an image that can be read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=85)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read the image {path.name}: {exc}") from exc
    return buffer.getvalue()
