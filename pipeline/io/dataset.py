"""Windows straight into training: a ``torch.utils.data.Dataset`` over an output folder.

:class:`WindowDataset` serves the ok windows of a run (one sequence, or a run over many with
``--input-root``/``--input-list``, read from ``OUT/index.jsonl``). Each item is one window's
*registered* frames, in frame order, with what a multi-view network trains on::

    from torch.utils.data import DataLoader
    from pipeline.io.dataset import WindowDataset

    data = WindowDataset("out", size=(224, 224), num_frames=4)  # every item 4 frames
    loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=4)
    for batch in loader:
        images = batch["images"]            # [B, 4, 224, 224, 3] uint8
        K, pose = batch["intrinsics"], batch["cam_from_world"]

Whole windows (``num_frames=None``) have as many frames as each window registered; batch them
with :class:`FrameCountBatchSampler`, which puts windows of one frame count together.

Conventions: ``intrinsics`` are pinhole ``K`` in pixels of the returned images, COLMAP's pixel
convention (the top-left pixel's centre is ``(0.5, 0.5)``, so resizing scales ``K`` exactly);
``cam_from_world`` maps the window's world to OpenCV camera axes (x right, y down, z forward);
the window's world is its first registered frame's camera (for every reconstructor), with the
scale of its model. Depth (z, world units) and confidence come from ``depth/`` when
the run saved them (``--save-depth``), resized with nearest neighbours; 0 where unknown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import InputError
from ..core.results import STATUS_OK

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowEntry:
    """One ok window of the dataset."""

    sequence: str
    """Its sequence ("" in a run over one)."""
    index: int
    """Its window index in its sequence."""
    folder: Path
    """Its window folder."""


def find_windows(output_dir: str | Path) -> list[WindowEntry]:
    """The ok windows of ``output_dir``: from ``index.jsonl`` (a run over many sequences), else
    from the run plan of a run over one (whole, ok windows made for that plan only).

    Raises:
        InputError: neither an index nor a run plan is there.
    """
    from .output import iter_windows
    from .sequences import INDEX

    out = Path(output_dir)
    index = out / INDEX
    if not index.is_file():
        return [WindowEntry("", w.index, w.path) for w in iter_windows(out, ok=True)]
    entries, trusted = [], {}
    for entry in read_index(index):
        if entry.get("status") != STATUS_OK or entry.get("window_index") is None:
            continue
        sequence = entry["sequence"]
        if sequence not in trusted:  # whole, made for the sequence's plan, record = model
            try:
                trusted[sequence] = {w.path.resolve() for w in iter_windows(out / sequence,
                                                                            ok=True)}
            except InputError:
                trusted[sequence] = set()
        folder = out / entry["folder"]
        if folder.resolve() in trusted[sequence]:
            entries.append(WindowEntry(sequence, int(entry["window_index"]), folder))
        else:
            logger.warning("leaving out %s: the index says ok, but the window is not whole or "
                           "its record does not agree with its model", folder)
    return entries


def read_index(index: Path) -> list[dict[str, Any]]:
    """The entries of a dataset's ``index.jsonl``.

    Raises:
        InputError: the file cannot be read, or a line is not a JSON object (file and line
            named).
    """
    try:
        lines = index.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {index}: {exc}") from exc
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise InputError(f"{index}:{number}: not a JSON object (the index is damaged; a "
                             "rerun of the dataset writes it again)")
        entries.append(entry)
    return entries


class WindowDataset(torch.utils.data.Dataset):
    """The ok windows of an output folder as training items (see the module docstring).

    Each item is a dict:

    - ``images``: ``[S, H, W, 3]`` uint8 (the original frames, or resized to ``size``; the
      frames of a colmap window whose frames differ in size are resized to its ``image_size``,
      the size most of them have);
    - ``intrinsics``: ``[S, 3, 3]`` float32 pinhole ``K`` of those images;
    - ``distortion``: ``[S, 4]`` float32 lens distortion as OpenCV's ``(k1, k2, p1, p2)`` on
      normalised coordinates (zeros for pinhole cameras; ``k1`` of ``--camera-type
      SIMPLE_RADIAL``): the images are not undistorted, so project with it
      (``cv2.projectPoints``) or undistort (``cv2.undistort``) before using ``K`` alone;
    - ``cam_from_world``: ``[S, 3, 4]`` float32, OpenCV axes, the window's world;
    - ``depth``, ``confidence``: ``[S, H, W]`` float32, when saved (else absent);
    - ``frames``: the ``S`` frame names; ``sequence``, ``window_index``.

    ``S`` is ``num_frames`` when given: the window's registered frames spread evenly from its
    first to its last (``round(linspace(0, R - 1, S))`` of its ``R`` frames, in order, so that
    the first is the window's world and the baseline is the window's whole), and windows with
    fewer than ``S`` registered frames are left out (counted in one log line). Without it, ``S``
    is each window's number of registered frames: batch those with
    :class:`FrameCountBatchSampler`. Items are read when asked for, so the dataset pickles
    cheaply and works with ``DataLoader(num_workers > 0)``.
    """

    def __init__(self, output_dir: str | Path, *, size: tuple[int, int] | None = None,
                 num_frames: int | None = None, with_depth: bool = True,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """
        Args:
            output_dir: A run's output folder.
            size: ``(height, width)`` to resize every frame to (bilinear; intrinsics scaled to
                match); ``None``: original sizes.
            num_frames: Frames of every item (see the class docstring); ``None``: each
                window's registered frames.
            with_depth: Return depth and confidence when the window has them.
            transform: Applied to each item last.

        Raises:
            InputError: the folder holds no run, ``size`` is not two positive integers, or
                ``num_frames`` not a positive integer.
        """
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise InputError(f"size must be (height, width) in pixels, got {size!r}")
        if num_frames is not None and (isinstance(num_frames, bool)
                                       or not isinstance(num_frames, int) or num_frames < 1):
            raise InputError(f"num_frames must be a positive integer, got {num_frames!r}")
        self.output_dir = Path(output_dir)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.num_frames = num_frames
        self.with_depth = with_depth
        self.transform = transform
        self.windows = find_windows(self.output_dir)
        self.frame_counts = [_registered_count(w.folder) for w in self.windows]
        """Registered frames of each window, in :attr:`windows` order (before ``num_frames``
        picks from them)."""
        if num_frames is not None:
            kept = [i for i, n in enumerate(self.frame_counts) if n >= num_frames]
            if len(kept) < len(self.windows):
                logger.info("WindowDataset: left out %d of %d windows with fewer than %d "
                            "registered frames", len(self.windows) - len(kept),
                            len(self.windows), num_frames)
            self.windows = [self.windows[i] for i in kept]
            self.frame_counts = [self.frame_counts[i] for i in kept]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from .output import read_window_cameras, read_window_info

        entry = self.windows[i]
        info = read_window_info(entry.folder)
        cameras = read_window_cameras(entry.folder)
        names = pick_frames([n for n in info["frames"] if n in cameras], self.num_frames)
        sources = dict(zip(info["frames"], info.get("sources") or info["frames"]))
        images, intrinsics, distortion, depth, conf = [], [], [], [], []
        size = self.size  # frames of a (colmap) window of mixed sizes: all to its image_size
        if size is None and len({tuple(s) for s in info.get("image_sizes") or []}) > 1:
            size = (int(info["image_size"][1]), int(info["image_size"][0]))
        for name in names:
            image = _read_image(entry.folder / "images" / name, sources[name])
            scale = (1.0, 1.0)
            if size is not None and image.shape[:2] != size:
                h, w = image.shape[:2]
                scale = (size[1] / w, size[0] / h)
                image = np.asarray(Image.fromarray(image).resize(
                    (size[1], size[0]), Image.BILINEAR))
            images.append(image)
            intrinsics.append(scale_intrinsics(cameras[name].K, *scale))
            distortion.append(cameras[name].distortion)
            if self.with_depth:
                maps = _read_depth(entry.folder / "depth" / f"{Path(name).stem}.npz",
                                   image.shape[:2])
                if maps is not None:
                    depth.append(maps[0])
                    conf.append(maps[1])
        item: dict[str, Any] = {
            "images": torch.from_numpy(np.stack(images)),
            "intrinsics": torch.from_numpy(np.stack(intrinsics).astype(np.float32)),
            "distortion": torch.from_numpy(np.stack(distortion).astype(np.float32)),
            "cam_from_world": torch.from_numpy(np.stack(
                [cameras[n].cam_from_world for n in names]).astype(np.float32)),
            "frames": names, "sequence": entry.sequence, "window_index": entry.index,
        }
        if depth and len(depth) == len(names):
            item["depth"] = torch.from_numpy(np.stack(depth))
            item["confidence"] = torch.from_numpy(np.stack(conf))
        return self.transform(item) if self.transform is not None else item


def pick_frames(names: list[str], num_frames: int | None) -> list[str]:
    """``num_frames`` of ``names`` spread evenly from the first to the last, in order (all of
    them when ``num_frames`` is None).

    Raises:
        InputError: fewer names than ``num_frames`` (the window changed since the dataset was
            made).
    """
    if num_frames is None:
        return names
    if len(names) < num_frames:
        raise InputError(f"a window has {len(names)} registered frames now, fewer than "
                         f"num_frames={num_frames}; make the dataset again")
    return [names[int(i)] for i in np.round(np.linspace(0, len(names) - 1, num_frames))]


class FrameCountBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of windows with the same number of frames, for whole windows
    (``WindowDataset(num_frames=None)``) that the default collate can stack::

        loader = DataLoader(data, batch_sampler=FrameCountBatchSampler(data, batch_size=4))

    Windows are grouped by their frame count; each group is cut into batches of
    ``batch_size`` (its last batch smaller, or dropped with ``drop_last``). With ``shuffle``,
    the windows of each group and the order of the batches are shuffled from ``seed`` and the
    epoch (:meth:`set_epoch`), so every epoch differs and every run repeats.
    """

    def __init__(self, dataset: WindowDataset, batch_size: int, *, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.counts = list(dataset.frame_counts if dataset.num_frames is None
                           else [dataset.num_frames] * len(dataset))
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration shuffles for."""
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for count in sorted(set(self.counts)):
            group = [i for i, n in enumerate(self.counts) if n == count]
            if self.shuffle:
                group = [group[j] for j in rng.permutation(len(group))]
            for start in range(0, len(group), self.batch_size):
                batch = group[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def _registered_count(folder: Path) -> int:
    """How many frames the window registered (its record, which the dataset trusts only
    when it agrees with the model: :func:`find_windows`)."""
    from .output import read_window_info

    info = read_window_info(folder)
    registered = info.get("registered_frames")
    return len(registered) if registered is not None else int(info.get("num_registered") or 0)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """``K`` (COLMAP convention) for an image resized by ``sx`` horizontally and ``sy``
    vertically: exact, since pixel ``(u, v)`` of the original covers ``[u, u+1) x [v, v+1)``
    and maps to ``[sx u, sx (u+1)) x [sy v, sy (v+1))``."""
    out = np.array(K, dtype=np.float64)
    out[0] *= sx
    out[1] *= sy
    return out


def _read_image(link: Path, source: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a window's frame: its ``images/`` entry, else its source."""
    from .frames import load_image

    path = link if link.exists() else Path(source)
    if not path.exists():
        raise InputError(f"frame not found: {link} (source {source})")
    return load_image(path)


def _read_depth(path: Path, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Depth and confidence of a frame at ``hw`` (nearest neighbours), or None."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        depth, conf = data["depth"].astype(np.float32), data["confidence"].astype(np.float32)
    if depth.shape != hw:
        rows = (np.arange(hw[0]) + 0.5) * depth.shape[0] / hw[0]
        cols = (np.arange(hw[1]) + 0.5) * depth.shape[1] / hw[1]
        r, c = rows.astype(int)[:, None], cols.astype(int)[None, :]
        depth, conf = depth[r, c], conf[r, c]
    return depth, conf
