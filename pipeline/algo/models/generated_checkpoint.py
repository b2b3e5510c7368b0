"""VGGT and DA3 checkpoints made from generated weights, for running the whole pipeline without the
released weights (tests, the demo, benchmarks).

The weights follow the golden weight rule (:mod:`pipeline.algo.models.generated_weights`), except
the
camera head's last layer, which is scaled down and biased so that every frame gets a valid camera
(near-identity pose, a field of view of about 57°). Nothing it reconstructs is meaningful; speed,
memory and the pipeline's mechanics are real.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .da3 import DA3Config, DepthAnything3, build_da3
from .generated_weights import load_rule_weights_
from .loading import save_pretrained
from .vggt import VGGT, VGGTConfig, build_model

logger = logging.getLogger(__name__)

FIELD_OF_VIEW = 1.0
"""Field of view (radians, both axes) the generated camera head predicts."""


def generated_vggt(config: VGGTConfig | None = None) -> VGGT:
    """A VGGT of ``config`` (default VGGT-1B) with generated weights and a valid camera head."""
    config = config or VGGTConfig.vggt_1b()
    model = load_rule_weights_(build_model(config, device="meta"))
    return valid_cameras_(model).eval()


def valid_cameras_(model: VGGT) -> VGGT:
    """Make the camera head of a VGGT with generated weights (any values) predict a valid
    camera for every frame: its last layer scaled down and biased towards a near-identity pose
    with a field of view of :data:`FIELD_OF_VIEW`. In place; returns ``model``."""
    last = model.camera_head.pose_branch.fc2
    target = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, FIELD_OF_VIEW, FIELD_OF_VIEW],
                          device=last.bias.device)
    with torch.no_grad():  # each refinement iteration adds the head's output to the encoding
        last.weight.mul_(0.01)
        last.bias.copy_(target / model.config.camera_iterations)
    return model


def write_generated_checkpoint(folder: str | Path, config: VGGTConfig | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` of :func:`generated_vggt` to ``folder``."""
    path = save_pretrained(generated_vggt(config), folder)
    logger.info("wrote a generated (untrained) VGGT checkpoint to %s", path)
    return path


def generated_da3(config: DA3Config | None = None) -> DepthAnything3:
    """A main-series DA3 of ``config`` (default :meth:`DA3Config.tiny`) with generated weights
    and a camera decoder that gives every frame a valid camera (near-identity pose, a field of
    view of about :data:`FIELD_OF_VIEW` on both axes)."""
    config = config or DA3Config.tiny()
    model = load_rule_weights_(build_da3(config, device="meta"))
    net = getattr(model.model, "da3", model.model)  # nested: the any-view network
    dec = net.cam_dec
    if dec is None:
        raise ValueError("a generated DA3 checkpoint needs a main-series config (camera=True)")
    with torch.no_grad():
        for layer, bias in ((dec.fc_t, [0.0, 0.0, 0.0]), (dec.fc_qvec, [0.0, 0.0, 0.0, 1.0]),
                            (dec.fc_fov[0], [FIELD_OF_VIEW, FIELD_OF_VIEW])):
            layer.weight.mul_(0.01)
            layer.bias.copy_(torch.tensor(bias))
        metric = getattr(model.model, "da3_metric", None)
        if metric is not None:  # nested: no pixel is sky (score 0), so every window aligns
            last = metric.head.scratch.sky_output_conv2[-1]
            last.weight.zero_()
            last.bias.fill_(-1.0)
    return model.eval()


def write_generated_da3_checkpoint(folder: str | Path, config: DA3Config | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` of :func:`generated_da3` to ``folder``
    (loadable with :func:`pipeline.algo.models.load_model`)."""
    path = save_pretrained(generated_da3(config), folder, architecture="da3")
    logger.info("wrote a generated (untrained) DA3 checkpoint to %s", path)
    return path
