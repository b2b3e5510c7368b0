"""VGGT camera head: iterative refinement of a 9-D pose encoding from the camera tokens.

Pose encoding ``[..., 9]`` = translation T (3), rotation quaternion (x, y, z, w) (4),
field of view (fov_h, fov_w) in radians (2), of a camera-from-world OpenCV pose; see
:mod:`pipeline.algo.models.camera` for the conversion to matrices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Block, Mlp

logger = logging.getLogger(__name__)

POSE_ENCODING_DIM = 9


def activate_pose(encoding: torch.Tensor) -> torch.Tensor:
    """Final activations: T and quaternion linear, field of view through ReLU. ``[..., 9]`` ->
    ``[..., 9]``."""
    return torch.cat((encoding[..., :7], F.relu(encoding[..., 7:])), dim=-1)


class CameraHead(nn.Module):
    """Adaptive-LayerNorm-modulated trunk applied ``iterations`` times to the last layer's camera
    tokens.

    Args:
        dim_in: channels of the aggregated tokens (2 x aggregator width).
        trunk_depth, num_heads, mlp_ratio, init_values: shape of the trunk blocks.
    """

    def __init__(
        self,
        dim_in: int = 2048,
        *,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
    ):
        super().__init__()
        self.trunk = nn.Sequential(
            *[
                Block(dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values)
                for _ in range(trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_ENCODING_DIM)

    def forward(
        self, tokens_list: Sequence[torch.Tensor], iterations: int = 4
    ) -> list[torch.Tensor]:
        """Predict pose encodings.

        Args:
            tokens_list: aggregator outputs; only the last entry ``[B, S, P, 2C]`` is read.
            iterations: refinement steps.
        Returns:
            list of ``iterations`` activated encodings, each ``[B, S, 9]`` (the last is the
            prediction).
        """
        tokens = self.token_norm(tokens_list[-1][:, :, 0])
        b, s, _ = tokens.shape
        raw = None
        results = []
        for _ in range(iterations):
            source = self.empty_pose_tokens.expand(b, s, -1) if raw is None else raw.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(source)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw = delta if raw is None else raw + delta
            results.append(activate_pose(raw))
        return results
