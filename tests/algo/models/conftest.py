"""Shared fixtures: a tiny VGGT with rule weights and small deterministic inputs."""

import pytest
import torch

from pipeline.algo.models import VGGTConfig, build_model, load_rule_weights_


@pytest.fixture(scope="session")
def tiny_model():
    return load_rule_weights_(build_model(VGGTConfig.tiny(), device="meta"))


@pytest.fixture(scope="session")
def tiny_inputs():
    """Images ``[1, 4, 3, 56, 70]`` and 5 query points ``[1, 5, 2]`` (fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 4, 3, 56, 70, generator=gen)
    queries = torch.tensor([[[10.0, 20.0], [30.5, 40.25], [60.0, 50.0], [3.0, 3.0], [69.0, 55.0]]])
    return images, queries


@pytest.fixture(scope="session")
def tiny_outputs(tiny_model, tiny_inputs):
    """Reference outputs of ``tiny_model`` on ``tiny_inputs`` (default options)."""
    images, queries = tiny_inputs
    with torch.inference_mode():
        return tiny_model(images, queries)
