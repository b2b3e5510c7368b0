"""VGGT track head: a feature-only DPT at half resolution feeding the iterative
:class:`TrackPredictor`.

Pixel convention: query points and returned tracks are image pixel coordinates of the network
input in which integer ``(x, y)`` is the centre of pixel column ``x``, row ``y`` (add 0.5 for
COLMAP).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from .dpt_head import DPTHead
from .tracker import TrackPredictor

logger = logging.getLogger(__name__)


class TrackHead(nn.Module):
    """Feature extractor (DPT, ``features`` channels, stride ``stride``) + tracker.

    Args:
        dim_in: token channels; patch_size: pixels per patch.
        features: feature channels (tracker latent width).
        out_channels, layer_idx: DPT projection widths and aggregator layers read.
        iters: refinement iterations; stride: feature stride (DPT ``down_ratio``).
        corr_levels, corr_radius, hidden_size, depth, num_heads, num_virtual: tracker shape.
    """

    def __init__(
        self,
        dim_in: int,
        *,
        patch_size: int = 14,
        features: int = 128,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        layer_idx: Sequence[int] = (4, 11, 17, 23),
        iters: int = 4,
        stride: int = 2,
        corr_levels: int = 7,
        corr_radius: int = 4,
        hidden_size: int = 384,
        depth: int = 6,
        num_heads: int = 8,
        num_virtual: int = 64,
    ):
        super().__init__()
        self.iters = iters
        self.feature_extractor = DPTHead(
            dim_in,
            patch_size=patch_size,
            features=features,
            out_channels=out_channels,
            layer_idx=layer_idx,
            feature_only=True,
            down_ratio=stride,
            pos_embed=False,
        )
        self.tracker = TrackPredictor(
            latent_dim=features,
            stride=stride,
            corr_levels=corr_levels,
            corr_radius=corr_radius,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            num_virtual=num_virtual,
        )

    def forward(
        self,
        tokens_list: Sequence[torch.Tensor | None],
        image_hw: tuple[int, int],
        patch_start_idx: int,
        query_points: torch.Tensor,
        *,
        iters: int | None = None,
        frames_chunk_size: int | None = 8,
        query_chunk_size: int | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Track ``query_points`` ``[B, N, 2]`` (frame 0 pixels).

        Returns:
            (tracks per iteration, each ``[B, S, N, 2]``; visibility ``[B, S, N]``; confidence ``[B,
            S, N]``;
            feature maps ``[B, S, features, H/stride, W/stride]``).
        """
        fmaps = self.feature_extractor(
            tokens_list, image_hw, patch_start_idx, frames_chunk_size=frames_chunk_size
        )
        tracks, vis, conf = self.tracker(
            query_points, fmaps, iters=iters or self.iters, query_chunk_size=query_chunk_size
        )
        return tracks, vis, conf, fmaps
