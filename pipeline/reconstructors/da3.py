"""The Depth Anything 3 reconstructor: a batch of windows through DA3 at once, tracks from
classical matching, then the shared SfM stage.

For each batch: the windows' frames are resized by one of DA3's methods
(:data:`pipeline.algo.preprocess.DA3_METHODS`, ``process_res`` px) and stacked into one
``[B, S, 3, H, W]`` tensor; one forward predicts depth, confidence and cameras (world-to-camera
extrinsics, intrinsics in network pixels) for all of them. Per window: cameras and maps are
mapped back to the original frames (the world moved exactly onto frame 0's camera); SIFT
features of every frame (pycolmap, CPU) are matched between all pairs of frames (mutual nearest
neighbours passing Lowe's ratio test) and joined into tracks;
:func:`pipeline.algo.network_sfm.run_sfm`
starts each track's point from the depth at its first frame, triangulates, filters and
bundle-adjusts; the model goes to ``sparse/`` and the asked-for exports to ``exports/``
(:mod:`pipeline.algo.exports`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..algo.exports import ExportOptions
from ..algo.finishing import Da3Job, match_descriptors, matched_tracks
from ..algo.preprocess import DA3_METHODS, PreprocessOptions
from ..core.errors import InputError
from ..core.windows import Window
from ..infra.options import option
from ..io.frames import Frame
from .network import (
    NetworkBatch,
    NetworkFlags,
    NetworkOptions,
    NetworkReconstructor,
    window_predictions,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def _default_features() -> Any:
    import pycolmap

    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1
    options.sift.max_num_features = 2048
    return options


def _default_preprocess() -> PreprocessOptions:
    return PreprocessOptions(mode="upper_bound_resize", process_res=504)


GROUP = "da3"
"""The ``--help`` section of da3's own options."""


@dataclass(kw_only=True)
class Da3Flags(NetworkFlags):
    """Command-line options of the da3 reconstructor (besides every network's); fields of
    :class:`pipeline.runner.config.PipelineConfig`."""

    process_res_method: str = option("upper_bound_resize", group=GROUP, choices=DA3_METHODS)
    """da3: upper_bound_* bound the longer side, lower_bound_* the shorter; *_resize rounds
    sides to multiples of 14 by resizing, *_crop by a centred crop."""
    export_format: str = option("colmap", group=GROUP, kind="export_format", metavar="F1-F2")
    """da3: formats per window joined by '-': colmap (always), mini_npz (exports/mini.npz), npz
    (exports/full.npz, with images), glb (exports/scene.glb), e.g. colmap-mini_npz-glb."""
    conf_thresh_percentile: float = option(40.0, group=GROUP, kind="float", metavar="P",
                                           bounds=(0, 100))
    """da3 glb export: points from depth whose confidence reaches this percentile."""
    num_max_points: int = option(1_000_000, group=GROUP, kind="int", metavar="N")
    """da3 glb export: at most this many points."""


@dataclass(kw_only=True)
class Da3Options(NetworkOptions):
    """Settings of the DA3 reconstructor."""

    model: str
    """Checkpoint: a local file or folder (``model.safetensors`` + ``config.json``), or a
    Hugging Face hub id such as ``depth-anything/DA3-LARGE-1.1``."""
    preprocess: PreprocessOptions = field(default_factory=_default_preprocess)
    """How frames reach the network grid (a DA3 method, ``process_res`` px)."""
    forward: Any = None
    """:class:`pipeline.algo.models.DA3ForwardOptions`; default options."""
    features: Any = field(default_factory=_default_features)
    """pycolmap.FeatureExtractionOptions of the SIFT features that are matched."""
    ratio_test: float = 0.8
    """A match's best descriptor distance must be below this fraction of the second best."""
    exports: ExportOptions = field(default_factory=ExportOptions)
    """What goes to each window's ``exports/`` besides ``sparse/``."""


class Da3Reconstructor(NetworkReconstructor):
    """DA3 forward on stacked windows, tracks from SIFT matching, bundle adjustment per window."""

    name = "da3"
    architecture = "da3"
    flags = Da3Flags
    device_stages = ("forward",)  # its tracks come from SIFT matching on the CPU
    default_res = 504

    @classmethod
    def options_from_config(cls, config: Any) -> Da3Options:
        """Its checkpoint is ``config.model``, which must be given: the VGGT default is no DA3
        checkpoint, and nothing is downloaded unless a hub id is named.

        Raises:
            InputError: no checkpoint given; a bad export format.
        """
        from ..algo.exports import parse_export_format
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
        from ..algo.models import DA3ForwardOptions

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
        import torch
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


__all__ = ["Da3Flags", "Da3Job", "Da3Options", "Da3Reconstructor", "match_descriptors",
           "matched_tracks"]
