"""Depth Anything 3 heads: DualDPT (depth + ray), DPT (metric/mono depth + sky), the GS-DPT layout
and the camera decoder/encoder.

Dense heads read the four backbone out layers as patch features ``[B, S, P, C']`` and work on
``B*S`` frames, ``chunk_size`` frames at a time (results do not depend on the chunking). Unlike
VGGT's DPT, the residual units here use a non-in-place ReLU, so their skip adds the *pre-activation*
input. Module names follow the released checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dpt_head import interpolate_bilinear
from .layers import Block, Mlp

logger = logging.getLogger(__name__)

AUX_LN_KEY = "scratch.output_conv2_aux.{}.2"
"""The LayerNorm shared by the four ray-head output stacks (one module, four state_dict aliases)."""


def uv_embedding(h: int, w: int, channels: int, aspect: float, dtype, device) -> torch.Tensor:
    """Sinusoidal embedding ``[channels, h, w]`` of the diagonal-normalised uv grid, in float32 as
    the reference.

    x spans ``±a/sqrt(a²+1) * (w-1)/w``, y ``±1/sqrt(a²+1) * (h-1)/h`` (``a`` = W/H of the image);
    channels are ``[sin(x ω), cos(x ω), sin(y ω), cos(y ω)]`` with ``ω_k = 100^(-k/(channels/4))``.
    """
    diag = (aspect**2 + 1.0) ** 0.5
    sx, sy = aspect / diag, 1.0 / diag
    xs = torch.linspace(-sx * (w - 1) / w, sx * (w - 1) / w, steps=w, dtype=dtype, device=device)
    ys = torch.linspace(-sy * (h - 1) / h, sy * (h - 1) / h, steps=h, dtype=dtype, device=device)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")  # [h, w]
    quarter = channels // 4
    omega = 1.0 / 100.0 ** (
        torch.arange(quarter, dtype=torch.float32, device=device) / (channels / 2.0 / 2.0)
    )

    def enc(p: torch.Tensor) -> torch.Tensor:
        a = p.reshape(-1)[:, None] * omega[None]
        return torch.cat((a.sin(), a.cos()), dim=1)

    return torch.cat((enc(gx), enc(gy)), dim=-1).float().view(h, w, channels).permute(2, 0, 1)


def add_uv(x: torch.Tensor, image_hw: tuple[int, int], ratio: float = 0.1) -> torch.Tensor:
    """``x + ratio * uv_embedding`` for feature maps ``[N, C, h, w]`` of an image ``(H, W)``."""
    pe = uv_embedding(
        x.shape[-2], x.shape[-1], x.shape[1], image_hw[1] / image_hw[0], x.dtype, x.device
    )
    return x + pe[None] * ratio


class ResidualUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (skip carries the pre-activation input)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class Fusion(nn.Module):
    """``out_conv(resize(rcu2(x + rcu1(skip))))``, bilinear ``align_corners=True`` to ``size``
    (default x2)."""

    def __init__(self, features: int, *, has_residual: bool = True):
        super().__init__()
        if has_residual:
            self.resConfUnit1 = ResidualUnit(features)
        self.resConfUnit2 = ResidualUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)
        self.has_residual = has_residual

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = tuple(size) if size is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.out_conv(interpolate_bilinear(x, size))


def _output_stack(cin: int, cout: int, layer_norm: nn.LayerNorm | None = None) -> nn.Sequential:
    """conv3x3 -> 32 (-> LayerNorm over channels) -> ReLU -> conv1x1 -> ``cout``; indices as in
    checkpoints."""
    mid = [_ChannelsLast(), layer_norm, _ChannelsFirst()] if layer_norm is not None else []
    return nn.Sequential(nn.Conv2d(cin, 32, 3, padding=1), *mid, nn.ReLU(), nn.Conv2d(32, cout, 1))


class _ChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class _ChannelsFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class _DPTBase(nn.Module):
    """Shared trunk: (norm) -> 1x1 projects (+uv) -> resize x4/x2/x1/÷2 -> ``layerK_rn`` -> fusion
    chain."""

    def __init__(
        self,
        dim_in: int,
        *,
        features: int,
        out_channels: Sequence[int],
        patch_size: int = 14,
        token_norm: bool,
        pos_embed: bool,
    ):
        super().__init__()
        self.patch_size, self.pos_embed = patch_size, pos_embed
        self.norm = nn.LayerNorm(dim_in) if token_norm else nn.Identity()
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, 1) for oc in out_channels)
        oc = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], 4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], 3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, ch in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(ch, features, 3, padding=1, bias=False))
        self._add_fusion_chain("")

    def _add_fusion_chain(self, suffix: str) -> None:
        features = self.scratch.layer1_rn.out_channels
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}{suffix}", Fusion(features, has_residual=i != 4))

    def _pyramid(
        self, feats: Sequence[torch.Tensor], image_hw: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Patch features ``[N, P, C']`` x4 -> the four ``layerK_rn`` maps (fine to coarse)."""
        ph, pw = image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
        maps = []
        for i, f in enumerate(feats):
            x = self.norm(f).permute(0, 2, 1).reshape(f.shape[0], f.shape[-1], ph, pw)
            x = self.projects[i](x)
            if self.pos_embed:
                x = add_uv(x, image_hw)
            x = self.resize_layers[i](x)
            maps.append(getattr(self.scratch, f"layer{i + 1}_rn")(x))
        return maps

    def _fuse(self, maps: Sequence[torch.Tensor], suffix: str = "") -> torch.Tensor:
        """Top-down fusion with the chain ``refinenetK{suffix}``; result at 2x the finest map."""
        r = lambda i: getattr(self.scratch, f"refinenet{i}{suffix}")
        out = r(4)(maps[3], size=maps[2].shape[2:])
        out = r(3)(out, maps[2], size=maps[1].shape[2:])
        out = r(2)(out, maps[1], size=maps[0].shape[2:])
        return r(1)(out, maps[0])

    def forward(
        self,
        feats: Sequence[torch.Tensor],
        image_hw: tuple[int, int],
        *,
        chunk_size: int | None = 8,
        keep_logits: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Run the head on ``feats`` (four ``[B, S, P, C']``), ``chunk_size`` frames at a time
        (None: all).

        Returns a dict of ``[B, S, ...]`` tensors (see the subclasses); ``keep_logits`` adds the
        pre-activation outputs (``*_logits``, ``[B, S, C, h, w]``).
        """
        b, s = feats[0].shape[:2]
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
        flat = [f.reshape(b * s, *f.shape[2:]) for f in feats]
        step = b * s if chunk_size is None else chunk_size
        parts = [
            self._forward_frames([f[i : i + step] for f in flat], image_hw, keep_logits)
            for i in range(0, b * s, step)
        ]
        return {
            k: torch.cat([p[k] for p in parts]).view(b, s, *parts[0][k].shape[1:]) for k in parts[0]
        }

    def _forward_frames(self, feats, image_hw, keep_logits) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class DualDPT(_DPTBase):
    """Depth + ray head of the main series (``head``).

    Outputs: ``depth`` ``[B, S, H, W]`` = exp, ``depth_conf`` = 1 + exp; ``ray`` ``[B, S, h, w, 6]``
    (linear) and ``ray_conf`` ``[B, S, h, w]`` = 1 + exp at 8x the patch grid (h = 8 H/14). Only the
    last of the four ray levels is used; the other three output stacks exist for the checkpoint
    only.
    All four ``output_conv2_aux`` stacks share one LayerNorm module, as in the reference.
    """

    def __init__(
        self, dim_in: int, *, features: int, out_channels: Sequence[int], patch_size: int = 14
    ):
        super().__init__(
            dim_in,
            features=features,
            out_channels=out_channels,
            patch_size=patch_size,
            token_norm=True,
            pos_embed=True,
        )
        sc = self.scratch
        sc.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        sc.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 2, 1)
        )
        self._add_fusion_chain("_aux")
        half = features // 2
        sc.output_conv1_aux = nn.ModuleList(
            nn.Sequential(
                *(
                    nn.Conv2d(
                        features if k % 2 == 0 else half,
                        half if k % 2 == 0 else features,
                        3,
                        padding=1,
                    )
                    for k in range(5)
                )
            )
            for _ in range(4)
        )
        shared_ln = nn.LayerNorm(32)
        sc.output_conv2_aux = nn.ModuleList(_output_stack(half, 7, shared_ln) for _ in range(4))
        self._register_load_state_dict_pre_hook(_fill_tied_layer_norm)

    def _forward_frames(self, feats, image_hw, keep_logits) -> dict[str, torch.Tensor]:
        sc = self.scratch
        maps = self._pyramid(feats, image_hw)
        main = sc.output_conv1(self._fuse(maps))
        main = add_uv(interpolate_bilinear(main, tuple(image_hw)), image_hw)
        main = sc.output_conv2(main)
        aux = add_uv(sc.output_conv1_aux[3](self._fuse(maps, "_aux")), image_hw)
        aux = sc.output_conv2_aux[3](aux)
        out = {
            "depth": main[:, 0].exp(),
            "depth_conf": main[:, 1].exp() + 1,
            "ray": aux[:, :6].permute(0, 2, 3, 1),
            "ray_conf": aux[:, 6].exp() + 1,
        }
        if keep_logits:
            out.update(depth_logits=main, ray_logits=aux)
        return out


def _fill_tied_layer_norm(state_dict, prefix, *args) -> None:
    """Load hook: fill missing aliases of the shared ray-head LayerNorm from any stored alias.

    ``safetensors`` stores a tied tensor once (``...output_conv2_aux.0.2.*``); the other aliases are
    then absent from the file. If several are present, the last one (``.3.2``) wins, as in the
    reference (it loads the aliases in order into one module).
    """
    for name in ("weight", "bias"):
        keys = [f"{prefix}{AUX_LN_KEY.format(i)}.{name}" for i in range(4)]
        present = [k for k in keys if k in state_dict]
        if present:
            value = state_dict[present[-1]]
            for k in keys:
                state_dict[k] = value


class DPT(_DPTBase):
    """Metric/mono head: no token norm, no uv embedding.

    Outputs ``depth`` ``[B, S, H, W]`` = exp and (with the sky head) ``sky`` ``[B, S, H, W]`` =
    relu.
    """

    def __init__(
        self,
        dim_in: int,
        *,
        features: int,
        out_channels: Sequence[int],
        patch_size: int = 14,
        output_dim: int = 1,
        sky_head: bool = True,
        pos_embed: bool = False,
    ):
        super().__init__(
            dim_in,
            features=features,
            out_channels=out_channels,
            patch_size=patch_size,
            token_norm=False,
            pos_embed=pos_embed,
        )
        self.output_dim = output_dim
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = _output_stack(features // 2, output_dim)
        if sky_head:
            self.scratch.sky_output_conv2 = _output_stack(features // 2, 1)

    def _forward_frames(self, feats, image_hw, keep_logits) -> dict[str, torch.Tensor]:
        if self.output_dim != 1:
            raise NotImplementedError(
                "only the single-channel (metric/mono) DPT head has a forward"
            )
        fused = interpolate_bilinear(
            self.scratch.output_conv1(self._fuse(self._pyramid(feats, image_hw))), tuple(image_hw)
        )
        if self.pos_embed:
            fused = add_uv(fused, image_hw)
        logits = self.scratch.output_conv2(fused)
        out = {"depth": logits[:, 0].exp()}
        if hasattr(self.scratch, "sky_output_conv2"):
            out["sky"] = F.relu(self.scratch.sky_output_conv2(fused)[:, 0])
        if keep_logits:
            out["depth_logits"] = logits
        return out


class GSDPT(DPT):
    """Gaussian-splat head of DA3-GIANT (``gs_head``): checkpoint layout only (no forward here)."""

    def __init__(
        self, dim_in: int, *, features: int, out_channels: Sequence[int], output_dim: int = 38
    ):
        super().__init__(
            dim_in,
            features=features,
            out_channels=out_channels,
            output_dim=output_dim,
            sky_head=False,
            pos_embed=True,
        )
        m = features // 2
        self.images_merger = nn.Sequential(
            nn.Conv2d(3, m // 4, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(m // 4, m // 2, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(m // 2, m, 3, padding=1),
            nn.GELU(),
        )

    def _forward_frames(self, feats, image_hw, keep_logits):
        raise NotImplementedError("the 3D Gaussian head (infer_gs) is not implemented")


class CameraDecoder(nn.Module):
    """``cam_dec``: camera token ``[B, S, C']`` -> pose encoding ``[B, S, 9]`` = ``[t(3), q xyzw(4),
    fov_h, fov_w]``.

    MLP (Linear, ReLU, Linear, ReLU), then linear ``fc_t`` / ``fc_qvec`` and ``fc_fov`` =
    relu(Linear).
    """

    def __init__(self, dim_in: int):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_in), nn.ReLU()
        )
        self.fc_t = nn.Linear(dim_in, 3)
        self.fc_qvec = nn.Linear(dim_in, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim_in, 2), nn.ReLU())

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        f = self.backbone(token.float())
        return torch.cat((self.fc_t(f), self.fc_qvec(f), self.fc_fov(f)), dim=-1)


class CameraEncoder(nn.Module):
    """``cam_enc``: pose encodings ``[B, S, 9]`` -> camera-conditioning tokens ``[B, S, C]``.

    ``trunk_norm(trunk(token_norm(pose_branch(enc))))``; the trunk is 4 blocks (LayerScale 0.01)
    attending over the S views.
    """

    def __init__(self, dim_out: int, *, trunk_depth: int = 4, num_heads: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(
            *(Block(dim_out, num_heads, init_values=0.01) for _ in range(trunk_depth))
        )
        self.token_norm = nn.LayerNorm(dim_out)
        self.trunk_norm = nn.LayerNorm(dim_out)
        self.pose_branch = Mlp(9, dim_out // 2, dim_out)

    def forward(self, pose_enc: torch.Tensor) -> torch.Tensor:
        return self.trunk_norm(self.trunk(self.token_norm(self.pose_branch(pose_enc))))
