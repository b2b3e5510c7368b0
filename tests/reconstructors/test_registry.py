"""A fourth reconstructor is its module and one registry line: the command line, the runner,
the resume signature and the option checks take it without further code."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import IMAGES
from pipeline import reconstructors
from pipeline.cli import main
from pipeline.reconstructors.colmap import ColmapReconstructor


class AloneReconstructor(ColmapReconstructor):
    """colmap with every window reconstructed from its own frames, and no flags of its own."""

    name = "alone"
    flags = None
    plans_sequences = False

    @classmethod
    def options_from_config(cls, config):
        return replace(ColmapReconstructor.options_from_config(config), chunk_frames=0)


@pytest.fixture
def registered(monkeypatch):
    registry = {**reconstructors._REGISTRY,
                "alone": f"{AloneReconstructor.__module__}:AloneReconstructor"}
    monkeypatch.setattr(reconstructors, "_REGISTRY", registry)
    reconstructors.flag_readers.cache_clear()
    yield
    reconstructors.flag_readers.cache_clear()


def test_a_registered_reconstructor_runs_from_the_command_line(tmp_path, registered, capsys):
    out = tmp_path / "out"
    args = ["--input-dir", str(IMAGES), "--output-dir", str(out), "--max-frames", "8",
            "--window-size", "4", "--window-stride", "4", "--cpu-workers", "1", "-q"]
    assert main([*args, "--reconstructor", "alone", "--chunk-frames", "50"]) == 2
    assert "--chunk-frames (read by colmap): not read by alone" in capsys.readouterr().err
    assert main([*args, "--reconstructor", "alone"]) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["reconstructor"]["name"] == "alone"
    assert manifest["summary"]["ok"] == 2
    assert main([*args, "--reconstructor", "alone"]) == 0  # resumed: nothing redone
    assert json.loads((out / "run.json").read_text())["summary"]["skipped"] == 2
