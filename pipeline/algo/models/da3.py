"""Depth Anything 3 (DA3): configuration, networks, forward options and checkpoint conventions.

Checkpoint layout: the released ``model.safetensors`` files hold the state_dict of the reference's
``DepthAnything3`` wrapper, so every key starts with ``model.`` (the nested model: ``model.da3.``
and
``model.da3_metric.``). :class:`DepthAnything3` mirrors that wrapper: its network lives in
``.model``,
so its ``state_dict()`` equals the released manifests key for key and released files load with
strict checking, unchanged. Files saved from the bare network (no ``model.`` prefix) are accepted
too:
the prefix is added on load. The ray head's four ``output_conv2_aux.K.2`` LayerNorms are one shared
module; a file that stores only ``...output_conv2_aux.0.2.*`` (as ``safetensors`` writes it) loads
strictly (see :func:`pipeline.algo.models.da3_heads._fill_tied_layer_norm`).

Input: ``images`` ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``) RGB in [0, 1], H and W multiples of 14;
they are ImageNet-normalised inside. Outputs are in the camera frame of the reference view
(``ref_view_index``); extrinsics are world-to-camera ``[R | t]`` (OpenCV axes), intrinsics have the
principal point at ``(W/2, H/2)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .camera import extri_intri_to_pose_encoding, quaternion_to_matrix
from .da3_backbone import BackboneShape, DA3Backbone
from .da3_heads import DPT, GSDPT, CameraDecoder, CameraEncoder, DualDPT
from .da3_metric import align_to_metric, fill_sky
from .layers import per_window
from .precision import autocast_context

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIT_SHAPES = {
    "vits": (384, 12, 6),
    "vitb": (768, 12, 12),
    "vitl": (1024, 24, 16),
    "vitg": (1536, 40, 24),
}
"""(width, blocks, heads) of the DINOv2 ViT sizes."""
NESTED = "da3nested-giant-large"


@dataclass(frozen=True, kw_only=True)
class DA3Config:
    """Shape of one DA3 network (the nested model pairs two). ``variant(name)`` gives the
    releases."""

    model_name: str = "custom"
    """Release name as in the checkpoint's config.json (e.g. ``da3-large``) or "custom"."""
    embed_dim: int = 1024
    """Backbone width C (heads see 2C with ``cat_token``)."""
    depth: int = 24
    """Backbone blocks."""
    num_heads: int = 16
    """Backbone attention heads."""
    out_layers: tuple[int, ...] = (11, 15, 19, 23)
    """Backbone blocks read by the heads."""
    alt_start: int = 8
    """First alternating block (-1: per-view only, no camera token)."""
    rope_start: int = 8
    """First block with QK-norm and RoPE (-1: none)."""
    cat_token: bool = True
    """Head features are ``cat(per-view, global)`` (2C)."""
    swiglu: bool = False
    """SwiGLU feed-forward (ViT-g)."""
    head: str = "dualdpt"
    """"dualdpt" (depth + ray, main series) or "dpt" (metric/mono depth + sky)."""
    head_features: int = 256
    """Fusion width of the dense head."""
    head_out_channels: tuple[int, ...] = (256, 512, 1024, 1024)
    """Per-level projection widths of the dense head."""
    camera: bool = True
    """Build ``cam_dec`` / ``cam_enc``."""
    cam_enc_heads: int = 16
    """Attention heads of the camera encoder trunk."""
    gs_head: bool = False
    """Build the Gaussian-splat head (layout only)."""
    metric: DA3Config | None = None
    """Nested model: the metric branch (``da3_metric``); this config is then the any-view branch."""

    @classmethod
    def variant(cls, name: str) -> DA3Config:
        """A released network by ``model_name`` (case-insensitive, a ``-1.1`` suffix is ignored)."""
        key = name.lower().removesuffix("-1.1")
        if key == NESTED:
            return dataclasses.replace(
                cls.variant("da3-giant"), model_name=NESTED, metric=cls.variant("da3metric-large")
            )
        table = {
            "da3-small": dict(
                vit="vits", out_layers=(5, 7, 9, 11), start=4, features=64, oc=(48, 96, 192, 384)
            ),
            "da3-base": dict(
                vit="vitb", out_layers=(5, 7, 9, 11), start=4, features=128, oc=(96, 192, 384, 768)
            ),
            "da3-large": dict(
                vit="vitl",
                out_layers=(11, 15, 19, 23),
                start=8,
                features=256,
                oc=(256, 512, 1024, 1024),
            ),
            "da3-giant": dict(
                vit="vitg",
                out_layers=(19, 27, 33, 39),
                start=13,
                features=256,
                oc=(256, 512, 1024, 1024),
            ),
        }
        if key in ("da3metric-large", "da3mono-large"):
            return cls(
                model_name=key,
                out_layers=(4, 11, 17, 23),
                alt_start=-1,
                rope_start=-1,
                cat_token=False,
                head="dpt",
                camera=False,
            )
        if key not in table:
            raise ValueError(
                f"unknown DA3 model_name {name!r}; known: "
                f"{sorted(table) + ['da3metric-large', 'da3mono-large', NESTED]}"
            )
        t = table[key]
        dim, depth, heads = VIT_SHAPES[t["vit"]]
        return cls(
            model_name=key,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            out_layers=t["out_layers"],
            alt_start=t["start"],
            rope_start=t["start"],
            swiglu=t["vit"] == "vitg",
            head_features=t["features"],
            head_out_channels=t["oc"],
            gs_head=key == "da3-giant",
        )

    @classmethod
    def tiny_nested(cls) -> DA3Config:
        """:meth:`tiny` paired with a tiny metric network, as the nested release pairs two."""
        tiny = cls.tiny()
        metric = dataclasses.replace(
            tiny, alt_start=-1, rope_start=-1, cat_token=False, head="dpt", camera=False
        )
        return dataclasses.replace(tiny, metric=metric)

    @classmethod
    def tiny(cls) -> DA3Config:
        """A few-block, narrow main-series network built from the same code (fast tests; images e.g.
        56x70)."""
        return cls(
            embed_dim=32,
            depth=10,
            num_heads=4,
            out_layers=(3, 5, 7, 9),
            alt_start=2,
            rope_start=2,
            head_features=16,
            head_out_channels=(8, 16, 32, 32),
            cam_enc_heads=4,
        )

    def backbone_shape(self) -> BackboneShape:
        """The backbone part of this config."""
        return BackboneShape(
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            out_layers=self.out_layers,
            alt_start=self.alt_start,
            rope_start=self.rope_start,
            cat_token=self.cat_token,
            swiglu=self.swiglu,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists; the metric branch a nested dict)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        out["metric"] = self.metric.to_dict() if self.metric is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DA3Config:
        """Config from a config.json: the release named by ``model_name``, overridden by known
        fields."""
        name = data.get("model_name", "custom")
        base = cls() if name == "custom" else cls.variant(name)
        names = {f.name for f in dataclasses.fields(cls)} - {"metric"}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        if isinstance(data.get("metric"), dict):
            kwargs["metric"] = cls.from_dict(data["metric"])
        return dataclasses.replace(base, **kwargs)


@dataclass(kw_only=True)
class DA3ForwardOptions:
    """Options of :meth:`DepthAnything3.forward`. Only ``frame_batch_size`` changes results."""

    ref_view_strategy: str = "saddle_balanced"
    """Reference view choice with >= 3 views: "saddle_balanced", "first", "middle" or
    "saddle_sim_range"."""
    frame_batch_size: int | None = None
    """APPROXIMATE: from block ``alt_start - 1`` on, views pass through the backbone in groups of
    this
    many, each group holding the reference view (so all outputs stay in its frame) plus consecutive
    others; outputs are concatenated in input order. None, or a size >= S, is the exact model."""
    head_chunk_size: int | None = dataclasses.field(default=8, metadata={"result": False})
    """Frames per chunk in the dense heads; None = all at once (results identical)."""
    keep_logits: bool = dataclasses.field(default=False, metadata={"result": False})
    """Add the dense heads' pre-activation outputs (``depth_logits``, ``ray_logits``) and
    ``fov_logits``."""
    return_features: bool = dataclasses.field(default=False, metadata={"result": False})
    """Add ``features`` and ``camera_tokens`` (backbone out layers) to the outputs."""


def pose_encoding_to_cameras(
    pose_enc: torch.Tensor, image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """DA3 pose encoding ``[..., 9]`` (camera-to-world t, q xyzw, fov_h, fov_w) -> (w2c ``[..., 3,
    4]``, K ``[..., 3, 3]``).

    ``fx = (W/2) / max(tan(fov_w/2), 1e-6)``, ``fy`` likewise with H; principal point ``(W/2,
    H/2)``.
    """
    h, w = image_hw
    rot = quaternion_to_matrix(pose_enc[..., 3:7])
    rt = rot.transpose(-1, -2)
    w2c = torch.cat((rt, -rt @ pose_enc[..., :3, None]), dim=-1)
    k = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    k[..., 0, 0] = (w / 2.0) / torch.clamp(torch.tan(pose_enc[..., 8] / 2.0), 1e-6)
    k[..., 1, 1] = (h / 2.0) / torch.clamp(torch.tan(pose_enc[..., 7] / 2.0), 1e-6)
    k[..., 0, 2], k[..., 1, 2], k[..., 2, 2] = w / 2, h / 2, 1.0
    return w2c, k


def _invert_w2c(extrinsics: torch.Tensor) -> torch.Tensor:
    """World-to-camera ``[..., 3|4, 4]`` -> camera-to-world ``[..., 3, 4]``."""
    rt = extrinsics[..., :3, :3].transpose(-1, -2)
    return torch.cat((rt, -rt @ extrinsics[..., :3, 3:]), dim=-1)


class DepthAnything3Net(nn.Module):
    """One DA3 network: ``backbone``, dense ``head`` and (main series) ``cam_dec`` / ``cam_enc`` (+
    giant ``gs_head``)."""

    def __init__(self, config: DA3Config):
        super().__init__()
        self.config = config
        self.backbone = DA3Backbone(config.backbone_shape())
        dim = config.embed_dim * (2 if config.cat_token else 1)
        heads = dict(features=config.head_features, out_channels=config.head_out_channels)
        self.head = DualDPT(dim, **heads) if config.head == "dualdpt" else DPT(dim, **heads)
        self.cam_dec = CameraDecoder(dim) if config.camera else None
        self.cam_enc = (
            CameraEncoder(config.embed_dim, num_heads=config.cam_enc_heads)
            if config.camera
            else None
        )
        self.gs_head = GSDPT(dim, **heads) if config.gs_head else None

    def forward(
        self,
        images: torch.Tensor,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        *,
        options: DA3ForwardOptions,
        compute_dtype: torch.dtype = torch.float32,
    ) -> dict[str, Any]:
        """ImageNet-normalised ``images`` ``[B, S, 3, H, W]`` -> outputs (see
        :meth:`DepthAnything3.forward`)."""
        hw = tuple(images.shape[-2:])
        cam_token = self._condition(extrinsics, intrinsics, hw)
        with autocast_context(images.device, compute_dtype):
            bb = self.backbone(
                images,
                cam_token=cam_token,
                ref_view_strategy=options.ref_view_strategy,
                frame_batch_size=options.frame_batch_size,
            )
        with torch.autocast(device_type=images.device.type, enabled=False):
            feats = [f.float() for f in bb.features]
            out: dict[str, Any] = dict(
                self.head(
                    feats, hw, chunk_size=options.head_chunk_size, keep_logits=options.keep_logits
                )
            )
            if self.cam_dec is not None:
                out["pose_enc"] = per_window(self.cam_dec, bb.camera_tokens[-1])
                out["extrinsics"], out["intrinsics"] = pose_encoding_to_cameras(out["pose_enc"], hw)
                if options.keep_logits:
                    f = self.cam_dec.backbone(bb.camera_tokens[-1].float())
                    out["fov_logits"] = self.cam_dec.fc_fov[0](f)
            if "sky" in out:
                out["depth"] = fill_sky(out["depth"], out["sky"])
        out["ref_view_index"] = bb.ref_view_index
        if options.return_features:
            out["features"], out["camera_tokens"] = bb.features, bb.camera_tokens
        return out

    def _condition(self, extrinsics, intrinsics, hw) -> torch.Tensor | None:
        """Camera-conditioning tokens ``[B, S, C]`` from w2c extrinsics and intrinsics, or None."""
        if extrinsics is None:
            return None
        if intrinsics is None or self.cam_enc is None:
            raise ValueError(
                "camera conditioning needs both extrinsics and intrinsics and a model with cam_enc"
            )
        with torch.autocast(device_type=extrinsics.device.type, enabled=False):
            enc = extri_intri_to_pose_encoding(
                _invert_w2c(extrinsics.float()), intrinsics.float(), hw
            )
            return self.cam_enc(enc)


class NestedDepthAnything3Net(nn.Module):
    """DA3NESTED: an any-view network ``da3`` (giant) and a metric network ``da3_metric``, whose
    depth brings the any-view depth and cameras to metres (see :mod:`.da3_metric`)."""

    def __init__(self, config: DA3Config):
        super().__init__()
        self.config = config
        self.da3 = DepthAnything3Net(dataclasses.replace(config, metric=None))
        self.da3_metric = DepthAnything3Net(config.metric)

    def forward(
        self,
        images: torch.Tensor,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        *,
        options: DA3ForwardOptions,
        compute_dtype: torch.dtype = torch.float32,
    ) -> dict[str, Any]:
        """Both networks on normalised ``images`` ``[B, S, 3, H, W]``; the any-view outputs in
        metres plus ``scale_factor`` ``[B]``, ``sky`` and ``is_metric``."""
        out = self.da3(images, extrinsics, intrinsics, options=options, compute_dtype=compute_dtype)
        metric_options = dataclasses.replace(options, keep_logits=False, return_features=False)
        metric = self.da3_metric(images, options=metric_options, compute_dtype=compute_dtype)
        with torch.autocast(device_type=images.device.type, enabled=False):
            return align_to_metric(out, metric)


class DepthAnything3(nn.Module):
    """A DA3 model as released: the network in ``.model`` (hence the ``model.`` key prefix).

    Attribute ``compute_dtype`` (float32 by default) selects autocast for the backbone; heads and
    camera decoding always run in float32, as in the reference.
    """

    def __init__(self, config: DA3Config | None = None):
        super().__init__()
        self.config = config or DA3Config.variant("da3-large")
        self.compute_dtype = torch.float32
        nested = self.config.metric is not None
        self.model = (
            NestedDepthAnything3Net(self.config) if nested else DepthAnything3Net(self.config)
        )
        self._register_load_state_dict_pre_hook(_add_model_prefix)

    @property
    def predicts_cameras(self) -> bool:
        """Whether the network predicts cameras (main-series and nested checkpoints; metric and
        mono ones do not)."""
        net = getattr(self.model, "da3", self.model)
        return getattr(net, "cam_dec", None) is not None

    @property
    def is_metric(self) -> bool:
        """Whether its outputs are in metres (a nested checkpoint with a metric network)."""
        return hasattr(self.model, "da3_metric")

    def forward(
        self,
        images: torch.Tensor,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
        options: DA3ForwardOptions | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Predict depth, rays and cameras.

        Args:
            images: ``[B, S, 3, H, W]`` or ``[S, 3, H, W]``, RGB in [0, 1], H and W multiples of 14.
            extrinsics, intrinsics: optional known cameras ``[B, S, 4, 4]`` (world-to-camera) and
                ``[B, S, 3, 3]``; they condition the backbone through ``cam_enc``.
            options: :class:`DA3ForwardOptions`; keyword ``overrides`` replace its fields.
        Returns:
            dict with ``depth`` ``[B, S, H, W]`` and, main series: ``depth_conf`` ``[B, S, H, W]``,
            ``ray`` ``[B, S, 8H/14, 8W/14, 6]``, ``ray_conf`` ``[B, S, 8H/14, 8W/14]``, ``pose_enc``
            ``[B, S, 9]``, ``extrinsics`` ``[B, S, 3, 4]`` (w2c), ``intrinsics`` ``[B, S, 3, 3]``;
            metric/mono: ``sky`` ``[B, S, H, W]`` (sky pixels' depth is filled, see
            :func:`.da3_metric.fill_sky`); nested: the main-series outputs in metres plus
            ``scale_factor`` ``[B]`` and ``sky``. ``ref_view_index`` ``[B]`` (None with < 3 views
            or given cameras).
        """
        opts = dataclasses.replace(options or DA3ForwardOptions(), **overrides)
        images = images.unsqueeze(0) if images.dim() == 4 else images
        if images.shape[2] != 3:
            raise ValueError(f"expected images [B, S, 3, H, W], got {tuple(images.shape)}")
        return self.model(
            normalize_images(images),
            extrinsics,
            intrinsics,
            options=opts,
            compute_dtype=self.compute_dtype,
        )


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] ``[..., 3, H, W]`` -> ImageNet-normalised float32 (``(x - mean) / std``)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return (images.float() - mean) / std


def _add_model_prefix(state_dict, prefix, *args) -> None:
    """Load hook: accept bare-network state dicts (no ``model.`` prefix) by adding the prefix."""
    own = prefix + "model."
    if any(k.startswith(own) for k in state_dict):
        return
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[own + key[len(prefix) :]] = state_dict.pop(key)


def build_da3(config: DA3Config | None = None, *, device: Any = None) -> DepthAnything3:
    """Build a DA3 in eval mode (default DA3-LARGE). ``device="meta"`` builds it without
    allocating."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = DepthAnything3(config)
    return model.eval()


def is_da3_state_dict(keys) -> bool:
    """True for DA3 checkpoint keys (released ``model.``-prefixed, nested, or bare-network)."""
    marks = (
        "model.backbone.pretrained.patch_embed.proj.weight",
        "model.da3.backbone.pretrained.patch_embed.proj.weight",
        "backbone.pretrained.patch_embed.proj.weight",
    )
    return any(m in keys for m in marks)
