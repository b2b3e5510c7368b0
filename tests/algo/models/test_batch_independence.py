"""A window's cameras do not depend on the other windows of its batch: the camera heads run per
window (:func:`pipeline.algo.models.layers.per_window`). Stacked, their few-row matrix products
rounded differently on CPU BLAS (1e-10 in a pose), which bundle adjustment on generated weights
magnified to 1e-2 between ``--window-batch-size 1`` and ``3``."""

import pytest
import torch

from pipeline.algo.models import DA3Config, build_da3, load_rule_weights_
from pipeline.algo.models.layers import per_window

WINDOWS, FRAMES = 3, 8


@pytest.fixture(scope="module")
def windows():
    """``[3, 8, 3, 56, 70]``: three windows of eight frames (fixed seed)."""
    return torch.rand(WINDOWS, FRAMES, 3, 56, 70, generator=torch.Generator().manual_seed(1))


def _alone_and_stacked(model, windows, key):
    with torch.inference_mode():
        stacked = model(windows)[key]
        alone = [model(windows[b : b + 1])[key][0] for b in range(WINDOWS)]
    return alone, stacked


def test_vggt_cameras_of_a_window_alone_equal_its_cameras_in_a_batch(tiny_model, windows):
    alone, stacked = _alone_and_stacked(tiny_model, windows, "pose_enc")
    for b in range(WINDOWS):
        assert torch.equal(alone[b], stacked[b]), b


def test_da3_cameras_of_a_window_alone_equal_its_cameras_in_a_batch(windows):
    model = load_rule_weights_(build_da3(DA3Config.tiny(), device="meta"))
    alone, stacked = _alone_and_stacked(model, windows, "pose_enc")
    for b in range(WINDOWS):
        assert torch.equal(alone[b], stacked[b]), b


def test_per_window_concatenates_tensors_and_lists():
    tokens = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(per_window(lambda t: t * 2, tokens), tokens * 2)
    steps = per_window(lambda t: [t, t + 1], tokens)
    assert torch.equal(steps[0], tokens) and torch.equal(steps[1], tokens + 1)
