"""Deterministic generated weights (the golden-file weight rule) for tests and benchmarks.

Rule, per state_dict key (order-independent): ``t = randn(shape)`` from a generator seeded with
``zlib.crc32(key)``; value ``1 + 0.1 t`` for 1-D tensors whose key ends in ``.weight`` or ``.gamma``
(norm scales, LayerScale), else ``0.02 t``. These are not trained weights: speed and memory do
not depend on values, and the golden test vectors were produced with the same rule.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)


def rule_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The weight-rule value of one key, float32 on CPU."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    t = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    if t.dim() == 1 and (key.endswith(".weight") or key.endswith(".gamma")):
        return 1.0 + 0.1 * t
    return 0.02 * t


def rule_state_dict(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """``{key: rule_tensor(key, shape)}`` for ``(key, shape)`` pairs."""
    return {key: rule_tensor(key, shape) for key, shape in shapes}


def load_rule_weights_(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Fill ``model`` (possibly built on ``meta``) with rule weights in place; returns it, on
    ``device``.

    Tensors are assigned (no second copy), then non-persistent buffers are recreated if the model
    offers ``reset_non_persistent_buffers``.
    """
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    state = {k: v.to(device) for k, v in rule_state_dict(shapes).items()}
    model.load_state_dict(state, strict=True, assign=True)
    if hasattr(model, "reset_non_persistent_buffers"):
        model.reset_non_persistent_buffers(torch.device(device))
    return model
