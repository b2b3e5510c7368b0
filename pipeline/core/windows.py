"""Sliding windows over a frame sequence, and batches of windows of one shape.

This layer knows nothing of models: a window is a run of consecutive frames with a stable global
index, and a batch is a group of windows that share frame count and image size, so that a
reconstructor can stack them into one ``[B, S, 3, H, W]`` tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

WINDOWS_PER_BATCH_DIR = 4
"""Windows per ``batch_XXX`` output folder: window ``i`` lives in ``batch_{i // 4:03d}``.

Fixed, so that output paths never depend on the batch size a run used: a rerun with another
``--window-batch-size`` finds the windows an earlier run finished.
"""


@dataclass(frozen=True)
class Window(Generic[T]):
    """A run of consecutive frames.

    Attributes:
        index: Global window index, stable for a given sequence, size and stride.
        start: Sequence index of the first frame.
        items: The window's frames (paths, or :class:`pipeline.io.frames.Frame` objects).
        sequence: In a run over many sequences, the sequence's name (its folder under the
            output folder); empty in a run over one.
    """

    index: int
    start: int
    items: tuple[T, ...]
    sequence: str = ""

    @property
    def key(self) -> tuple[str, int]:
        """``(sequence, index)``: unique among the windows of a run over many sequences."""
        return self.sequence, self.index

    @property
    def stop(self) -> int:
        """Sequence index one past the last frame."""
        return self.start + len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def relative_dir(self) -> Path:
        """Output folder of this window, relative to the run's output folder."""
        return window_relative_dir(self.index)


def window_relative_dir(index: int) -> Path:
    """``batch_XXX/window_YYY`` for global window ``index`` (see ``WINDOWS_PER_BATCH_DIR``)."""
    return Path(f"batch_{index // WINDOWS_PER_BATCH_DIR:03d}") / f"window_{index:03d}"


def window_starts(num_frames: int, window_size: int, stride: int) -> list[int]:
    """Start indices of the windows; see :func:`create_windows` for the rules."""
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
        raise ValueError(f"window size must be an integer >= 2, got {window_size!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"window stride must be an integer >= 1, got {stride!r}")
    if stride > window_size:
        raise ValueError(
            f"window stride ({stride}) must not exceed the window size ({window_size}), "
            "or frames between windows would be skipped"
        )
    if num_frames < 2:
        raise ValueError(f"need at least 2 frames to make a window, got {num_frames}")
    if num_frames <= window_size:
        return [0]
    starts = list(range(0, num_frames - window_size + 1, stride))
    if starts[-1] + window_size < num_frames:
        starts.append(num_frames - window_size)
    return starts


def create_windows(image_paths: Sequence[T], window_size: int, stride: int) -> list[Window[T]]:
    """Overlapping windows that cover every frame.

    Windows start every ``stride`` frames. When the stride does not divide the sequence evenly, a
    last window is added that ends on the last frame (it overlaps its neighbour more); no window
    is ever repeated. A sequence shorter than ``window_size`` (but of at least 2 frames) gives one
    window of all its frames.

    Args:
        image_paths: The frames in sequence order (paths or frame objects).
        window_size: Frames per window, at least 2.
        stride: Frames between the starts of consecutive windows, 1..window_size.

    Returns:
        Windows in order; window ``i`` has global index ``i``.

    Raises:
        ValueError: invalid size or stride, or fewer than 2 frames.
    """
    items = tuple(image_paths)
    starts = window_starts(len(items), window_size, stride)
    return [Window(i, s, items[s:s + window_size]) for i, s in enumerate(starts)]


@dataclass(frozen=True)
class Batch(Generic[T]):
    """Windows processed together.

    Attributes:
        index: Position of the batch in this run's processing order.
        windows: One or more windows of equal frame count and image size.
        shape: The shared ``(frame count, image sizes)`` key.
    """

    index: int
    windows: tuple[Window[T], ...]
    shape: tuple

    def __len__(self) -> int:
        return len(self.windows)


def make_batches(
    windows: Sequence[Window[T]],
    batch_size: int,
    size_of: Callable[[T], tuple[int, int]] | None = None,
) -> list[Batch[T]]:
    """Group windows into batches of at most ``batch_size`` windows of the same shape.

    Windows are taken in order; a window joins the open batch of its shape, and a batch is
    closed when full. The shape is the frame count plus, when ``size_of`` is given, the tuple of
    per-frame ``(width, height)`` sizes (so mixed-size windows only batch with identical ones).

    Raises:
        ValueError: ``batch_size`` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"window batch size must be an integer >= 1, got {batch_size!r}")
    open_batches: dict[tuple, list[Window[T]]] = {}
    closed: list[tuple[tuple, list[Window[T]]]] = []
    for window in windows:
        sizes = tuple(size_of(item) for item in window.items) if size_of else ()
        key = (len(window), sizes)
        group = open_batches.setdefault(key, [])
        group.append(window)
        if len(group) == batch_size:
            closed.append((key, open_batches.pop(key)))
    closed.extend(open_batches.items())
    closed.sort(key=lambda kv: kv[1][0].index)
    return [Batch(i, tuple(group), key) for i, (key, group) in enumerate(closed)]


def take_batch(
    windows: Sequence[Window[T]],
    batch_size: int,
    index: int,
    size_of: Callable[[T], tuple[int, int]] | None = None,
) -> tuple[Batch[T], list[Window[T]]]:
    """The next batch of a queue of windows, for batch sizes chosen as the run goes.

    The batch holds the first window and the next ones of its shape (as in
    :func:`make_batches`), at most ``batch_size``; the rest keep their order.

    Returns:
        The batch (numbered ``index``) and the windows still to do.

    Raises:
        ValueError: no windows, or ``batch_size`` is not a positive integer.
    """
    if not windows:
        raise ValueError("no windows left to batch")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"window batch size must be an integer >= 1, got {batch_size!r}")

    def key(window: Window[T]) -> tuple:
        return (len(window), tuple(size_of(item) for item in window.items) if size_of else ())

    shape = key(windows[0])
    chosen: list[Window[T]] = []
    rest: list[Window[T]] = []
    for window in windows:
        if len(chosen) < batch_size and key(window) == shape:
            chosen.append(window)
        else:
            rest.append(window)
    return Batch(index, tuple(chosen), shape), rest
