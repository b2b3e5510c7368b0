"""What the network reconstructors (vggt, da3) share: loading, batching, out-of-memory recovery,
and mapping network-grid predictions back to the original frames.

A :class:`NetworkReconstructor` decodes each batch's frames once, stacks the windows on the
network grid as ``[B, S, 3, H, W]`` RGB in [0, 1], runs one forward for the batch, then finishes
each window on its own (a window's failure never stops the others). Subclasses say how to run
the forward (:meth:`~NetworkReconstructor._forward`), how to finish a window
(:meth:`~NetworkReconstructor._finish_window`) and which smaller settings to retry with when a
single window runs out of memory (:meth:`~NetworkReconstructor._fallbacks`).

Pixel conventions are those of :mod:`pipeline.preprocess` ("colmap": the centre of the top-left
pixel is ``(0.5, 0.5)``).
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..frames import Frame, load_image
from ..preprocess import FrameTransform, PreprocessOptions, preprocess_frames
from ..sfm import (SfmOptions, Tracks, WindowPredictions, anchor_predictions, run_sfm,
                   write_sfm_result)
from ..windows import Window
from . import Reconstructor, WindowResult, peak_memory

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class NetworkBatch:
    """A batch brought to the network grid, plus what maps it back."""

    images: torch.Tensor
    """``[B, S, 3, H, W]`` RGB in [0, 1]."""
    originals: list[list[np.ndarray]]
    """Per window and frame, the ``(h, w, 3)`` uint8 original frame."""
    transforms: list[list[FrameTransform]]
    """Per window and frame, the map between original and network pixels."""


class NetworkReconstructor(Reconstructor):
    """A network run once per batch of stacked windows, then per-window work (see module doc).

    Subclasses set ``self.preprocess_options`` (a :class:`PreprocessOptions`) and
    ``self.allow_approximate`` before use, and call :meth:`_load` from their ``__init__``.
    """

    preprocess_options: PreprocessOptions
    allow_approximate: bool = False

    def _load(self, model: str, device: str, dtype: str, colmap_log_level: int) -> None:
        """Load checkpoint ``model`` onto ``device`` (``auto``: CUDA if any) with compute ``dtype``."""
        import pycolmap

        from ..models import load_model, resolve_dtype

        pycolmap.logging.minloglevel = colmap_log_level
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.dtype = resolve_dtype(dtype, self.torch_device)
        t = time.perf_counter()
        self.model = load_model(model, device=self.torch_device, dtype=self.dtype)
        self.load_seconds = time.perf_counter() - t
        logger.info("loaded %s on %s (%s) in %.1f s", model, self.device,
                    str(self.dtype).replace("torch.", ""), self.load_seconds)

    def close(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    @abc.abstractmethod
    def _forward(self, images: torch.Tensor, options: Any) -> dict[str, Any]:
        """One forward of ``images`` ``[B, S, 3, H, W]`` with forward ``options``."""

    @abc.abstractmethod
    def _finish_window(self, b: int, window: Window[Frame], staging: Path, batch: NetworkBatch,
                       out: dict[str, Any], options: Any) -> WindowResult:
        """Window ``b`` of the batch's outputs -> its model in ``staging``."""

    @abc.abstractmethod
    def _fallbacks(self, frames: int) -> list[Any]:
        """Forward options to try, in order, for one window of ``frames`` that ran out of memory
        (frame batching only when ``allow_approximate``)."""

    def _approximate_fallbacks(self, smallest: Any, frames: int) -> list[Any]:
        """With ``allow_approximate``: ``smallest`` with frame batching in groups of about a
        half, a quarter, then 2 of the window's ``frames`` (each smaller than the window)."""
        if not self.allow_approximate:
            return []
        groups = (max(2, frames // 2), max(2, frames // 4), 2)
        return [replace(smallest, frame_batch_size=g) for g in groups if g < frames]

    @staticmethod
    @abc.abstractmethod
    def _describe_fallback(options: Any) -> str:
        """One line saying what a fallback changes (``approximate`` when it is)."""

    def reconstruct_batch(self, windows: Sequence[Window[Frame]],
                          staging_dirs: Sequence[Path]) -> list[WindowResult]:
        """Reconstruct the batch, recovering from running out of memory.

        On ``torch.OutOfMemoryError`` the cache is freed and the batch is halved and retried; a
        single window is retried with each of :meth:`_fallbacks`; only then does it fail, with
        the reason.
        """
        try:
            return self._reconstruct(windows, staging_dirs, self.forward_options)
        except torch.OutOfMemoryError:
            self._free_memory()
        if len(windows) > 1:
            half = len(windows) // 2
            logger.warning("out of memory with %d windows per batch; retrying with %d",
                           len(windows), half)
            return (self.reconstruct_batch(windows[:half], staging_dirs[:half])
                    + self.reconstruct_batch(windows[half:], staging_dirs[half:]))
        for options in self._fallbacks(len(windows[0])):
            logger.warning("window %d: out of memory; retrying with %s", windows[0].index,
                           self._describe_fallback(options))
            try:
                results = self._reconstruct(windows, staging_dirs, options)
                results[0].details["memory_fallback"] = self._describe_fallback(options)
                return results
            except torch.OutOfMemoryError:
                self._free_memory()
        return [WindowResult.failure(
            "out of memory even one window at a time with the smallest chunks"
            + ("" if self.allow_approximate else
               " (--allow-approximate would also try frame batching)"))]

    def _free_memory(self) -> None:
        import gc

        gc.collect()
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def _reconstruct(self, windows: Sequence[Window[Frame]], staging_dirs: Sequence[Path],
                     options: Any) -> list[WindowResult]:
        """One forward for the batch, then each window (out of memory propagates)."""
        t = time.perf_counter()
        batch = self._prepare(windows)
        prep = time.perf_counter() - t
        if self.torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.torch_device)
        t = time.perf_counter()
        out = self._forward(batch.images, options)
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize()
        forward = time.perf_counter() - t
        results = []
        for b, (window, staging) in enumerate(zip(windows, staging_dirs)):
            try:
                result = self._finish_window(b, window, staging, batch, out, options)
                result.timings = {"preprocess": prep, "forward": forward, **result.timings}
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - one window never stops the others
                logger.debug("window %d failed", window.index, exc_info=True)
                result = WindowResult.failure(f"{type(exc).__name__}: {exc}")
            results.append(result)
        return results

    def _prepare(self, windows: Sequence[Window[Frame]]) -> NetworkBatch:
        """Decode every frame once and stack the windows on the network grid."""
        images, originals, transforms = [], [], []
        for window in windows:
            frames = [load_image(f.path) for f in window.items]
            prepared = preprocess_frames(frames, self.preprocess_options)
            images.append(prepared.images)
            originals.append(frames)
            transforms.append(prepared.transforms)
        return NetworkBatch(torch.stack(images), originals, transforms)

    def _sfm_result(self, preds: WindowPredictions, tracks: Tracks | None, staging: Path,
                    sfm: SfmOptions, save_depth: bool, timings: dict[str, float]) -> WindowResult:
        """Run the SfM stage, write ``staging/sparse`` (and ``depth/`` when ``save_depth``) and
        build the window's result; ``timings`` (seconds per step so far) come first."""
        result = run_sfm(preds, tracks, sfm)
        write_sfm_result(result, staging / "sparse")
        if save_depth:
            save_depth_maps(staging / "depth", preds)
        details = result.details()
        details["num_tracks"] = 0 if tracks is None else int(tracks.xy.shape[1])
        return WindowResult(status="ok", registered_frames=result.registered_frames,
                            num_points3D=result.num_points3D,
                            mean_reprojection_error=result.error_after or result.error_before,
                            timings={**timings, **result.timings},
                            memory=peak_memory(self.torch_device), details=details)


def window_predictions(window: Window[Frame], originals: Sequence[np.ndarray],
                       transforms: Sequence[FrameTransform], cam_from_world: np.ndarray,
                       k_network: np.ndarray, depth: torch.Tensor,
                       depth_conf: torch.Tensor) -> WindowPredictions:
    """One window's network outputs as :class:`WindowPredictions` on the original frames.

    Args:
        window: The window (its frame names name the images).
        originals: ``(h, w, 3)`` uint8 frames, all of one size.
        transforms: Per frame, the map between original and network pixels.
        cam_from_world: ``(S, 3, 4)`` predicted world-to-camera poses, OpenCV axes (any world);
            the world is moved exactly onto frame 0's camera.
        k_network: ``(S, 3, 3)`` intrinsics in network pixels, "colmap" convention.
        depth, depth_conf: ``[S, H, W]`` network-grid maps, resampled onto the original grid.

    Raises:
        ValueError: the frames differ in size.
    """
    if len({f.shape for f in originals}) != 1:
        raise ValueError("the frames of a window must share one image size for a network")
    k_orig = [t.intrinsics_to_original(k) for t, k in zip(transforms, k_network)]
    h, w = originals[0].shape[:2]
    poses, _ = anchor_predictions(np.asarray(cam_from_world, dtype=np.float64))
    return WindowPredictions(
        names=[f.name for f in window.items], image_sizes=np.tile([w, h], (len(window), 1)),
        cam_from_world=poses, intrinsics=np.stack(k_orig),
        depth=to_original_grid(depth, transforms),
        depth_conf=to_original_grid(depth_conf, transforms),
        colors=np.stack(originals))


def sift_features(image: np.ndarray, options: Any) -> tuple[np.ndarray, np.ndarray]:
    """SIFT of an ``(H, W, 3)`` uint8 image: positions ``(N, 2)`` float64 in COLMAP pixels and
    descriptors ``(N, 128)`` (pycolmap's, on the CPU); ``options`` is a
    ``pycolmap.FeatureExtractionOptions``."""
    import pycolmap

    extractor = pycolmap.FeatureExtractor.create(options, pycolmap.Device.cpu)
    gray = np.asarray(np.round(image.astype(np.float32) @ [0.299, 0.587, 0.114]), np.uint8)
    keypoints, descriptors = extractor.extract_from_uint8_array(gray)
    xy = np.array([[k.x, k.y] for k in keypoints], dtype=np.float64).reshape(-1, 2)
    data = np.asarray(getattr(descriptors, "data", descriptors))
    return xy, (data.reshape(len(xy), -1) if len(xy) else np.zeros((0, 128), np.uint8))


def sift_keypoints(image: np.ndarray, options: Any) -> np.ndarray:
    """SIFT keypoint positions ``(N, 2)`` of an ``(H, W, 3)`` uint8 image, COLMAP pixels."""
    return sift_features(image, options)[0]


def to_original_grid(maps: torch.Tensor, transforms: Sequence[FrameTransform]) -> np.ndarray:
    """Resample network-grid maps ``[S, H, W]`` onto each original frame's pixel grid.

    Original pixel centres are mapped into the network image (bilinear sampling); pixels that
    fall outside it (cropped away) get 0. Returns ``(S, h, w)`` float32.
    """
    out = []
    net_h, net_w = maps.shape[-2:]
    for m, t in zip(maps.float().cpu(), transforms):
        h, w = t.original_hw
        cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        net = t.to_network(np.stack([cols, rows], axis=-1), "colmap") - 0.5
        inside = ((net[..., 0] >= -0.5) & (net[..., 0] <= net_w - 0.5)
                  & (net[..., 1] >= -0.5) & (net[..., 1] <= net_h - 0.5))
        grid = torch.as_tensor(net / [max(net_w - 1, 1), max(net_h - 1, 1)] * 2 - 1,
                               dtype=torch.float32)
        sampled = torch.nn.functional.grid_sample(m[None, None], grid[None], mode="bilinear",
                                                  padding_mode="border", align_corners=True)
        out.append(np.where(inside, sampled[0, 0].numpy(), 0.0).astype(np.float32))
    return np.stack(out)


def save_depth_maps(folder: Path, preds: WindowPredictions) -> None:
    """``folder/<frame stem>.npz`` with float16 ``depth`` (z-depth, world units) and
    ``confidence``, on the original frame's pixel grid (0 where the network saw no pixel)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(preds.names):
        np.savez_compressed(folder / f"{Path(name).stem}.npz",
                            depth=preds.depth[i].astype(np.float16),
                            confidence=preds.depth_conf[i].astype(np.float16))
