"""VGGT (Visual Geometry Grounded Transformer, Wang et al. 2025): configuration, network and forward
options.

Input: ``images`` ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``), RGB in [0, 1], H and W multiples of 14
(see :mod:`pipeline.algo.preprocess`). All predictions live in the world frame of frame 0's camera.
Pixel conventions of the outputs are described in :mod:`pipeline.algo.models.camera`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .aggregator import Aggregator
from .camera_head import CameraHead
from .dpt_head import DPTHead
from .layers import per_window
from .precision import autocast_context
from .track_head import TrackHead

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class VGGTConfig:
    """Shape of a VGGT network. ``vggt_1b()`` is the released checkpoint; ``tiny()`` is for
    tests."""

    img_size: int = 518
    """Square image side the DINOv2 position embedding was trained for (pixels)."""
    patch_size: int = 14
    """Pixels per patch side."""
    embed_dim: int = 1024
    """Aggregator (and DINOv2) width; heads see 2x this."""
    depth: int = 24
    """Number of frame blocks (= number of global blocks = aggregator layers)."""
    num_heads: int = 16
    """Attention heads of the aggregator blocks."""
    mlp_ratio: float = 4.0
    """MLP hidden width / block width, everywhere in the aggregator and camera head."""
    num_register_tokens: int = 4
    """Register tokens per frame."""
    dino_depth: int = 24
    """Blocks of the DINOv2 patch-embedding ViT."""
    dino_num_heads: int = 16
    """Attention heads of the DINOv2 ViT."""
    rope_freq: float = 100.0
    """RoPE base frequency."""
    layer_idx: tuple[int, ...] = (4, 11, 17, 23)
    """Aggregator layers read by the DPT heads (the camera head reads the last layer)."""
    camera_trunk_depth: int = 4
    """Blocks of the camera head trunk."""
    camera_num_heads: int = 16
    """Attention heads of the camera head trunk."""
    camera_iterations: int = 4
    """Camera refinement iterations."""
    dpt_features: int = 256
    """Fusion width of the depth and point heads."""
    dpt_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    """Per-layer projection widths of all DPT heads (including the track feature extractor)."""
    track_features: int = 128
    """Track feature channels."""
    track_iters: int = 4
    """Tracker refinement iterations."""
    track_stride: int = 2
    """Image pixels per track feature cell."""
    track_corr_levels: int = 7
    """Correlation pyramid levels."""
    track_corr_radius: int = 4
    """Correlation window radius."""
    track_hidden_size: int = 384
    """Update-transformer width."""
    track_depth: int = 6
    """Update-transformer time/space block pairs."""
    track_num_heads: int = 8
    """Update-transformer attention heads."""
    track_num_virtual: int = 64
    """Virtual tracks of the space attention."""
    enable_camera: bool = True
    """Build the camera head."""
    enable_depth: bool = True
    """Build the depth head."""
    enable_point: bool = True
    """Build the point-map head."""
    enable_track: bool = True
    """Build the track head."""

    @classmethod
    def vggt_1b(cls) -> VGGTConfig:
        """The released ``facebook/VGGT-1B`` network."""
        return cls()

    @classmethod
    def tiny(cls) -> VGGTConfig:
        """A few-layer, narrow network built from the same code (fast tests; images e.g. 56x70)."""
        return cls(
            img_size=112,
            embed_dim=64,
            depth=4,
            num_heads=4,
            dino_depth=2,
            dino_num_heads=4,
            layer_idx=(0, 1, 2, 3),
            camera_trunk_depth=2,
            camera_num_heads=4,
            dpt_features=32,
            dpt_out_channels=(16, 32, 64, 64),
            track_features=16,
            track_corr_levels=3,
            track_corr_radius=2,
            track_hidden_size=32,
            track_depth=2,
            track_num_heads=4,
            track_num_virtual=8,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VGGTConfig:
        """Config from a dict (e.g. a config.json); unknown keys are ignored, missing ones take
        VGGT-1B values."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        return cls(**kwargs)


@dataclass(kw_only=True)
class ForwardOptions:
    """Memory/speed options of :meth:`VGGT.forward`. All but ``frame_batch_size`` leave results
    unchanged."""

    frames_chunk_size: int | None = dataclasses.field(default=8, metadata={"result": False})
    """Frames per chunk in the dense (depth, point, track-feature) heads; None = all frames at
    once."""
    query_chunk_size: int | None = dataclasses.field(default=256, metadata={"result": False})
    """Track queries per correlation-volume chunk; None = all at once."""
    keep_all_layers: bool = dataclasses.field(default=False, metadata={"result": False})
    """Keep all aggregator layers (reference behaviour) instead of only those the enabled heads
    read."""
    frame_batch_size: int | None = None
    """APPROXIMATE: global attention only within groups of this many frames, each group including
    frame 0 as the shared reference (so all outputs stay in frame 0's world frame; frame 0's
    outputs come from the first group). None, or a size >= S, is the exact model."""
    track_iters: int | None = None
    """Tracker iterations; None = the config's ``track_iters``."""
    return_tokens: bool = dataclasses.field(default=False, metadata={"result": False})
    """Add ``aggregated_tokens`` (list per layer, ``[B, S, P, 2C]`` or None) to the outputs."""
    return_track_features: bool = dataclasses.field(default=False, metadata={"result": False})
    """Add ``track_features`` ``[B, S, C, H/2, W/2]`` to the outputs (when tracking)."""


class VGGT(nn.Module):
    """The VGGT network. Attribute ``compute_dtype`` (float32 by default) selects autocast for the
    aggregator and track head; the camera, depth and point heads always run in float32, as in the
    reference."""

    def __init__(self, config: VGGTConfig | None = None):
        super().__init__()
        cfg = config or VGGTConfig.vggt_1b()
        self.config = cfg
        self.compute_dtype = torch.float32
        dim2 = 2 * cfg.embed_dim
        self.aggregator = Aggregator(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_register_tokens=cfg.num_register_tokens,
            dino_depth=cfg.dino_depth,
            dino_num_heads=cfg.dino_num_heads,
            rope_freq=cfg.rope_freq,
        )
        self.camera_head = (
            CameraHead(
                dim2,
                trunk_depth=cfg.camera_trunk_depth,
                num_heads=cfg.camera_num_heads,
                mlp_ratio=cfg.mlp_ratio,
            )
            if cfg.enable_camera
            else None
        )
        dpt = dict(
            patch_size=cfg.patch_size,
            features=cfg.dpt_features,
            out_channels=cfg.dpt_out_channels,
            layer_idx=cfg.layer_idx,
        )
        self.point_head = (
            DPTHead(dim2, output_dim=4, activation="inv_log", **dpt) if cfg.enable_point else None
        )
        self.depth_head = (
            DPTHead(dim2, output_dim=2, activation="exp", **dpt) if cfg.enable_depth else None
        )
        self.track_head = (
            TrackHead(
                dim2,
                patch_size=cfg.patch_size,
                features=cfg.track_features,
                out_channels=cfg.dpt_out_channels,
                layer_idx=cfg.layer_idx,
                iters=cfg.track_iters,
                stride=cfg.track_stride,
                corr_levels=cfg.track_corr_levels,
                corr_radius=cfg.track_corr_radius,
                hidden_size=cfg.track_hidden_size,
                depth=cfg.track_depth,
                num_heads=cfg.track_num_heads,
                num_virtual=cfg.track_num_virtual,
            )
            if cfg.enable_track
            else None
        )

    def required_layers(self, tracking: bool = True) -> set:
        """Aggregator layers read by the enabled heads (the lean path keeps only these)."""
        layers = set()
        if self.camera_head is not None:
            layers.add(self.config.depth - 1)
        if (
            self.depth_head is not None
            or self.point_head is not None
            or (tracking and self.track_head is not None)
        ):
            layers.update(self.config.layer_idx)
        return layers

    def forward(
        self,
        images: torch.Tensor,
        query_points: torch.Tensor | None = None,
        options: ForwardOptions | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Predict cameras, depth, point maps and (given ``query_points``) tracks.

        Args:
            images: ``[B, S, 3, H, W]`` or ``[S, 3, H, W]``, RGB in [0, 1].
            query_points: ``[B, N, 2]`` or ``[N, 2]`` pixel (x, y) in frame 0 (integer = pixel
                centre).
            options: :class:`ForwardOptions`; keyword ``overrides`` replace its fields.
        Returns:
            dict with ``pose_enc`` ``[B, S, 9]`` and ``pose_enc_list`` (per iteration), ``depth``
            ``[B, S, H, W, 1]``, ``depth_conf`` ``[B, S, H, W]``, ``world_points`` ``[B, S, H, W,
            3]``,
            ``world_points_conf`` ``[B, S, H, W]``, and with queries ``track`` ``[B, S, N, 2]``,
            ``track_list`` (per iteration), ``vis`` and ``conf`` ``[B, S, N]``; entries of disabled
            heads are absent.
        """
        opts = dataclasses.replace(options or ForwardOptions(), **overrides)
        images = images.unsqueeze(0) if images.dim() == 4 else images
        if query_points is not None and query_points.dim() == 2:
            query_points = query_points.unsqueeze(0)
        tracking = query_points is not None and self.track_head is not None
        keep = None if opts.keep_all_layers else self.required_layers(tracking)
        with autocast_context(images.device, self.compute_dtype):
            tokens, start = self.aggregator(
                images, keep_layers=keep, frame_batch_size=opts.frame_batch_size
            )
        hw = tuple(images.shape[-2:])
        out: dict[str, Any] = {}
        with torch.autocast(device_type=images.device.type, enabled=False):
            head_tokens = [t.float() if t is not None else None for t in tokens]
            if self.camera_head is not None:
                out["pose_enc_list"] = per_window(
                    lambda last: self.camera_head([last], iterations=self.config.camera_iterations),
                    head_tokens[-1])
                out["pose_enc"] = out["pose_enc_list"][-1]
            if self.depth_head is not None:
                out["depth"], out["depth_conf"] = self.depth_head(
                    head_tokens, hw, start, frames_chunk_size=opts.frames_chunk_size
                )
            if self.point_head is not None:
                out["world_points"], out["world_points_conf"] = self.point_head(
                    head_tokens, hw, start, frames_chunk_size=opts.frames_chunk_size
                )
        del head_tokens
        if tracking:
            with autocast_context(images.device, self.compute_dtype):
                track_list, out["vis"], out["conf"], fmaps = self.track_head(
                    tokens,
                    hw,
                    start,
                    query_points,
                    iters=opts.track_iters,
                    frames_chunk_size=opts.frames_chunk_size,
                    query_chunk_size=opts.query_chunk_size,
                )
            out["track_list"], out["track"] = track_list, track_list[-1]
            if opts.return_track_features:
                out["track_features"] = fmaps
        if opts.return_tokens:
            out["aggregated_tokens"] = tokens
        return out

    @property
    def can_track(self) -> bool:
        """Whether the network has a track head (:meth:`track_features`, :meth:`track_points`)."""
        return self.track_head is not None

    def track_features(
        self,
        aggregated_tokens: Any,
        image_hw: tuple[int, int],
        *,
        frames_chunk_size: int | None = None,
    ) -> torch.Tensor:
        """The track head's feature maps ``[B, S, C, H', W']`` of the ``aggregated_tokens`` a
        forward returned (``return_tokens=True``) for images of size ``image_hw``: computed once,
        then :meth:`track_points` tracks any queries through them."""
        return self.track_head.feature_extractor(
            aggregated_tokens,
            image_hw,
            self.aggregator.patch_start_idx,
            frames_chunk_size=frames_chunk_size,
        )

    def track_points(
        self,
        query_points: torch.Tensor,
        track_features: torch.Tensor,
        *,
        iters: int | None = None,
        query_chunk_size: int | None = None,
    ) -> tuple[list, torch.Tensor, torch.Tensor]:
        """Track ``query_points`` ``[B, N, 2]`` (pixel indices of frame 0 on the network grid)
        through the frames of ``track_features`` (:meth:`track_features`).

        Returns:
            ``(tracks, vis, conf)``: ``tracks`` one ``[B, S, N, 2]`` per refinement iteration
            (the last is the answer), ``vis`` and ``conf`` ``[B, S, N]``.
        """
        return self.track_head.tracker(
            query_points,
            track_features,
            iters=iters or self.config.track_iters,
            query_chunk_size=query_chunk_size,
        )

    def reset_non_persistent_buffers(self, device: torch.device | None = None) -> None:
        """Recreate buffers that checkpoints do not hold (after loading into a model built on
        ``meta``)."""
        self.aggregator.reset_normalization_buffers(device)


def build_model(config: VGGTConfig | None = None, *, device: Any = None) -> VGGT:
    """Build a VGGT in eval mode. ``device="meta"`` builds it without allocating (shapes only)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = VGGT(config)
    return model.eval()
