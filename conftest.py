"""What every test module may share: the testdata paths, tiny generated checkpoints written once
per session, one merged colmap output of the command line that tests only read, and the
``gpu`` marker (tests that need CUDA are skipped without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
TESTDATA = ROOT / "testdata" / "synthetic"
"""The bundled synthetic sequence (24 frames, exact intrinsics, poses and depth)."""
IMAGES = TESTDATA / "images"
"""Its frames."""


def pytest_configure(config):
    """The suite runs in two pytest-xdist workers (``addopts``), each with one thread for torch
    and OpenMP, in it and in the processes it starts (``OMP_NUM_THREADS``), so that the two
    share the cores instead of crowding each other out."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


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


MERGED_RUN = ("--input-dir", str(IMAGES), "--reconstructor", "colmap", "--max-frames", "12",
              "--window-size", "8", "--window-stride", "4", "--merge", "-q")
"""The command of :func:`merged_colmap_output` (its ``--output-dir`` aside)."""


@pytest.fixture(scope="session")
def merged_colmap_output(tmp_path_factory) -> Path:
    """The output folder of the command line's colmap run over the first 12 frames, merged
    (2 windows of 8, one merged scene), made once per session; tests must not change it."""
    from pipeline.cli.main import main

    out = tmp_path_factory.mktemp("merged_colmap") / "out"
    assert main([*MERGED_RUN, "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_da3_checkpoint(tmp_path_factory) -> Path:
    """A folder with a tiny main-series Depth Anything 3 of generated weights."""
    from pipeline.algo.models import DA3Config
    from pipeline.algo.models.generated_checkpoint import write_generated_da3_checkpoint

    folder = tmp_path_factory.mktemp("tiny_da3")
    write_generated_da3_checkpoint(folder, DA3Config.tiny())
    return folder
