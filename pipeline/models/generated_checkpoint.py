"""A VGGT checkpoint made from generated weights, for running the whole pipeline without the
released weights (tests, the demo, benchmarks).

The weights follow the golden weight rule (:mod:`pipeline.models.generated_weights`), except the
camera head's last layer, which is scaled down and biased so that every frame gets a valid camera
(near-identity pose, a field of view of about 57°). Nothing it reconstructs is meaningful; speed,
memory and the pipeline's mechanics are real.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

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
    last = model.camera_head.pose_branch.fc2
    target = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, FIELD_OF_VIEW, FIELD_OF_VIEW])
    with torch.no_grad():  # each refinement iteration adds the head's output to the encoding
        last.weight.mul_(0.01)
        last.bias.copy_(target / config.camera_iterations)
    return model.eval()


def write_generated_checkpoint(folder: str | Path, config: VGGTConfig | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` of :func:`generated_vggt` to ``folder``."""
    path = save_pretrained(generated_vggt(config), folder)
    logger.info("wrote a generated (untrained) VGGT checkpoint to %s", path)
    return path
