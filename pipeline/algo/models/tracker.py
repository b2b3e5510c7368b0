"""VGGT's point tracker (CoTracker/VGGSfM style): correlation pyramid + space-time transformer
refinement.

Coordinates here are in feature-map pixels with ``align_corners=True`` sampling: integer ``(x, y)``
is the centre of feature cell column ``x``, row ``y``. :class:`TrackHead` converts from and to
image pixels (``x_image = stride * x_feature``).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Mlp

logger = logging.getLogger(__name__)


def sample_bilinear(
    values: torch.Tensor, xy: torch.Tensor, padding_mode: str = "border"
) -> torch.Tensor:
    """Sample ``values`` ``[N, C, H, W]`` at pixel coordinates ``xy`` ``[N, h, w, 2]`` (x, y;
    align_corners).

    Half-precision ``values`` (bf16/fp16 under autocast) are sampled in float32: a pixel
    coordinate near 200 held in bf16 is rounded to a whole pixel (fp16: an eighth), which would
    move every correlation lookup of the tracker by up to half a feature pixel on the GPU.

    Returns ``[N, C, h, w]`` (float32 for half-precision ``values``).
    """
    if values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()
    xy = xy.detach().to(values.dtype)
    sizes = values.shape[2:]
    scale = torch.tensor(
        [2 / max(sizes[1] - 1, 1), 2 / max(sizes[0] - 1, 1)], device=xy.device, dtype=xy.dtype
    )
    return F.grid_sample(values, xy * scale - 1, align_corners=True, padding_mode=padding_mode)


def sample_points(fmap: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Features of ``fmap`` ``[B, C, H, W]`` at points ``xy`` ``[B, N, 2]`` -> ``[B, N, C]`` (border
    padding)."""
    return sample_bilinear(fmap, xy.unsqueeze(2))[..., 0].permute(0, 2, 1)


def sincos_grid_embedding(dim: int, height: int, width: int) -> torch.Tensor:
    """Table ``[1, dim, height, width]``: first half encodes x (column), second half y (row).

    Each half is ``[sin(p*w_k), cos(p*w_k)]`` with ``w_k = 10000 ** (-k / (dim/4))``, in float64
    then cast.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1).double()[:, None] * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    emb = torch.cat((encode(xs), encode(ys)), dim=1).float()
    return emb.reshape(1, height, width, dim).permute(0, 3, 1, 2)


def flow_embedding(flow: torch.Tensor, channels: int) -> torch.Tensor:
    """Embed 2D offsets ``[M, T, 2]`` -> ``[M, T, 2*channels]``: per axis interleaved sin/cos of ``v
    * k * 1000/channels``."""
    div = (
        torch.arange(0, channels, 2, device=flow.device, dtype=torch.float32) * (1000.0 / channels)
    ).view(1, 1, -1)
    parts = []
    for axis in range(2):
        v = flow[..., axis : axis + 1]
        pe = torch.zeros(*flow.shape[:2], channels, device=flow.device, dtype=torch.float32)
        pe[..., 0::2] = torch.sin(v * div)
        pe[..., 1::2] = torch.cos(v * div)
        parts.append(pe)
    return torch.cat(parts, dim=-1)


class CorrelationPyramid:
    """Feature pyramid (2x average pooling per level) and windowed correlation lookup.

    Args:
        fmaps: ``[B, S, C, H, W]`` normalised feature maps.
        levels: pyramid levels.
        radius: lookup window radius (``(2r+1)^2`` samples per level).
    """

    def __init__(self, fmaps: torch.Tensor, levels: int, radius: int):
        self.radius = radius
        self.pyramid = [fmaps]
        for _ in range(levels - 1):
            b, s, c, h, w = self.pyramid[-1].shape
            pooled = F.avg_pool2d(self.pyramid[-1].reshape(b * s, c, h, w), kernel_size=2, stride=2)
            self.pyramid.append(pooled.reshape(b, s, c, *pooled.shape[-2:]))
        offsets = torch.linspace(
            -radius, radius, 2 * radius + 1, device=fmaps.device, dtype=fmaps.dtype
        )
        # window[i, j] = (offsets[i], offsets[j]) added to (x, y): the x offset follows
        # the first index.
        self.window = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)

    def lookup(
        self, targets: torch.Tensor, coords: torch.Tensor, chunk: int | None = None
    ) -> torch.Tensor:
        """Correlations of ``targets`` ``[B, S, N, C]`` around ``coords`` ``[B, S, N, 2]`` (level-0
        pixels).

        ``chunk`` bounds the number of queries whose full correlation volume exists at once (results
        are identical). Returns ``[B, S, N, levels * (2r+1)^2]``.
        """
        n = targets.shape[2]
        step = n if chunk is None else max(1, int(chunk))
        pieces = [
            self._lookup(targets[:, :, i : i + step], coords[:, :, i : i + step])
            for i in range(0, n, step)
        ]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)

    def _lookup(self, targets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        b, s, n, c = targets.shape
        k = 2 * self.radius + 1
        out = []
        for level, fmaps in enumerate(self.pyramid):
            h, w = fmaps.shape[-2:]
            corr = torch.matmul(targets, fmaps.reshape(b, s, c, h * w)) / math.sqrt(c)
            centre = coords.reshape(b * s * n, 1, 1, 2) / (2**level)
            grid = centre + self.window.to(coords.dtype).view(1, k, k, 2)
            sampled = sample_bilinear(corr.reshape(b * s * n, 1, h, w), grid, padding_mode="zeros")
            out.append(sampled.view(b, s, n, -1))
        return torch.cat(out, dim=-1).contiguous()


class AttnBlock(nn.Module):
    """``x = norm1(x); x = x + mha(x, x, x); x = x + mlp(norm2(x))`` (the residual is on the
    normalised x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(embed_dim=dim, num_heads=num_heads, batch_first=True)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Cross attention of ``x`` ``[M, n, C]`` to ``context`` ``[M, m, C]``, same residual layout as
    :class:`AttnBlock`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(
            embed_dim=dim, num_heads=num_heads, batch_first=True
        )
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context)[0]
        return x + self.mlp(self.norm2(x))


class UpdateFormer(nn.Module):
    """Alternating time attention (per track) and space attention through ``num_virtual`` virtual
    tracks.

    Note: the virtual tracks attend to *all* query tracks, so results depend on the whole query set.
    """

    def __init__(
        self,
        *,
        input_dim: int,
        hidden_size: int,
        output_dim: int,
        depth: int,
        num_heads: int,
        num_virtual: int,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.num_virtual = num_virtual
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        self.virual_tracks = nn.Parameter(
            torch.zeros(1, num_virtual, 1, hidden_size)
        )  # (sic) checkpoint name
        self.time_blocks = nn.ModuleList(
            AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.space_virtual_blocks = nn.ModuleList(
            AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, N, T, input_dim]`` -> ``[B, N, T, output_dim]``."""
        tokens = self.input_transform(self.input_norm(x))
        init = tokens
        b, n, t, c = tokens.shape
        tokens = torch.cat((tokens, self.virual_tracks.repeat(b, 1, t, 1)), dim=1)
        total = n + self.num_virtual
        for i in range(len(self.time_blocks)):
            tokens = self.time_blocks[i](tokens.reshape(b * total, t, c)).view(b, total, t, c)
            space = tokens.permute(0, 2, 1, 3).reshape(b * t, total, c)
            points, virtual = space[:, :n], space[:, n:]
            virtual = self.space_virtual2point_blocks[i](virtual, points)
            virtual = self.space_virtual_blocks[i](virtual)
            points = self.space_point2virtual_blocks[i](points, virtual)
            tokens = torch.cat((points, virtual), dim=1).view(b, t, total, c).permute(0, 2, 1, 3)
        return self.flow_head(self.output_norm(tokens[:, :n] + init))


class TrackPredictor(nn.Module):
    """Iterative track refinement from query points in frame 0 over feature maps of all frames.

    Args:
        latent_dim: feature channels.
        stride: image pixels per feature cell.
        corr_levels, corr_radius: correlation pyramid.
        hidden_size, depth, num_heads, num_virtual: update transformer.
        max_scale: normaliser of the raw flow appended to its embedding.
    """

    def __init__(
        self,
        *,
        latent_dim: int = 128,
        stride: int = 2,
        corr_levels: int = 7,
        corr_radius: int = 4,
        hidden_size: int = 384,
        depth: int = 6,
        num_heads: int = 8,
        num_virtual: int = 64,
        max_scale: float = 518.0,
    ):
        super().__init__()
        self.latent_dim, self.stride, self.max_scale = latent_dim, stride, float(max_scale)
        self.corr_levels, self.corr_radius = corr_levels, corr_radius
        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden_size, latent_dim)
        self.transformer_dim = 3 * latent_dim + 4
        self.query_ref_token = nn.Parameter(torch.zeros(1, 2, self.transformer_dim))
        self.updateformer = UpdateFormer(
            input_dim=self.transformer_dim,
            hidden_size=hidden_size,
            output_dim=latent_dim + 2,
            depth=depth,
            num_heads=num_heads,
            num_virtual=num_virtual,
        )
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def _transformer_input(self, coords, track_feats, corr, pos_emb):
        """Build ``[B, N, S, transformer_dim]`` from coords ``[B,S,N,2]``, feats ``[B,S,N,C]``, corr
        ``[B,S,N,L]``."""
        b, s, n, _ = coords.shape
        corr = self.corr_mlp(corr.permute(0, 2, 1, 3).reshape(b * n, s, -1))
        flows = (coords - coords[:, :1]).permute(0, 2, 1, 3).reshape(b * n, s, 2)
        flow_emb = torch.cat(
            (
                flow_embedding(flows, self.latent_dim // 2),
                flows / self.max_scale,
                flows / self.max_scale,
            ),
            dim=-1,
        )
        feats = track_feats.permute(0, 2, 1, 3).reshape(b * n, s, self.latent_dim)
        x = torch.cat((flow_emb, corr, feats), dim=2) + pos_emb
        ref = torch.cat(
            (self.query_ref_token[:, :1], self.query_ref_token[:, 1:2].expand(-1, s - 1, -1)), dim=1
        )
        return (x + ref.to(x.dtype)).view(b, n, s, -1)

    def forward(
        self,
        query_points: torch.Tensor,
        fmaps: torch.Tensor,
        *,
        iters: int = 4,
        query_chunk_size: int | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Track ``query_points`` ``[B, N, 2]`` (image pixels, frame 0) through ``fmaps`` ``[B, S,
        C, h, w]``.

        Args:
            iters: refinement iterations.
            query_chunk_size: queries per correlation lookup (memory bound; results unchanged).
        Returns:
            (list of ``iters`` tracks ``[B, S, N, 2]`` in image pixels, visibility ``[B, S, N]``,
            confidence ``[B, S, N]``), both probabilities.
        """
        b, n, _ = query_points.shape
        s, c, hh, ww = fmaps.shape[1:]
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        coords = (query_points / float(self.stride)).reshape(b, 1, n, 2).repeat(1, s, 1, 1)
        query_feat = sample_points(fmaps[:, 0], coords[:, 0])
        track_feats = query_feat.unsqueeze(1).repeat(1, s, 1, 1)
        start = coords[:, 0].clone()
        pyramid = CorrelationPyramid(fmaps, self.corr_levels, self.corr_radius)
        table = sincos_grid_embedding(self.transformer_dim, hh, ww).to(fmaps.device)
        pos_emb = sample_points(table.expand(b, -1, -1, -1), coords[:, 0]).reshape(b * n, 1, -1)
        preds = []
        for _ in range(iters):
            coords = coords.detach()
            corr = pyramid.lookup(track_feats, coords, query_chunk_size)
            delta = self.updateformer(self._transformer_input(coords, track_feats, corr, pos_emb))
            delta = delta.reshape(b * n, s, -1)
            feats_flat = track_feats.permute(0, 2, 1, 3).reshape(b * n * s, self.latent_dim)
            feats_flat = (
                self.ffeat_updater(
                    self.ffeat_norm(delta[:, :, 2:].reshape(b * n * s, self.latent_dim))
                )
                + feats_flat
            )
            track_feats = feats_flat.reshape(b, n, s, self.latent_dim).permute(0, 2, 1, 3)
            coords = coords + delta[:, :, :2].reshape(b, n, s, 2).permute(0, 2, 1, 3)
            coords[:, 0] = start
            preds.append(coords * self.stride)
        flat = track_feats.reshape(b * s * n, self.latent_dim)
        vis = torch.sigmoid(self.vis_predictor(flat).reshape(b, s, n))
        conf = torch.sigmoid(self.conf_predictor(flat).reshape(b, s, n))
        return preds, vis, conf
