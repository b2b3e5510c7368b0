"""VGGT aggregator: DINOv2 patch embedding, then alternating frame-wise and global attention.

Tokens per frame: 1 camera token, ``R`` register tokens, then the ``(H/14)*(W/14)`` patch tokens in
row-major order (``patch_start_idx = 1 + R``). The first frame of every sequence gets its own
camera/register token pair (index 0 of the learned ``[1, 2, ...]`` tokens); all other frames share
index 1. Layer ``i`` of the output is ``cat(frame_block_i output, global_block_i output)`` along
channels: ``[B, S, P, 2C]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .dinov2 import DinoV2Encoder
from .layers import Block, RotaryEmbedding2D

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def first_frame_tokens(token: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """Learned special tokens ``[1, 2, X, C]`` -> ``[batch*frames, X, C]``: index 0 for frame 0, 1
    after."""
    first = token[:, :1].expand(batch, 1, *token.shape[2:])
    rest = token[:, 1:].expand(batch, frames - 1, *token.shape[2:])
    return torch.cat((first, rest), dim=1).reshape(batch * frames, *token.shape[2:])


def global_groups(frames: int, frame_batch_size: int | None) -> list[list[int]]:
    """Frame index groups for global attention; each group starts with frame 0.

    ``None`` or a size >= ``frames`` gives the single group ``[0 .. frames-1]`` (the exact model).
    Otherwise frames ``1 ..`` are split into runs of ``frame_batch_size - 1`` and frame 0 is
    prepended
    to each run, so every group shares the window's reference frame.
    """
    if frame_batch_size is None or frame_batch_size >= frames:
        return [list(range(frames))]
    if frame_batch_size < 2:
        raise ValueError(
            f"frame_batch_size must be >= 2 (frame 0 plus at least one other), got "
            f"{frame_batch_size}"
        )
    step = frame_batch_size - 1
    return [[0] + list(range(start, min(start + step, frames))) for start in range(1, frames, step)]


class Aggregator(nn.Module):
    """Alternating-attention transformer over ``S`` frames.

    Args:
        img_size, patch_size: image geometry of the DINOv2 position embedding.
        embed_dim, depth, num_heads, mlp_ratio: shape of the ``depth`` frame and ``depth`` global
            blocks.
        num_register_tokens: register tokens per frame (also used by the DINOv2 encoder).
        dino_depth, dino_num_heads: shape of the DINOv2 patch-embedding ViT (same width).
        rope_freq: RoPE base frequency.
        init_values: LayerScale initial value of the alternating blocks.
    """

    def __init__(
        self,
        *,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        dino_depth: int = 24,
        dino_num_heads: int = 16,
        rope_freq: float = 100.0,
        init_values: float = 0.01,
    ):
        super().__init__()
        self.patch_embed = DinoV2Encoder(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=dino_depth,
            num_heads=dino_num_heads,
            mlp_ratio=mlp_ratio,
            num_register_tokens=num_register_tokens,
            init_values=1.0,
        )
        self.rope = RotaryEmbedding2D(rope_freq)

        def make_block() -> Block:
            return Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                init_values=init_values,
                qk_norm=True,
                rope=self.rope,
            )

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.depth = depth
        self.patch_size = patch_size
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, num_register_tokens, embed_dim))
        self.patch_start_idx = 1 + num_register_tokens
        self.register_buffer("_resnet_mean", torch.empty(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.empty(1, 1, 3, 1, 1), persistent=False)
        self.reset_normalization_buffers()

    def reset_normalization_buffers(self, device: torch.device | None = None) -> None:
        """(Re)create the non-persistent ImageNet mean/std buffers ``[1, 1, 3, 1, 1]``.

        Needed after loading a checkpoint into a model built on the ``meta`` device. ``device``
        defaults to the device of the parameters.
        """
        device = torch.device(device) if device is not None else self.camera_token.device
        self._resnet_mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1)
        self._resnet_std = torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1)

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B, S, 3, H, W]`` -> tokens ``[B*S, P, C]`` and RoPE positions ``[B*S, P,
        2]``."""
        b, s, _, h, w = images.shape
        images = (images - self._resnet_mean) / self._resnet_std
        patches = self.patch_embed(images.reshape(b * s, 3, h, w))
        tokens = torch.cat(
            (
                first_frame_tokens(self.camera_token, b, s),
                first_frame_tokens(self.register_token, b, s),
                patches,
            ),
            dim=1,
        )
        gh, gw = h // self.patch_size, w // self.patch_size
        grid = torch.cartesian_prod(
            torch.arange(gh, device=images.device), torch.arange(gw, device=images.device)
        )
        pos = torch.cat(
            (torch.zeros(self.patch_start_idx, 2, dtype=grid.dtype, device=grid.device), grid + 1)
        )
        return tokens, pos.unsqueeze(0).expand(b * s, -1, -1)

    def _global(
        self, block: Block, tokens: torch.Tensor, pos: torch.Tensor, groups: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Global block over ``tokens`` ``[B, S, P, C]``, restricted to frame ``groups``."""
        b, s, p, c = tokens.shape
        if len(groups) == 1:
            return block(
                tokens.reshape(b, s * p, c), pos=pos[: s * p].unsqueeze(0).expand(b, -1, -1)
            ).view(b, s, p, c)
        out = torch.empty_like(tokens)
        for i, group in enumerate(groups):
            idx = torch.tensor(group, device=tokens.device)
            res = block(
                tokens[:, idx].reshape(b, len(group) * p, c),
                pos=pos[: len(group) * p].unsqueeze(0).expand(b, -1, -1),
            )
            res = res.view(b, len(group), p, c)
            keep = (
                slice(0, None) if i == 0 else slice(1, None)
            )  # frame 0: keep the first group's output
            out[:, idx[keep]] = res[:, keep]
        return out

    def forward(
        self,
        images: torch.Tensor,
        *,
        keep_layers: Iterable[int] | None = None,
        frame_batch_size: int | None = None,
    ) -> tuple[list[torch.Tensor | None], int]:
        """Run the aggregator.

        Args:
            images: ``[B, S, 3, H, W]`` RGB in [0, 1]; H and W multiples of the patch size.
            keep_layers: layer indices whose outputs are returned; None keeps all ``depth`` layers.
                Others are returned as None and never stored (the lean path).
            frame_batch_size: restrict global attention to groups of this many frames, each group
                including frame 0 (approximate; None = exact model). See :func:`global_groups`.
        Returns:
            (list of ``depth`` entries, each ``[B, S, P, 2C]`` or None; ``patch_start_idx``).
        """
        b, s, c_in, h, w = images.shape
        if c_in != 3:
            raise ValueError(f"expected 3 input channels, got {c_in}")
        keep = set(range(self.depth)) if keep_layers is None else set(keep_layers)
        groups = global_groups(s, frame_batch_size)
        tokens, pos = self._embed(images)
        p, c = tokens.shape[1:]
        flat_pos = pos[0].repeat(s, 1)  # [S*P, 2] positions of one sequence
        outputs: list[torch.Tensor | None] = []
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens, pos=pos)
            frame_out = tokens.view(b, s, p, c) if i in keep else None
            tokens = self._global(self.global_blocks[i], tokens.view(b, s, p, c), flat_pos, groups)
            outputs.append(torch.cat((frame_out, tokens), dim=-1) if i in keep else None)
            tokens = tokens.reshape(b * s, p, c)
        return outputs, self.patch_start_idx
