"""Depth Anything 3 backbone: a DINOv2 ViT with a per-view camera token and alternating attention.

Tokens per view: token 0 (the DINOv2 class token, overwritten by a learned camera token at block
``alt_start``), then the ``(H/14)*(W/14)`` patch tokens in row-major order; there are no register
tokens. Blocks ``i >= alt_start`` with odd ``i`` attend over the tokens of all views ("global");
every other block attends within one view. From block ``rope_start`` on, blocks use QK-norm and
2D RoPE: per-view blocks place patch ``(r, c)`` at ``(r+1, c+1)``, global blocks place every patch
at ``(1, 1)``; token 0 is always at ``(0, 0)``.

With ``S >= 3`` views (and no camera conditioning) a reference view is chosen from the token-0
states entering block ``alt_start - 1`` and moved to the front; it gets ``camera_token[:, 0]``,
the others ``camera_token[:, 1]``. Outputs are returned in the input order.

Parameter names follow the released checkpoints (``pretrained.cls_token``,
``pretrained.blocks.N``...).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .aggregator import global_groups
from .dinov2 import PatchProjection
from .layers import Block, RotaryEmbedding2D

logger = logging.getLogger(__name__)

REF_SELECTION_MIN_VIEWS = 3
"""Reference-view selection runs only with at least this many views (as the reference)."""
REF_VIEW_STRATEGIES = ("first", "middle", "saddle_balanced", "saddle_sim_range")


class SwiGLUFFN(nn.Module):
    """``w3(silu(a) * b)`` with ``[a, b] = w12(x)``; hidden width ``(int(4*dim*2/3) + 7) // 8 *
    8``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


@dataclass(frozen=True, kw_only=True)
class BackboneShape:
    """Shape of the DA3 ViT backbone."""

    embed_dim: int
    """Token width C."""
    depth: int
    """Number of blocks."""
    num_heads: int
    """Attention heads."""
    out_layers: tuple[int, ...]
    """The four blocks whose outputs feed the heads (the last also feeds the camera decoder)."""
    alt_start: int = -1
    """First block of the alternating (per-view / global) part; -1: every block is per-view."""
    rope_start: int = -1
    """First block with QK-norm and RoPE (= ``qknorm_start`` in every release); -1: none."""
    cat_token: bool = True
    """Head features are ``cat(last per-view output, output)`` (2C) instead of the output (C)."""
    swiglu: bool = False
    """SwiGLU feed-forward (ViT-g) instead of the GELU MLP."""
    img_size: int = 518
    """Square image side of the stored position embedding (518 -> 37x37 patches)."""
    patch_size: int = 14
    """Pixels per patch side."""
    rope_freq: float = 100.0
    """RoPE base frequency."""


def select_reference_view(tokens: torch.Tensor, strategy: str = "saddle_balanced") -> torch.Tensor:
    """Reference view per batch element from the token-0 states ``tokens`` ``[B, S, C]`` -> ``[B]``
    (int64).

    ``saddle_balanced``: min-max normalise (per batch, +1e-8) the mean off-diagonal cosine
    similarity,
    the L2 norm and the unbiased variance of the L2-normalised token, and take the argmin of the
    summed
    distances to 0.5. ``saddle_sim_range``: argmax of (max - min) off-diagonal similarity.
    """
    b, s, _ = tokens.shape
    if strategy not in REF_VIEW_STRATEGIES:
        raise ValueError(
            f"unknown reference view strategy {strategy!r}; use one of {REF_VIEW_STRATEGIES}"
        )
    if s <= 1 or strategy == "first":
        return torch.zeros(b, dtype=torch.long, device=tokens.device)
    if strategy == "middle":
        return torch.full((b,), s // 2, dtype=torch.long, device=tokens.device)
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    sim = unit @ unit.transpose(1, 2) - torch.eye(s, device=tokens.device, dtype=tokens.dtype)
    if strategy == "saddle_sim_range":
        return (sim.max(dim=-1).values - sim.min(dim=-1).values).argmax(dim=1)

    def unit_range(m: torch.Tensor) -> torch.Tensor:
        lo, hi = m.min(dim=1, keepdim=True).values, m.max(dim=1, keepdim=True).values
        return (m - lo) / (hi - lo + 1e-8)

    score = sum(
        (unit_range(m) - 0.5).abs()
        for m in (sim.sum(-1) / (s - 1), tokens.norm(dim=-1), unit.var(dim=-1))
    )
    return score.argmin(dim=1)


def reference_first_order(ref: torch.Tensor, views: int) -> torch.Tensor:
    """Permutation ``[B, S]`` putting view ``ref[b]`` first: ``[ref, 0, .., ref-1, ref+1, ..,
    S-1]``."""
    pos = torch.arange(views, device=ref.device).expand(ref.shape[0], -1)
    order = torch.where((pos > 0) & (pos <= ref[:, None]), pos - 1, pos)
    order[:, 0] = ref
    return order


def _take_views(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x[b, order[b]]`` for ``x`` ``[B, S, ...]`` and ``order`` ``[B, S']``."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], order]


class DA3VisionTransformer(nn.Module):
    """The ViT (``backbone.pretrained`` in checkpoints). See the module docstring for the token
    layout."""

    def __init__(self, shape: BackboneShape):
        super().__init__()
        c, self.shape, self.patch_size = shape.embed_dim, shape, shape.patch_size
        grid = shape.img_size // shape.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.camera_token = nn.Parameter(torch.zeros(1, 2, c)) if shape.alt_start != -1 else None
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, c))
        self.patch_embed = PatchProjection(shape.patch_size, 3, c)
        self.rope = RotaryEmbedding2D(shape.rope_freq) if shape.rope_start != -1 else None
        self.blocks = nn.ModuleList(self._block(i) for i in range(shape.depth))
        self.norm = nn.LayerNorm(c, eps=1e-5)

    def _block(self, i: int) -> Block:
        s = self.shape
        late = s.rope_start != -1 and i >= s.rope_start
        ffn = SwiGLUFFN(s.embed_dim) if s.swiglu else None
        return Block(
            s.embed_dim,
            s.num_heads,
            init_values=1.0,
            norm_eps=1e-6,
            qk_norm=late,
            rope=self.rope if late else None,
            ffn=ffn,
        )

    def is_global(self, i: int) -> bool:
        """True if block ``i`` attends across views."""
        return self.shape.alt_start != -1 and i >= self.shape.alt_start and i % 2 == 1

    def _position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """``[1, 1 + gh*gw, C]``: bicubic (no antialias) with scale ``((g+0.1)/M)``, as DINOv2
        does."""
        stored = self.pos_embed.shape[1] - 1
        if stored == gh * gw and gh == gw:
            return self.pos_embed
        m = int(math.sqrt(stored))
        pos = self.pos_embed.float()
        patch = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(
            patch, scale_factor=((gh + 0.1) / m, (gw + 0.1) / m), mode="bicubic", antialias=False
        )
        if patch.shape[-2:] != (gh, gw):
            raise ValueError(
                f"position embedding resized to {tuple(patch.shape[-2:])}, expected {(gh, gw)}"
            )
        patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat((pos[:, :1], patch), dim=1).to(self.pos_embed.dtype)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[B, S, 3, H, W]`` -> tokens ``[B, S, 1 + P, C]`` (class token
        first)."""
        b, s, _, h, w = images.shape
        x = self.patch_embed(images.reshape(b * s, 3, h, w))
        x = torch.cat((self.cls_token.expand(b * s, -1, -1), x), dim=1)
        x = x + self._position_embedding(h // self.patch_size, w // self.patch_size)
        return x.view(b, s, *x.shape[1:])

    def positions(self, gh: int, gw: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE positions ``[1 + gh*gw, 2]`` of one view: (per-view, global)."""
        grid = (
            torch.cartesian_prod(torch.arange(gh, device=device), torch.arange(gw, device=device))
            + 1
        )
        zero = torch.zeros(1, 2, dtype=grid.dtype, device=device)
        return torch.cat((zero, grid)), torch.cat((zero, torch.ones_like(grid)))

    def run_block(
        self, i: int, x: torch.Tensor, pos: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Block ``i`` on ``x`` ``[B, S, N, C]`` (per view or across views) -> ``[B, S, N, C]``."""
        b, s, n, c = x.shape
        if self.is_global(i):
            p = pos[1].repeat(s, 1).expand(b, -1, -1)
            return self.blocks[i](x.reshape(b, s * n, c), pos=p).view(b, s, n, c)
        p = pos[0].expand(b * s, -1, -1)
        return self.blocks[i](x.reshape(b * s, n, c), pos=p).view(b, s, n, c)


@dataclass(frozen=True, kw_only=True)
class BackboneOutput:
    """What the heads read from the backbone."""

    features: list[torch.Tensor]
    """Per out layer, patch features ``[B, S, P, C']`` (C' = 2C with ``cat_token``: raw per-view
    half,
    then the ``norm``-ed half), in input view order."""
    camera_tokens: list[torch.Tensor]
    """Per out layer, the un-normalised token 0 ``[B, S, C']``."""
    ref_view_index: torch.Tensor | None
    """``[B]`` selected reference view (input index), or None when no selection ran."""


class DA3Backbone(nn.Module):
    """``backbone`` of a DA3 checkpoint: holds the ViT as ``pretrained``."""

    def __init__(self, shape: BackboneShape):
        super().__init__()
        self.pretrained = DA3VisionTransformer(shape)
        self.shape = shape

    def forward(
        self,
        images: torch.Tensor,
        *,
        cam_token: torch.Tensor | None = None,
        ref_view_strategy: str = "saddle_balanced",
        frame_batch_size: int | None = None,
    ) -> BackboneOutput:
        """Run the ViT.

        Args:
            images: ``[B, S, 3, H, W]`` ImageNet-normalised, H and W multiples of 14.
            cam_token: ``[B, S, C]`` camera-conditioning tokens (from ``cam_enc``) replacing the
                learned
                camera token; disables reference-view selection.
            ref_view_strategy: "saddle_balanced" (default), "first", "middle" or "saddle_sim_range".
            frame_batch_size: run the blocks from ``alt_start - 1`` on in groups of this many views,
                each group made of the reference view plus consecutive others (approximate; None or
                ``>= S`` is the exact model). Earlier blocks are per-view and run on all views at
                once.
        """
        vit, s = self.pretrained, self.shape
        _, views, _, h, w = images.shape
        pos = vit.positions(h // s.patch_size, w // s.patch_size, images.device)
        x = vit.embed(images)
        split = max(s.alt_start - 1, 0) if s.alt_start != -1 else 0
        early = {}
        for i in range(split):
            x = vit.run_block(i, x, pos)
            if i in s.out_layers:
                early[i] = torch.cat((x, x), dim=-1) if s.cat_token else x
        ref, order = None, None
        if s.alt_start > 0 and views >= REF_SELECTION_MIN_VIEWS and cam_token is None:
            ref = select_reference_view(x[:, :, 0], ref_view_strategy)
            order = reference_first_order(ref, views)
            x = _take_views(x, order)
            if logger.isEnabledFor(logging.DEBUG):  # .tolist() waits for the device
                logger.debug("reference views %s (strategy %s)", ref.tolist(), ref_view_strategy)
        late = self._late_blocks(x, pos, split, cam_token, global_groups(views, frame_batch_size))
        if order is not None:
            inverse = order.argsort(dim=1)
            late = {i: _take_views(t, inverse) for i, t in late.items()}
        return self._finish({**early, **late}, ref)

    def _late_blocks(
        self,
        x: torch.Tensor,
        pos,
        split: int,
        cam_token: torch.Tensor | None,
        groups: Sequence[Sequence[int]],
    ) -> dict:
        """Blocks ``split ..`` on view groups of ``x`` ``[B, S, N, C]`` (reference first); raw
        out-layer tokens."""
        parts = {i: [] for i in self.shape.out_layers if i >= split}
        for g, group in enumerate(groups):
            idx = torch.tensor(group, device=x.device)
            xg = x[:, idx]
            local = xg
            for i in range(split, self.shape.depth):
                if i == self.shape.alt_start:
                    xg = xg.clone()
                    xg[:, :, 0] = self._camera_tokens(xg.shape[0], len(group), cam_token, idx)
                    local = (
                        xg  # the reference overwrites token 0 in place, in its per-view copy too
                    )
                xg = self.pretrained.run_block(i, xg, pos)
                if not self.pretrained.is_global(i):
                    local = xg
                if i in parts:
                    out = torch.cat((local, xg), dim=-1) if self.shape.cat_token else xg
                    parts[i].append(out if g == 0 else out[:, 1:])
        return {i: torch.cat(p, dim=1) if len(p) > 1 else p[0] for i, p in parts.items()}

    def _camera_tokens(
        self, b: int, s: int, cam_token: torch.Tensor | None, idx: torch.Tensor
    ) -> torch.Tensor:
        """``[B, s, C]``: the given conditioning tokens of views ``idx``, else learned ref/other
        tokens."""
        if cam_token is not None:
            return cam_token[:, idx]
        tok = self.pretrained.camera_token
        return torch.cat((tok[:, :1].expand(b, 1, -1), tok[:, 1:].expand(b, s - 1, -1)), dim=1)

    def _finish(self, raw: dict, ref: torch.Tensor | None) -> BackboneOutput:
        """Normalise raw out-layer tokens ``[B, S, 1+P, C']`` and split off token 0."""
        norm, c = self.pretrained.norm, self.shape.embed_dim
        feats, cams = [], []
        for i in self.shape.out_layers:
            t = raw[i]
            cams.append(t[:, :, 0])
            t = t[:, :, 1:]
            feats.append(
                torch.cat((t[..., :c], norm(t[..., c:])), dim=-1)
                if self.shape.cat_token
                else norm(t)
            )
        return BackboneOutput(features=feats, camera_tokens=cams, ref_view_index=ref)
