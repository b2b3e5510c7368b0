"""DPT dense head (Ranftl et al., "Vision Transformers for Dense Prediction") as VGGT uses it.

Reads four aggregator layers, projects their patch tokens to multi-scale feature maps, fuses them
coarse to fine, upsamples to the input resolution (or half of it for the track features) and
either returns the features or a prediction plus a confidence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

_INT_MAX = 1610612736  # interpolate in pieces above this many output elements (kernel index limit)


def interpolate_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, ``align_corners=True`` resize of ``[N, C, h, w]`` to ``size``, split along N if
    huge."""
    elements = size[0] * size[1] * x.shape[0] * x.shape[1]
    if elements <= _INT_MAX:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    pieces = torch.chunk(x, elements // _INT_MAX + 1, dim=0)
    return torch.cat(
        [F.interpolate(p, size=size, mode="bilinear", align_corners=True) for p in pieces]
    ).contiguous()


def uv_position_embedding(
    height: int, width: int, channels: int, aspect: float, dtype, device
) -> torch.Tensor:
    """Sinusoidal embedding ``[channels, height, width]`` of a centred, diagonal-normalised uv grid.

    The grid spans x in ``±a/sqrt(a²+1) * (width-1)/width`` and y in ``±1/sqrt(a²+1) *
    (height-1)/height``
    (``a`` = image aspect W/H); the first half of the channels encodes x, the second y, each as
    ``[sin(p*w_k), cos(p*w_k)]`` with ``w_k = 100 ** (-k / (channels/4))``.
    """
    diag = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(
        -span_x * (width - 1) / width,
        span_x * (width - 1) / width,
        width,
        dtype=dtype,
        device=device,
    )
    ys = torch.linspace(
        -span_y * (height - 1) / height,
        span_y * (height - 1) / height,
        height,
        dtype=dtype,
        device=device,
    )
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    quarter = channels // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1).double()[:, None] * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    emb = torch.cat((encode(grid_x), encode(grid_y)), dim=-1).float()
    return emb.view(height, width, channels).permute(2, 0, 1)


class ResidualConvUnit(nn.Module):
    """``relu(x) + conv2(relu(conv1(relu(x))))``; the skip carries the *activated* input, as in
    DPT."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """Add the (refined) skip feature, refine, upsample (to ``size`` or x2) and project with a 1x1
    conv."""

    def __init__(self, features: int, *, has_residual: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = tuple(size) if size is not None else (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        return self.out_conv(interpolate_bilinear(x, size))


def _scratch(
    in_channels: Sequence[int], features: int, feature_only: bool, output_dim: int
) -> nn.Module:
    """The ``scratch`` module: 3x3 channel adapters, four fusion blocks and the output
    convolutions."""
    scratch = nn.Module()
    for i, ch in enumerate(in_channels, start=1):
        setattr(
            scratch, f"layer{i}_rn", nn.Conv2d(ch, features, kernel_size=3, padding=1, bias=False)
        )
    for i in range(1, 5):
        setattr(scratch, f"refinenet{i}", FusionBlock(features, has_residual=i != 4))
    if feature_only:
        scratch.output_conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
    else:
        scratch.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, output_dim, kernel_size=1),
        )
    return scratch


def activate_dense(
    out: torch.Tensor, activation: str, conf_activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``[N, C, H, W]`` into values ``[N, H, W, C-1]`` and confidence ``[N, H, W]`` and
    activate them.

    activation: "inv_log" (``sign(y) * expm1(|y|)``, point maps), "exp" (depth) or "linear".
    conf_activation: "expp1" (``1 + exp(c)``), "expp0" or "sigmoid".
    """
    fmap = out.permute(0, 2, 3, 1)
    values, conf = fmap[..., :-1], fmap[..., -1]
    if activation == "inv_log":
        values = torch.sign(values) * torch.expm1(torch.abs(values))
    elif activation == "exp":
        values = torch.exp(values)
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r}")
    if conf_activation == "expp1":
        conf = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf = conf.exp()
    elif conf_activation == "sigmoid":
        conf = torch.sigmoid(conf)
    else:
        raise ValueError(f"unknown conf_activation {conf_activation!r}")
    return values, conf


class DPTHead(nn.Module):
    """Dense head over aggregator layers ``layer_idx``.

    Args:
        dim_in: token channels (2 x aggregator width).
        patch_size: pixels per patch.
        output_dim: predicted channels including the confidence (depth 2, points 4).
        activation, conf_activation: see :func:`activate_dense`.
        features: fusion width (256; 128 for the track features).
        out_channels: per-layer projection widths.
        layer_idx: the four aggregator layers read.
        pos_embed: add the uv sinusoidal embedding (depth/point heads) or not (track features).
        feature_only: return the fused features instead of predictions.
        down_ratio: output resolution divisor (2 for the track features).
    """

    def __init__(
        self,
        dim_in: int,
        *,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: Sequence[int] = (256, 512, 1024, 1024),
        layer_idx: Sequence[int] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.activation, self.conf_activation = activation, conf_activation
        self.pos_embed, self.feature_only, self.down_ratio = pos_embed, feature_only, down_ratio
        self.layer_idx = tuple(layer_idx)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = _scratch(out_channels, features, feature_only, output_dim)

    def _add_pos(self, x: torch.Tensor, aspect: float) -> torch.Tensor:
        emb = uv_position_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect, x.dtype, x.device)
        return x + (emb * 0.1)[None]

    def forward(
        self,
        tokens_list: Sequence[torch.Tensor | None],
        image_hw: tuple[int, int],
        patch_start_idx: int,
        *,
        frames_chunk_size: int | None = 8,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the head, ``frames_chunk_size`` frames at a time (None: all at once; results are
        identical).

        Args:
            tokens_list: aggregator outputs ``[B, S, P, dim_in]`` (entries not in ``layer_idx`` may
                be None).
            image_hw: input image (H, W) in pixels.
            patch_start_idx: index of the first patch token.
        Returns:
            feature_only: features ``[B, S, features, H/down, W/down]``;
            else (values ``[B, S, H, W, output_dim-1]``, confidence ``[B, S, H, W]``).
        """
        s = tokens_list[self.layer_idx[0]].shape[1]
        if frames_chunk_size is not None and frames_chunk_size <= 0:
            raise ValueError(f"frames_chunk_size must be positive or None, got {frames_chunk_size}")
        step = s if frames_chunk_size is None else frames_chunk_size
        parts = [
            self._forward_frames(tokens_list, image_hw, patch_start_idx, i, min(i + step, s))
            for i in range(0, s, step)
        ]
        if self.feature_only:
            return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _forward_frames(self, tokens_list, image_hw, patch_start_idx, start, end):
        """Head on frames ``start:end``; see :meth:`forward`."""
        h, w = image_hw
        ph, pw = h // self.patch_size, w // self.patch_size
        feats = []
        for i, layer in enumerate(self.layer_idx):
            x = tokens_list[layer][:, start:end, patch_start_idx:]
            b, s = x.shape[:2]
            x = self.norm(x.reshape(b * s, -1, x.shape[-1]))
            x = self.projects[i](x.permute(0, 2, 1).reshape(b * s, -1, ph, pw))
            if self.pos_embed:
                x = self._add_pos(x, w / h)
            feats.append(self.resize_layers[i](x))
        out = self._fuse(feats)
        out = interpolate_bilinear(
            out,
            (
                int(ph * self.patch_size / self.down_ratio),
                int(pw * self.patch_size / self.down_ratio),
            ),
        )
        if self.pos_embed:
            out = self._add_pos(out, w / h)
        if self.feature_only:
            return out.view(b, s, *out.shape[1:])
        values, conf = activate_dense(
            self.scratch.output_conv2(out), self.activation, self.conf_activation
        )
        return values.view(b, s, *values.shape[1:]), conf.view(b, s, *conf.shape[1:])

    def _fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Fuse the four projected maps (fine to coarse) into one map at the finest resolution."""
        sc = self.scratch
        l1, l2, l3, l4 = (getattr(sc, f"layer{i + 1}_rn")(f) for i, f in enumerate(feats))
        out = sc.refinenet4(l4, size=l3.shape[2:])
        out = sc.refinenet3(out, l3, size=l2.shape[2:])
        out = sc.refinenet2(out, l2, size=l1.shape[2:])
        out = sc.refinenet1(out, l1)
        return sc.output_conv1(out)
