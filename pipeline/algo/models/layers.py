"""Transformer building blocks shared by the VGGT aggregator, its DINOv2 patch embed and its camera
head.

All token tensors are ``[batch, tokens, channels]``. Module attribute names follow the released
checkpoints (``norm1``, ``attn.qkv``, ``ls1.gamma`` ...) so that state_dict keys line up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def per_window(head: Callable[[torch.Tensor], Any], tokens: torch.Tensor) -> Any:
    """``head`` run on each window ``tokens[b : b + 1]`` of a batch ``[B, S, ...]`` alone, the
    results (a tensor, or a list of tensors) concatenated along the batch.

    For the camera heads: their matrix products have one row per frame (``B * S``), and CPU
    BLAS rounds a row differently for other row counts (a linear layer 512 -> 128: 8e-7 between
    8 and 24 rows). Bundle adjustment can magnify such a difference in a pose, so a window's
    cameras would depend on what else is in its batch. The heads are a fraction of a percent
    of the forward; the dense heads and the aggregator have thousands of rows per frame.
    """
    if tokens.shape[0] == 1:
        return head(tokens)
    parts = [head(tokens[b : b + 1]) for b in range(tokens.shape[0])]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [torch.cat(step) for step in zip(*parts)]


class Mlp(nn.Module):
    """Two linear layers with a GELU in between: ``fc2(gelu(fc1(x)))``."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        bias: bool = True,
    ):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learnable scale ``x * gamma``; ``gamma`` has shape ``[dim]``."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RotaryEmbedding2D(nn.Module):
    """2D rotary position embedding (RoPE) over (row, column) token positions.

    The head channels are split in two halves: the first half is rotated by the row index, the
    second by the column index. Inside each half, channel ``i`` and ``i + d/2`` form a rotation
    pair with frequency ``base ** (-2i / d)`` (``d`` = channels of the half). Position 0 means "no
    rotation"; the aggregator gives special tokens position 0 and patch tokens ``row + 1, col + 1``.
    """

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = float(base)

    def _cos_sin(self, dim: int, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables ``[length, dim]`` of cos and sin for positions ``0 .. length-1``."""
        exponents = torch.arange(0, dim, 2, device=device).float() / dim
        inv_freq = 1.0 / (self.base**exponents)
        angles = torch.outer(torch.arange(length, device=device, dtype=inv_freq.dtype), inv_freq)
        angles = angles.to(dtype)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _rotate_1d(
        x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """Rotate ``x`` ``[B, heads, N, d]`` by integer positions ``pos`` ``[B, N]``."""
        c = F.embedding(pos, cos)[:, None]
        s = F.embedding(pos, sin)[:, None]
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * c + rotated * s

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Apply RoPE.

        Args:
            x: ``[B, heads, N, head_dim]``, ``head_dim`` divisible by 4.
            pos: ``[B, N, 2]`` integer (row, column) positions.
        Returns:
            Tensor shaped like ``x``.
        """
        half = x.shape[-1] // 2
        cos, sin = self._cos_sin(half, int(pos.max()) + 1, x.device, x.dtype)
        rows, cols = x.chunk(2, dim=-1)
        rows = self._rotate_1d(rows, pos[..., 0], cos, sin)
        cols = self._rotate_1d(cols, pos[..., 1], cos, sin)
        return torch.cat((rows, cols), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head LayerNorm on q and k and optional RoPE."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        rope: RotaryEmbedding2D | None = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, N, C]``, ``pos`` ``[B, N, 2]`` or None -> ``[B, N, C]``."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    ``ffn`` replaces the default :class:`Mlp` (``dim -> dim*mlp_ratio -> dim``) as ``mlp``, e.g. a
    SwiGLU.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        init_values: float | None = None,
        norm_eps: float = 1e-5,
        qk_norm: bool = False,
        rope: RotaryEmbedding2D | None = None,
        ffn: nn.Module | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = ffn if ffn is not None else Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, N, C]`` -> ``[B, N, C]``."""
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        return x + self.ls2(self.mlp(self.norm2(x)))
