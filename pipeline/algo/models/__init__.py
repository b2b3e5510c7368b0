"""Networks (VGGT, Depth Anything 3) and checkpoint loading.

Typical use::

    from pipeline.algo.models import load_model, weights_available
    if weights_available("facebook/VGGT-1B"):
        model = load_model("facebook/VGGT-1B", device="cuda", dtype="auto")
        out = model(images, query_points)          # images [B, S, 3, H, W] in [0, 1]
"""

from .camera import (
    depth_to_world_points,
    extri_intri_to_pose_encoding,
    pose_encoding_to_extri_intri,
)
from .da3 import DA3Config, DA3ForwardOptions, DepthAnything3, build_da3
from .generated_weights import load_rule_weights_, rule_state_dict
from .loading import (
    DEFAULT_REPO,
    Architecture,
    CheckpointError,
    WeightsNotFoundError,
    architectures,
    checkpoint_fingerprint,
    load_model,
    read_state_dict,
    register_architecture,
    resolve_weights,
    save_pretrained,
    weights_available,
)
from .precision import choose_dtype, resolve_dtype
from .vggt import VGGT, ForwardOptions, VGGTConfig, build_model

__all__ = [
    "DA3Config",
    "DA3ForwardOptions",
    "DEFAULT_REPO",
    "DepthAnything3",
    "build_da3",
    "Architecture",
    "ForwardOptions",
    "VGGT",
    "VGGTConfig",
    "WeightsNotFoundError",
    "CheckpointError",
    "architectures",
    "checkpoint_fingerprint",
    "build_model",
    "choose_dtype",
    "depth_to_world_points",
    "extri_intri_to_pose_encoding",
    "load_model",
    "load_rule_weights_",
    "pose_encoding_to_extri_intri",
    "read_state_dict",
    "register_architecture",
    "resolve_dtype",
    "resolve_weights",
    "rule_state_dict",
    "save_pretrained",
    "weights_available",
]
