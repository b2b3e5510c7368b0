"""DINOv2 vision transformer with register tokens, used as VGGT's patch embedding.

Only what VGGT uses: ``forward`` returns the final-LayerNorm'd patch tokens. Parameter names follow
the released checkpoints (``cls_token``, ``pos_embed``, ``register_tokens``, ``mask_token``,
``patch_embed.proj``, ``blocks.N``, ``norm``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Block

logger = logging.getLogger(__name__)


class PatchProjection(nn.Module):
    """Non-overlapping ``patch x patch`` convolution: ``[B, 3, H, W]`` -> ``[B, (H/p)*(W/p),
    C]``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2Encoder(nn.Module):
    """ViT with a class token, register tokens and a learned position embedding for a square grid.

    Args:
        img_size: side of the square image the position embedding was trained for (518 -> 37x37).
        patch_size: patch side in pixels.
        embed_dim, depth, num_heads, mlp_ratio: transformer shape.
        num_register_tokens: register tokens inserted after the class token.
        init_values: LayerScale initial value.
    """

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        grid = img_size // patch_size
        self.patch_embed = PatchProjection(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, init_values=init_values, norm_eps=1e-6)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def _position_embedding(self, n_patches: int, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embedding ``[1, 1 + grid_h*grid_w, C]``, bicubic-resized (antialiased) to the
        grid."""
        stored = self.pos_embed.shape[1] - 1
        if n_patches == stored and grid_h == grid_w:
            return self.pos_embed
        dtype = self.pos_embed.dtype
        pos = self.pos_embed.float()
        side = int(round(stored**0.5))
        if side * side != stored:
            raise ValueError(f"position embedding of {stored} patches is not a square grid")
        patch_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((pos[:, :1], patch_pos), dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[N, 3, H, W]`` -> patch tokens ``[N, (H/p)*(W/p), C]``
        (row-major)."""
        n, _, h, w = images.shape
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(n, -1, -1), x), dim=1)
        x = x + self._position_embedding(x.shape[1] - 1, h // self.patch_size, w // self.patch_size)
        x = torch.cat((x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]), dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 1 + self.num_register_tokens :]
