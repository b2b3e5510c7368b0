"""The Depth Anything 3 reconstructor: a batch of windows through DA3 at once, tracks from
classical matching, then the shared SfM stage.

For each batch: the windows' frames are resized by one of DA3's methods
(:data:`pipeline.preprocess.DA3_METHODS`, ``process_res`` px) and stacked into one
``[B, S, 3, H, W]`` tensor; one forward predicts depth, confidence and cameras (world-to-camera
extrinsics, intrinsics in network pixels) for all of them. Per window: cameras and maps are
mapped back to the original frames (the world moved exactly onto frame 0's camera); SIFT
features of every frame (pycolmap, CPU) are matched between all pairs of frames (mutual nearest
neighbours passing Lowe's ratio test) and joined into tracks; :func:`pipeline.sfm.run_sfm`
starts each track's point from the depth at its first frame, triangulates, filters and
bundle-adjusts; the model goes to ``sparse/`` and the asked-for exports to ``exports/``
(:mod:`pipeline.export_formats`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..export_formats import ExportOptions, write_exports
from ..frames import Frame
from ..preprocess import PreprocessOptions
from ..sfm import Tracks
from ..windows import Window
from .network import (
    NetworkBatch,
    NetworkOptions,
    NetworkReconstructor,
    SfmJob,
    sift_features,
    window_predictions,
)

logger = logging.getLogger(__name__)


def _default_features() -> Any:
    import pycolmap

    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1
    options.sift.max_num_features = 2048
    return options


def _default_preprocess() -> PreprocessOptions:
    return PreprocessOptions(mode="upper_bound_resize", process_res=504)


@dataclass(kw_only=True)
class Da3Options(NetworkOptions):
    """Settings of the DA3 reconstructor."""

    model: str
    """Checkpoint: a local file or folder (``model.safetensors`` + ``config.json``), or a
    Hugging Face hub id such as ``depth-anything/DA3-LARGE-1.1``."""
    preprocess: PreprocessOptions = field(default_factory=_default_preprocess)
    """How frames reach the network grid (a DA3 method, ``process_res`` px)."""
    forward: Any = None
    """:class:`pipeline.models.DA3ForwardOptions`; default options."""
    features: Any = field(default_factory=_default_features)
    """pycolmap.FeatureExtractionOptions of the SIFT features that are matched."""
    ratio_test: float = 0.8
    """A match's best descriptor distance must be below this fraction of the second best."""
    exports: ExportOptions = field(default_factory=ExportOptions)
    """What goes to each window's ``exports/`` besides ``sparse/``."""


class Da3Reconstructor(NetworkReconstructor):
    """DA3 forward on stacked windows, tracks from SIFT matching, bundle adjustment per window."""

    name = "da3"
    device_stages = ("forward",)  # its tracks come from SIFT matching on the CPU
    default_res = 504

    @classmethod
    def options_from_config(cls, config: Any) -> Da3Options:
        """Its checkpoint is ``config.model``, which must be given: the VGGT default is no DA3
        checkpoint, and nothing is downloaded unless a hub id is named.

        Raises:
            InputError: no checkpoint given; a bad export format.
        """
        from ..errors import InputError
        from ..export_formats import parse_export_format
        from .vggt import DEFAULT_MODEL

        if config.model == DEFAULT_MODEL:
            raise InputError(
                "--reconstructor da3 needs --model: a DA3 checkpoint folder or a hub "
                "id such as depth-anything/DA3-LARGE-1.1"
            )
        exports = ExportOptions(
            formats=parse_export_format(config.export_format),
            conf_thresh_percentile=config.conf_thresh_percentile,
            num_max_points=config.num_max_points,
        )
        res, min_res = cls.resolution(config)
        return Da3Options(
            model=config.model,
            preprocess=PreprocessOptions(mode=config.process_res_method, process_res=res),
            min_process_res=min_res,
            exports=exports,
            **cls.common_options(config),
        )

    def __init__(self, options: Da3Options) -> None:
        from ..models import DA3ForwardOptions

        self._setup(options, DA3ForwardOptions())
        if not self.model.predicts_cameras:
            raise ValueError(
                f"{options.model} predicts no cameras (a metric or mono DA3); use a "
                "main-series or nested checkpoint such as depth-anything/DA3-LARGE-1.1"
            )
        self.metric = self.model.is_metric

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {
            "name": self.name,
            "device": self.device,
            "model": o.model,
            "dtype": str(self.dtype).replace("torch.", ""),
            "process_res": self.process_res,
            "process_res_method": o.preprocess.mode,
            "cpu_offload": o.cpu_offload,
            "metric": self.metric,
            "export_formats": list(o.exports.formats),
            "use_ba": o.sfm.use_ba,
            "camera_type": o.sfm.camera_type,
            "shared_camera": o.sfm.shared_camera,
            "load_seconds": self.load_seconds,
        }

    def _fallbacks(self) -> list[Any]:
        """Smaller chunks in the dense heads."""
        return [replace(self.forward_options, head_chunk_size=c) for c in (2, 1)]

    @staticmethod
    def _describe_fallback(options: Any) -> str:
        text = f"head_chunk_size={options.head_chunk_size}"
        if options.frame_batch_size:
            text += f", frame_batch_size={options.frame_batch_size} (approximate)"
        return text

    def _forward(self, images: torch.Tensor, opts: Any) -> dict[str, Any]:
        with torch.inference_mode():
            return self.model(images.to(self.torch_device, non_blocking=True), options=opts)

    def _window_job(self, b: int, window: Window[Frame], staging: Path, batch: NetworkBatch,
                    out: dict[str, Any], options: Any) -> Da3Job:
        """Cameras and depth of window ``b`` on the original frames -> the job that matches
        features into tracks, bundle-adjusts and exports (all CPU work)."""
        with self.meter.measure() as predictions:
            preds = window_predictions(
                window, batch.originals[b], batch.transforms[b],
                out["extrinsics"][b].float().cpu().numpy().astype(np.float64),
                out["intrinsics"][b].float().cpu().numpy(), out["depth"][b],
                out["depth_conf"][b])
        details = {}
        if "scale_factor" in out:  # nested: depth and poses in metres
            details["metric_scale"] = float(out["scale_factor"][b])
        return self._job(preds, None, staging, {"predictions": predictions.to_json()},
                         job=Da3Job, details=details, features=self.options.features,
                         ratio_test=self.options.ratio_test, exports=self.options.exports)


@dataclass(kw_only=True)
class Da3Job(SfmJob):
    """A DA3 window's CPU part: tracks from SIFT matching, then the shared SfM stage and the
    ``--export-format`` files."""

    features: Any = None
    """pycolmap.FeatureExtractionOptions of the matched features."""
    ratio_test: float = 0.8
    """Lowe's ratio for a match."""
    exports: ExportOptions = field(default_factory=ExportOptions)
    """What goes to ``exports/`` besides ``sparse/``."""

    def make_tracks(self, meter: Any, stages: dict[str, dict[str, float]]) -> Tracks:
        self._progress("matching")
        with meter.stage("matching", stages):
            return matched_tracks(self.preds.colors, self.features, self.ratio_test)

    def export_extras(self) -> list[str]:
        """The ``--export-format`` files of the window (``colmap`` is ``sparse/`` itself)."""
        written = write_exports(self.staging, self.preds, self.exports)
        return [str(p.relative_to(self.staging)) for p in written]


def match_descriptors(a: np.ndarray, b: np.ndarray, ratio: float) -> np.ndarray:
    """Mutual nearest neighbours of descriptors ``a`` ``(N, D)`` and ``b`` ``(M, D)`` (L2 on
    unit-normalised descriptors) whose best distance is below ``ratio`` times the second best,
    both ways. Returns ``(K, 2)`` index pairs ``(i in a, j in b)``."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), int)
    a = a.astype(np.float32) / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)
    b = b.astype(np.float32) / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-9)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * (a @ b.T), 0.0))
    best_ab, best_ba = dist.argmin(axis=1), dist.argmin(axis=0)
    two_ab = np.partition(dist, 1, axis=1)[:, :2]
    two_ba = np.partition(dist, 1, axis=0)[:2].T
    i = np.arange(len(a))
    j = best_ab
    keep = (
        (best_ba[j] == i)
        & (two_ab[:, 0] < ratio * two_ab[:, 1])
        & (two_ba[j, 0] < ratio * two_ba[j, 1])
    )
    return np.stack([i[keep], j[keep]], axis=1)


def matched_tracks(images: np.ndarray, features: Any, ratio: float) -> Tracks:
    """Tracks of a window from SIFT matching between every pair of its frames.

    Args:
        images: ``(S, H, W, 3)`` uint8 original frames.
        features: pycolmap.FeatureExtractionOptions.
        ratio: Lowe's ratio test threshold.

    Returns:
        :class:`Tracks`: pairwise matches joined into connected components; a track holding
        two keypoints of one frame is dropped; ``xy`` in original pixels (COLMAP convention; 0
        where unobserved), ``visibility`` 1 where observed and 0 elsewhere, ``query_frame`` the
        first
        observed frame.

    Raises:
        ValueError: no track spans two frames (e.g. textureless frames: no keypoint matches).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    feats = [sift_features(img, features) for img in images]
    offsets = np.cumsum([0] + [len(xy) for xy, _ in feats])
    edges = [
        match_descriptors(feats[s][1], feats[t][1], ratio) + offsets[[s, t]]
        for s in range(len(feats))
        for t in range(s + 1, len(feats))
    ]
    edges = np.concatenate(edges).reshape(-1, 2) if edges else np.zeros((0, 2), int)
    graph = coo_matrix(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(offsets[-1], offsets[-1])
    )
    _, components = connected_components(graph, directed=False)
    return _tracks_from_components(feats, offsets, components)


def _tracks_from_components(
    feats: list[tuple[np.ndarray, np.ndarray]], offsets: np.ndarray, roots: np.ndarray
) -> Tracks:
    """:class:`Tracks` of the match-graph components ``roots`` (a label per keypoint)."""
    frame_of = np.repeat(np.arange(len(feats)), np.diff(offsets))
    ids, track_of, sizes = np.unique(roots, return_inverse=True, return_counts=True)
    pairs = np.unique(np.stack([track_of, frame_of], axis=1), axis=0).reshape(-1, 2)
    frames_per_track = np.bincount(pairs[:, 0], minlength=len(ids))
    good = (sizes >= 2) & (frames_per_track == sizes)  # >= 2 frames, one keypoint per frame
    if not good.any():
        raise ValueError("no keypoint matches between the frames of the window (textureless?)")
    new_index = np.full(len(ids), -1)
    new_index[good] = np.arange(good.sum())
    s, n = len(feats), int(good.sum())
    xy, vis = np.zeros((s, n, 2)), np.zeros((s, n))
    all_xy = np.concatenate([f[0] for f in feats])
    member = new_index[track_of] >= 0
    xy[frame_of[member], new_index[track_of[member]]] = all_xy[member]
    vis[frame_of[member], new_index[track_of[member]]] = 1.0
    return Tracks(xy=xy, visibility=vis, query_frame=np.argmax(vis > 0, axis=0))
