"""The VGGT reconstructor: a batch of windows through the network at once, then tracks and BA.

For each batch: the windows' frames are brought to the network grid and stacked into one
``[B, S, 3, H, W]`` tensor; one forward pass predicts cameras, depth and confidence for all of
them. Per window, SIFT keypoints on a few query frames (kept where the predicted depth is
confident) are tracked through the window by the network's track head, and
:mod:`pipeline.algo.network_sfm` turns cameras + tracks into a bundle-adjusted COLMAP model, mapped
back to
the original image size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..algo.network_sfm import Tracks, WindowPredictions
from ..algo.preprocess import VGGT_MODES, FrameTransform, PreprocessOptions
from ..core.windows import Window
from ..infra.hub import VGGT_1B
from ..infra.options import option
from ..io.frames import Frame
from .network import (
    NetworkBatch,
    NetworkFlags,
    NetworkOptions,
    NetworkReconstructor,
    SfmJob,
    resolve_device,
    save_depth_maps,
    sift_keypoints,
    to_original_grid,
    window_predictions,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = VGGT_1B


def _default_keypoints() -> Any:
    import pycolmap

    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1
    return options


GROUP = "vggt"
"""The ``--help`` section of vggt's own options."""


@dataclass(kw_only=True)
class VggtFlags(NetworkFlags):
    """Command-line options of the vggt reconstructor (besides every network's); fields of
    :class:`pipeline.runner.config.PipelineConfig`."""

    preprocess_mode: str = option("crop", group=GROUP, choices=VGGT_MODES)
    """vggt input grid: crop is --process-res px wide, centre-cropped to at most as many rows;
    pad is the longer side --process-res, padded to a square."""
    query_frame_num: int = option(4, group=GROUP, kind="int", metavar="N")
    """vggt: frames per window whose SIFT keypoints are tracked."""
    max_query_pts: int = option(2048, group=GROUP, kind="int", metavar="N")
    """vggt: keypoints tracked per window (kept where the depth confidence is high)."""
    fine_tracking: bool = option(False, group=GROUP, kind="bool")
    """vggt: run the track head's refinement for twice as many iterations (slower, sometimes
    tighter tracks)."""
    vis_thresh: float = option(0.2, group=GROUP, kind="float", bounds=(0, 1))
    """vggt: drop track observations with a lower visibility score."""


@dataclass(kw_only=True)
class VggtOptions(NetworkOptions):
    """Settings of the VGGT reconstructor."""

    model: str = DEFAULT_MODEL
    """Checkpoint: a local file or folder, or a Hugging Face hub id."""
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)
    """How frames are resized to the network grid (crop or pad, 518 px)."""
    forward: Any = None
    """:class:`pipeline.algo.models.ForwardOptions` (chunk sizes, frame batching); default
    options."""
    query_frame_num: int = VggtFlags.query_frame_num
    """Frames, spread over the window, whose keypoints are tracked."""
    max_query_pts: int = VggtFlags.max_query_pts
    """Keypoints tracked per window, in total over the query frames."""
    fine_tracking: bool = VggtFlags.fine_tracking
    """Run the tracker's refinement twice as many iterations (the network has one scale)."""
    query_conf_quantile: float = 0.5
    """Keypoints are kept where the predicted depth confidence reaches this quantile of the
    frame's confidences (0.5: the more confident half of the frame)."""
    keypoints: Any = field(default_factory=_default_keypoints)
    """pycolmap.FeatureExtractionOptions of the SIFT keypoints on the query frames."""
    seed: int = 0
    """Seed of the keypoint subsampling."""


class VggtReconstructor(NetworkReconstructor):
    """VGGT forward on stacked windows, tracks from SIFT queries, bundle adjustment per window."""

    name = "vggt"
    architecture = "vggt"
    flags = VggtFlags
    device_stages = ("forward", "tracking")  # the track head runs on the device
    default_res = 518
    res_multiple = 14

    def __init__(self, options: VggtOptions | None = None) -> None:
        from ..algo.models import ForwardOptions

        self._setup(options or VggtOptions(), ForwardOptions())

    @classmethod
    def options_from_config(cls, config: Any) -> VggtOptions:
        res, min_res = cls.resolution(config)
        return VggtOptions(model=config.model,
                           preprocess=PreprocessOptions(mode=config.preprocess_mode,
                                                        target_size=res),
                           min_process_res=min_res, query_frame_num=config.query_frame_num,
                           max_query_pts=config.max_query_pts,
                           fine_tracking=config.fine_tracking, **cls.common_options(config))

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"name": self.name, "device": self.device, "model": o.model,
                "dtype": str(self.dtype).replace("torch.", ""), "preprocess": o.preprocess.mode,
                "process_res": self.process_res, "cpu_offload": o.cpu_offload,
                "query_frame_num": o.query_frame_num, "max_query_pts": o.max_query_pts,
                "fine_tracking": o.fine_tracking, "use_ba": o.sfm.use_ba,
                "camera_type": o.sfm.camera_type, "shared_camera": o.sfm.shared_camera,
                "load_seconds": self.load_seconds}

    def _fallbacks(self) -> list[Any]:
        """Smaller chunks in the heads and the tracker."""
        return [replace(self.forward_options, frames_chunk_size=c, query_chunk_size=q)
                for c, q in ((2, 64), (1, 16))]

    @staticmethod
    def _describe_fallback(options: Any) -> str:
        text = (f"frames_chunk_size={options.frames_chunk_size}, "
                f"query_chunk_size={options.query_chunk_size}")
        if options.frame_batch_size:
            text += f", frame_batch_size={options.frame_batch_size} (approximate)"
        return text

    def _forward(self, images: torch.Tensor, opts: Any) -> dict[str, Any]:
        """One forward for the whole batch; the track head's feature maps (or None) are kept
        under ``track_fmaps``."""
        import torch

        from ..algo.models.precision import autocast_context

        model = self.model
        with torch.inference_mode():
            out = model(images.to(self.torch_device, non_blocking=True), options=opts,
                        return_tokens=True)
            out["track_fmaps"] = None
            if model.can_track:
                with autocast_context(self.torch_device, self.dtype):
                    out["track_fmaps"] = model.track_features(
                        out.pop("aggregated_tokens"), tuple(images.shape[-2:]),
                        frames_chunk_size=opts.frames_chunk_size)
            out.pop("aggregated_tokens", None)
        return out

    def _window_job(self, b: int, window: Window[Frame], staging: Path, batch: NetworkBatch,
                    out: dict[str, Any], forward_options: Any) -> SfmJob:
        """Cameras, depth and tracks of window ``b`` (the track head runs here, on the
        device) -> the job that bundle-adjusts them into ``staging``."""
        transforms = batch.transforms[b]
        with self.meter.measure() as tracking:
            preds = self._predictions(b, window, batch.originals[b], transforms, out)
            tracks = None
            if self.options.sfm.use_ba:
                tracks = self._tracks(b, preds, transforms, out["track_fmaps"],
                                      forward_options.query_chunk_size)
        return self._job(preds, tracks, staging, {"tracking": tracking.to_json()})

    def _predictions(self, b: int, window: Window[Frame], originals: list[np.ndarray],
                     transforms: list[FrameTransform], out: dict[str, Any]) -> WindowPredictions:
        """Window ``b``'s cameras (world moved exactly onto frame 0's camera) and depth, mapped
        back to the original frames."""
        from ..algo.models import pose_encoding_to_extri_intri

        hw = tuple(out["depth"].shape[2:4])
        extrinsics, k_net = pose_encoding_to_extri_intri(out["pose_enc"][b].float(), hw)
        return window_predictions(window, originals, transforms,
                                  extrinsics.cpu().numpy().astype(np.float64),
                                  k_net.cpu().numpy(), out["depth"][b, ..., 0],
                                  out["depth_conf"][b])

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
        import torch

        from ..algo.models.precision import autocast_context

        order = list(range(fmaps.shape[1]))
        order[0], order[q] = q, 0
        net = transforms[q].to_network(queries, "colmap") - 0.5  # the tracker's pixel-index grid
        iters = self.model.config.track_iters * (2 if self.options.fine_tracking else 1)
        with torch.inference_mode(), autocast_context(self.torch_device, self.dtype):
            tracks, vis, _ = self.model.track_points(
                torch.as_tensor(net, dtype=torch.float32, device=self.torch_device)[None],
                fmaps[b:b + 1, order], iters=iters, query_chunk_size=query_chunk_size)
        track = tracks[-1][0].float().cpu().numpy()[order]
        visibility = vis[0].float().cpu().numpy()[order]
        original = np.stack([t.to_original(track[s], "index") + 0.5
                             for s, t in enumerate(transforms)])
        return original, visibility


__all__ = ["DEFAULT_MODEL", "VggtFlags", "VggtOptions", "VggtReconstructor", "resolve_device",
           "save_depth_maps", "sift_keypoints", "to_original_grid"]
