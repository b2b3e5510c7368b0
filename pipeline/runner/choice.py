"""Which reconstructor a run uses (``auto``: VGGT when its weights are at hand, else
colmap), and building it (under Ray, device actors hold the model).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ..exec.distributed import ProcessGroup
from ..infra.hub import hub_offline
from ..reconstructors import Reconstructor, build_reconstructor, reconstructor_class
from .checks import unread_problem
from .config import PipelineConfig

logger = logging.getLogger(__name__)


def choose_reconstructor(config: PipelineConfig) -> tuple[str, str]:
    """The reconstructor to run and why: ``auto`` becomes ``vggt`` when the weights are on this
    machine or can be downloaded, else ``colmap``."""
    if config.reconstructor != "auto":
        return config.reconstructor, "asked for"
    from ..algo.models import WeightsNotFoundError, resolve_weights, weights_available
    from ..algo.models.loading import hub_reachable
    if weights_available(config.model):
        return "vggt", f"weights of {config.model} found on this machine"
    if hub_offline():
        return "colmap", f"no weights of {config.model} here and HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return "colmap", f"no weights of {config.model} here and the hub cannot be reached"
    try:
        resolve_weights(config.model)  # downloads them into the hub cache
        return "vggt", f"weights of {config.model} downloaded"
    except (WeightsNotFoundError, OSError) as exc:
        return "colmap", f"weights of {config.model} unavailable ({type(exc).__name__})"


def resolve_and_build(config: PipelineConfig, group: ProcessGroup,
                      cluster: Any = None) -> tuple[PipelineConfig, Reconstructor, str]:
    """Choose (``auto``) and build the reconstructor; the configuration with the choice.
    Under Ray a network's model is loaded in device actors instead of here."""
    config, reason = resolve_choice(config, group)
    return config, build_for_run(config, cluster), reason


def resolve_choice(config: PipelineConfig, group: ProcessGroup) -> tuple[PipelineConfig, str]:
    """The configuration with the reconstructor chosen (``auto``) and its device, and why."""
    chosen, reason = choose_reconstructor(config)
    logger.info("reconstructor: %s (%s)", chosen, reason)
    unread = unread_problem(config, chosen)
    if unread:  # an explicit choice was refused before any work
        logger.warning("%s, which auto chose (%s): they are ignored", unread, reason)
    return replace(config, reconstructor=chosen,
                   device=group.device if group.device and config.device == "auto"
                   else config.device), reason


def build_for_run(config: PipelineConfig, cluster: Any = None) -> Reconstructor:
    """The chosen reconstructor (its model loaded; under Ray, ``cluster`` (a
    :class:`pipeline.runner.ray_engine.RayConnection`), in device actors instead)."""
    if cluster is not None and reconstructor_class(config.reconstructor).device_stages:
        from .ray_engine import RayReconstructor

        return RayReconstructor(config, cluster)
    return build_reconstructor(config)
