"""What every test module may share: the testdata paths, tiny generated checkpoints written once
per session, and the ``gpu`` marker (tests that need CUDA are skipped without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
TESTDATA = ROOT / "testdata" / "synthetic"
"""The bundled synthetic sequence (24 frames, exact intrinsics, poses and depth)."""
IMAGES = TESTDATA / "images"
"""Its frames."""


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.gpu`` tests on a machine without CUDA (the CI machine has none)."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def images() -> Path:
    """The bundled synthetic frames."""
    return IMAGES


@pytest.fixture(scope="session")
def tiny_vggt_checkpoint(tmp_path_factory) -> Path:
    """A folder with a tiny VGGT of generated weights (model.safetensors + config.json)."""
    from pipeline.algo.models import VGGTConfig
    from pipeline.algo.models.generated_checkpoint import write_generated_checkpoint

    folder = tmp_path_factory.mktemp("tiny_vggt")
    write_generated_checkpoint(folder, VGGTConfig.tiny())
    return folder


@pytest.fixture(scope="session")
def tiny_da3_checkpoint(tmp_path_factory) -> Path:
    """A folder with a tiny main-series Depth Anything 3 of generated weights."""
    from pipeline.algo.models import DA3Config
    from pipeline.algo.models.generated_checkpoint import write_generated_da3_checkpoint

    folder = tmp_path_factory.mktemp("tiny_da3")
    write_generated_da3_checkpoint(folder, DA3Config.tiny())
    return folder
