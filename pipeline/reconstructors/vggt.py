"""The VGGT reconstructor: a batch of windows through the network at once, then tracks and BA.

For each batch: the windows' frames are brought to the network grid and stacked into one
``[B, S, 3, H, W]`` tensor; one forward pass predicts cameras, depth and confidence for all of
them. Per window, SIFT keypoints on a few query frames (kept where the predicted depth is
confident) are tracked through the window by the network's track head, and
:mod:`pipeline.sfm` turns cameras + tracks into a bundle-adjusted COLMAP model, mapped back to
the original image size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..frames import Frame, load_image
from ..models.precision import autocast_context
from ..preprocess import FrameTransform, PreprocessOptions, preprocess_frames
from ..sfm import (SfmOptions, Tracks, WindowPredictions, anchor_predictions, run_sfm,
                   write_sfm_result)
from ..windows import Window
from . import Reconstructor, WindowResult, peak_memory

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/VGGT-1B"


def _default_keypoints() -> Any:
    import pycolmap

    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1
    return options


@dataclass(kw_only=True)
class VggtOptions:
    """Settings of the VGGT reconstructor."""

    model: str = DEFAULT_MODEL
    """Checkpoint: a local file or folder, or a Hugging Face hub id."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    dtype: str = "auto"
    """``auto`` (bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU), or a dtype name."""
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)
    """How frames are resized to the network grid (crop or pad, 518 px)."""
    forward: Any = None
    """:class:`pipeline.models.ForwardOptions` (chunk sizes, frame batching); default options."""
    query_frame_num: int = 3
    """Frames, spread over the window, whose keypoints are tracked."""
    max_query_pts: int = 2048
    """Keypoints tracked per window, in total over the query frames."""
    fine_tracking: bool = False
    """Run the tracker's refinement twice as many iterations (the network has one scale)."""
    query_conf_quantile: float = 0.5
    """Keypoints are kept where the predicted depth confidence reaches this quantile of the
    frame's confidences (0.5: the more confident half of the frame)."""
    keypoints: Any = field(default_factory=_default_keypoints)
    """pycolmap.FeatureExtractionOptions of the SIFT keypoints on the query frames."""
    sfm: SfmOptions = field(default_factory=SfmOptions)
    """Tracks, filtering and bundle adjustment (camera type, thresholds, ``use_ba``...)."""
    save_depth: bool = False
    """Write each frame's depth and confidence (original size, float16) to ``depth/NAME.npz``."""
    seed: int = 0
    """Seed of the keypoint subsampling."""
    allow_approximate: bool = False
    """When a single window runs out of memory even with the smallest chunks, also try frame
    batching (attention across frames only within groups: approximate)."""
    colmap_log_level: int = 2
    """glog level of pycolmap's own messages: 0 info, 1 warnings, 2 errors."""


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class _Batch:
    """A batch brought to the network grid, plus what maps it back."""

    images: torch.Tensor
    """``[B, S, 3, H, W]`` RGB in [0, 1]."""
    originals: list[list[np.ndarray]]
    """Per window and frame, the ``(h, w, 3)`` uint8 original frame."""
    transforms: list[list[FrameTransform]]
    """Per window and frame, the map between original and network pixels."""


class VggtReconstructor(Reconstructor):
    """VGGT forward on stacked windows, tracks from SIFT queries, bundle adjustment per window."""

    name = "vggt"

    def __init__(self, options: VggtOptions | None = None) -> None:
        import pycolmap

        from ..models import ForwardOptions, load_model, resolve_dtype

        self.options = options or VggtOptions()
        pycolmap.logging.minloglevel = self.options.colmap_log_level
        self.torch_device = resolve_device(self.options.device)
        self.device = str(self.torch_device)
        self.dtype = resolve_dtype(self.options.dtype, self.torch_device)
        self.forward_options = self.options.forward or ForwardOptions()
        t = time.perf_counter()
        self.model = load_model(self.options.model, device=self.torch_device, dtype=self.dtype)
        self.load_seconds = time.perf_counter() - t
        logger.info("loaded %s on %s (%s) in %.1f s", self.options.model, self.device,
                    str(self.dtype).replace("torch.", ""), self.load_seconds)

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"name": self.name, "device": self.device, "model": o.model,
                "dtype": str(self.dtype).replace("torch.", ""), "preprocess": o.preprocess.mode,
                "query_frame_num": o.query_frame_num, "max_query_pts": o.max_query_pts,
                "fine_tracking": o.fine_tracking, "use_ba": o.sfm.use_ba,
                "camera_type": o.sfm.camera_type, "shared_camera": o.sfm.shared_camera,
                "load_seconds": self.load_seconds}

    def close(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def reconstruct_batch(self, windows: Sequence[Window[Frame]],
                          staging_dirs: Sequence[Path]) -> list[WindowResult]:
        """Reconstruct the batch, recovering from running out of memory.

        On ``torch.OutOfMemoryError`` the cache is freed and the batch is halved and retried;
        a single window is retried with smaller chunks in the heads and the tracker, then (only
        with ``allow_approximate``) with frame batching; only then does it fail, with the reason.
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
                           _describe_fallback(options))
            try:
                results = self._reconstruct(windows, staging_dirs, options)
                results[0].details["memory_fallback"] = _describe_fallback(options)
                return results
            except torch.OutOfMemoryError:
                self._free_memory()
        return [WindowResult.failure(
            "out of memory even one window at a time with the smallest chunks"
            + ("" if self.options.allow_approximate else
               " (--allow-approximate would also try frame batching)"))]

    def _fallbacks(self, frames: int) -> list[Any]:
        """Forward options to try, in order, for a single window that ran out of memory."""
        base = self.forward_options
        options = [replace(base, frames_chunk_size=c, query_chunk_size=q)
                   for c, q in ((2, 64), (1, 16))]
        if self.options.allow_approximate:
            options += [replace(options[-1], frame_batch_size=g)
                        for g in (max(2, frames // 2), max(2, frames // 4), 2)
                        if g < frames]
        return options

    def _free_memory(self) -> None:
        import gc

        gc.collect()
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def _reconstruct(self, windows: Sequence[Window[Frame]], staging_dirs: Sequence[Path],
                     forward_options: Any) -> list[WindowResult]:
        """One forward for the batch, then tracks and BA per window (out of memory propagates)."""
        t = time.perf_counter()
        batch = self._prepare(windows)
        prep = time.perf_counter() - t
        if self.torch_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.torch_device)
        out, fmaps, forward = self._forward(batch.images, forward_options)
        results = []
        for b, (window, staging) in enumerate(zip(windows, staging_dirs)):
            try:
                result = self._finish_window(b, window, staging, batch, out, fmaps,
                                             forward_options)
                result.timings = {"preprocess": prep, "forward": forward, **result.timings}
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - one window never stops the others
                logger.debug("window %d failed", window.index, exc_info=True)
                result = WindowResult.failure(f"{type(exc).__name__}: {exc}")
            results.append(result)
        return results

    def _prepare(self, windows: Sequence[Window[Frame]]) -> _Batch:
        """Decode every frame once and stack the windows on the network grid."""
        images, originals, transforms = [], [], []
        for window in windows:
            frames = [load_image(f.path) for f in window.items]
            prepared = preprocess_frames(frames, self.options.preprocess)
            images.append(prepared.images)
            originals.append(frames)
            transforms.append(prepared.transforms)
        return _Batch(torch.stack(images), originals, transforms)

    def _forward(self, images: torch.Tensor, opts: Any
                 ) -> tuple[dict[str, Any], torch.Tensor | None, float]:
        """One forward for the whole batch; returns outputs, track feature maps, seconds."""
        t = time.perf_counter()
        model = self.model
        with torch.inference_mode():
            out = model(images.to(self.torch_device), options=opts, return_tokens=True)
            fmaps = None
            if model.track_head is not None:
                start = model.aggregator.patch_start_idx
                with autocast_context(self.torch_device, self.dtype):
                    fmaps = model.track_head.feature_extractor(
                        out.pop("aggregated_tokens"), tuple(images.shape[-2:]), start,
                        frames_chunk_size=opts.frames_chunk_size)
            out.pop("aggregated_tokens", None)
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize()
        return out, fmaps, time.perf_counter() - t


    def _finish_window(self, b: int, window: Window[Frame], staging: Path, batch: _Batch,
                       out: dict[str, Any], fmaps: torch.Tensor | None,
                       forward_options: Any) -> WindowResult:
        """Cameras, depth and tracks of window ``b`` -> bundle-adjusted model in ``staging``."""
        originals, transforms = batch.originals[b], batch.transforms[b]
        if len({f.shape for f in originals}) != 1:
            raise ValueError("the frames of a window must share one image size for vggt")
        t = time.perf_counter()
        preds = self._predictions(b, window, originals, transforms, out)
        tracks = None
        if self.options.sfm.use_ba:
            tracks = self._tracks(b, preds, transforms, fmaps, forward_options.query_chunk_size)
        tracking = time.perf_counter() - t
        result = run_sfm(preds, tracks, self.options.sfm)
        write_sfm_result(result, staging / "sparse")
        if self.options.save_depth:
            save_depth_maps(staging / "depth", preds)
        details = result.details()
        details["num_tracks"] = 0 if tracks is None else int(tracks.xy.shape[1])
        return WindowResult(status="ok", registered_frames=result.registered_frames,
                            num_points3D=result.num_points3D,
                            mean_reprojection_error=result.error_after or result.error_before,
                            timings={"tracking": tracking, **result.timings},
                            memory=peak_memory(self.torch_device), details=details)

    def _predictions(self, b: int, window: Window[Frame], originals: list[np.ndarray],
                     transforms: list[FrameTransform], out: dict[str, Any]) -> WindowPredictions:
        """Window ``b``'s cameras (world moved exactly onto frame 0's camera) and depth, mapped
        back to the original frames."""
        from ..models import pose_encoding_to_extri_intri

        hw = tuple(out["depth"].shape[2:4])
        extrinsics, k_net = pose_encoding_to_extri_intri(out["pose_enc"][b].float(), hw)
        k_orig = [t.intrinsics_to_original(k) for t, k in zip(transforms, k_net.cpu().numpy())]
        depth = to_original_grid(out["depth"][b, ..., 0], transforms)
        conf = to_original_grid(out["depth_conf"][b], transforms)
        h, w = originals[0].shape[:2]
        poses, _ = anchor_predictions(extrinsics.cpu().numpy().astype(np.float64))
        return WindowPredictions(
            names=[f.name for f in window.items], image_sizes=np.tile([w, h], (len(window), 1)),
            cam_from_world=poses,
            intrinsics=np.stack(k_orig), depth=depth, depth_conf=conf,
            colors=np.stack(originals))


    def _tracks(self, b: int, preds: WindowPredictions, transforms: list[FrameTransform],
                fmaps: torch.Tensor | None, query_chunk_size: int | None) -> Tracks:
        """Track SIFT keypoints of the query frames through window ``b`` with the track head."""
        if fmaps is None:
            raise ValueError("this checkpoint has no track head; use the sfm option use_ba=False")
        frames = len(preds.names)
        query_frames = np.unique(np.linspace(0, frames - 1, min(self.options.query_frame_num,
                                                                 frames)).round().astype(int))
        budget = max(1, self.options.max_query_pts // len(query_frames))
        rng = np.random.default_rng(self.options.seed)
        xy, vis, origin = [], [], []
        for q in query_frames:
            queries = self._queries(preds, int(q), budget, rng)
            if len(queries) == 0:
                continue
            track, visibility = self._track_from(b, int(q), queries, transforms, fmaps,
                                                 query_chunk_size)
            xy.append(track)
            vis.append(visibility)
            origin.append(np.full(len(queries), q))
        if not xy:
            raise ValueError("no keypoint with a confident depth on the query frames")
        return Tracks(xy=np.concatenate(xy, axis=1), visibility=np.concatenate(vis, axis=1),
                      query_frame=np.concatenate(origin))

    def _queries(self, preds: WindowPredictions, q: int, budget: int,
                 rng: np.random.Generator) -> np.ndarray:
        """SIFT keypoints of frame ``q`` (COLMAP pixels) where the depth is confident."""
        keypoints = sift_keypoints(preds.colors[q], self.options.keypoints)
        h, w = preds.depth_conf.shape[1:]
        cols = np.clip(keypoints[:, 0].astype(int), 0, w - 1)
        rows = np.clip(keypoints[:, 1].astype(int), 0, h - 1)
        conf = preds.depth_conf[q]
        threshold = np.quantile(conf[conf > 0], self.options.query_conf_quantile)
        keypoints = keypoints[conf[rows, cols] >= threshold]
        if len(keypoints) > budget:
            keypoints = keypoints[np.sort(rng.choice(len(keypoints), budget, replace=False))]
        return keypoints

    def _track_from(self, b: int, q: int, queries: np.ndarray, transforms: list[FrameTransform],
                    fmaps: torch.Tensor, query_chunk_size: int | None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Track ``queries`` (N, 2) of frame ``q`` (original COLMAP pixels) through window ``b``.

        The track head queries its first frame, so frames ``0`` and ``q`` swap places (as the
        reference does) and swap back. Returns tracks (S, N, 2) in original COLMAP pixels and
        visibility (S, N).
        """
        order = list(range(fmaps.shape[1]))
        order[0], order[q] = q, 0
        net = transforms[q].to_network(queries, "colmap") - 0.5  # the tracker's pixel-index grid
        iters = self.model.config.track_iters * (2 if self.options.fine_tracking else 1)
        with torch.inference_mode(), autocast_context(self.torch_device, self.dtype):
            tracks, vis, _ = self.model.track_head.tracker(
                torch.as_tensor(net, dtype=torch.float32, device=self.torch_device)[None],
                fmaps[b:b + 1, order], iters=iters,
                query_chunk_size=query_chunk_size)
        track = tracks[-1][0].float().cpu().numpy()[order]
        visibility = vis[0].float().cpu().numpy()[order]
        original = np.stack([t.to_original(track[s], "index") + 0.5
                             for s, t in enumerate(transforms)])
        return original, visibility


def _describe_fallback(options: Any) -> str:
    text = (f"frames_chunk_size={options.frames_chunk_size}, "
            f"query_chunk_size={options.query_chunk_size}")
    if options.frame_batch_size:
        text += f", frame_batch_size={options.frame_batch_size} (approximate)"
    return text


def sift_keypoints(image: np.ndarray, options: Any) -> np.ndarray:
    """SIFT keypoint positions ``(N, 2)`` of an ``(H, W, 3)`` uint8 image, COLMAP pixels."""
    import pycolmap

    extractor = pycolmap.FeatureExtractor.create(options, pycolmap.Device.cpu)
    gray = np.asarray(np.round(image.astype(np.float32) @ [0.299, 0.587, 0.114]), np.uint8)
    keypoints, _ = extractor.extract_from_uint8_array(gray)
    return np.array([[k.x, k.y] for k in keypoints], dtype=np.float64).reshape(-1, 2)


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
