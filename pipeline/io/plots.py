"""Pictures people read: a camera path seen from above, with axes, scale and legend.

The path is drawn in the plane of its two main directions (a principal-component view, so that
a hand-held walk fills the picture whatever its world frame), with the start and end marked.
With ground truth, the estimated path (aligned onto it) is coloured by each frame's position
error, the ground truth is drawn dashed, and a colour bar gives the error scale.

What the axes, units and legend say is also written into the PNG's text chunks (``Title``,
``Axes``, ``Units``, ``Legend``), so that a program can check them without reading pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _figure(size: tuple[float, float], dpi: int):
    """A matplotlib figure drawn off-screen (no pyplot: no display, no global backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is in requirements.txt
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    return Figure(figsize=size, dpi=dpi)


def plane_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the two main directions ``(2, 3)`` of ``points`` ``(N, 3)`` (the x and y axes
    of an identity basis when there are fewer than three points)."""
    mean = points.mean(axis=0)
    if len(points) < 3:
        return mean, np.eye(3)[:2]
    return mean, np.linalg.svd(points - mean, full_matrices=False)[2][:2]


def plot_trajectory(png: Path, centres: np.ndarray, *, title: str, units: str,
                    ground_truth: np.ndarray | None = None,
                    errors: np.ndarray | None = None) -> None:
    """Write a top-down picture of a camera path.

    Args:
        png: The file to write.
        centres: ``(N, 3)`` camera centres in sequence order (aligned onto ``ground_truth`` when
            one is given).
        title: The picture's title (e.g. the segment and its error).
        units: Units of the coordinates (``"m"``, or ``"scene units"`` for an arbitrary scale).
        ground_truth: ``(N, 3)`` ground-truth centres paired row by row with ``centres``.
        errors: ``(N,)`` position error of each frame (same units), shown as colour.
    """
    from matplotlib.collections import LineCollection

    centres = np.asarray(centres, dtype=float).reshape(-1, 3)
    reference = centres if ground_truth is None else np.asarray(ground_truth, float)
    mean, axes = plane_axes(reference)
    flat = (centres - mean) @ axes.T
    span = np.ptp(np.concatenate([flat, (reference - mean) @ axes.T]), axis=0) + 1e-12
    height = float(np.clip(7.0 * span[1] / span[0], 2.5, 7.0)) + 1.6  # room for labels
    fig = _figure((8.0, height), 110)
    ax = fig.add_subplot()
    legend = []
    if ground_truth is not None:
        gt = (reference - mean) @ axes.T
        ax.plot(gt[:, 0], gt[:, 1], "--", color="0.35", lw=1.2, label="ground truth")
        legend.append("ground truth")
    if errors is not None and len(flat) > 1:
        segments = np.stack([flat[:-1], flat[1:]], axis=1)
        colour = np.asarray(errors, float)
        lines = LineCollection(segments, cmap="viridis", linewidths=2.2,
                               label="estimated (colour: error)")
        lines.set_array((colour[:-1] + colour[1:]) / 2)
        ax.add_collection(lines)
        fig.colorbar(lines, ax=ax, label=f"position error ({units})", fraction=0.04, pad=0.02)
        legend.append("estimated (colour: error)")
    else:
        ax.plot(flat[:, 0], flat[:, 1], "-", color="tab:blue", lw=2, label="estimated")
        legend.append("estimated")
    ax.plot(*flat[0], "o", color="tab:green", ms=8, label="start")
    ax.plot(*flat[-1], "s", color="tab:red", ms=8, label="end")
    legend += ["start", "end"]
    xlabel, ylabel = f"main direction ({units})", f"second direction ({units})"
    ax.set(xlabel=xlabel, ylabel=ylabel, aspect="equal")
    ax.set_title(title, fontsize="medium", wrap=True)
    ax.autoscale_view()
    ax.grid(True, lw=0.4, alpha=0.6)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    metadata = {"Title": title, "Axes": f"x: {xlabel}; y: {ylabel}", "Units": units,
                "Legend": ", ".join(legend)}
    fig.savefig(png, metadata=metadata)
