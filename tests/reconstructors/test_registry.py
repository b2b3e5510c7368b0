"""A fourth reconstructor is its module and one registry line: its flags join the command line
and ``PipelineConfig``, and the runner, the resume signature and the option checks take it
without further code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from conftest import IMAGES, ROOT
from pipeline import reconstructors
from pipeline.infra.options import option
from pipeline.reconstructors.colmap import ColmapReconstructor

TOY = textwrap.dedent('''
    """colmap with each window alone, and a flag of its own."""
    from dataclasses import dataclass, replace

    from pipeline.infra.options import option
    from pipeline.reconstructors.colmap import ColmapFlags, ColmapReconstructor


    @dataclass(kw_only=True)
    class ToyFlags(ColmapFlags):
        """Flags of toy (and colmap's, which it reads too)."""

        toy_pairing: int = option(3, group="toy", kind="int", metavar="N")
        """toy: each frame is matched with this many following frames."""


    class ToyReconstructor(ColmapReconstructor):
        name = "toy"
        flags = ToyFlags
        plans_sequences = False

        @classmethod
        def options_from_config(cls, config):
            return replace(ColmapReconstructor.options_from_config(config), chunk_frames=0,
                           pairing_overlap=config.toy_pairing)
''')

REGISTER = ("import sys; import pipeline.reconstructors as r; "
            "r._REGISTRY['toy'] = 'toy_reconstructor:ToyReconstructor'; "
            "from pipeline.cli.main import main; sys.exit(main(sys.argv[1:]))")


def toy_cli(tmp_path, *args):
    (tmp_path / "toy_reconstructor.py").write_text(TOY)
    env_path = f"{tmp_path}:{ROOT}"
    return subprocess.run([sys.executable, "-c", REGISTER, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": env_path})


@pytest.mark.slow
def test_a_reconstructor_with_flags_of_its_own_is_one_module_and_one_line(tmp_path):
    out = tmp_path / "out"
    args = ["--input-dir", IMAGES, "--output-dir", out, "--max-frames", "8", "--window-size",
            "4", "--window-stride", "4", "--cpu-workers", "1", "-q"]
    helped = toy_cli(tmp_path, "--help")
    assert "toy:" in helped.stdout and "--toy-pairing N" in helped.stdout
    assert "{auto,vggt,da3,colmap,toy}" in helped.stdout
    refused = toy_cli(tmp_path, *args, "--reconstructor", "colmap", "--toy-pairing", "2")
    assert refused.returncode == 2
    assert "--toy-pairing (read by toy): not read by colmap" in refused.stderr
    done = toy_cli(tmp_path, *args, "--reconstructor", "toy", "--toy-pairing", "2",
                   "--min-registered", "0.25")  # colmap's flags are toy's too
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["reconstructor"]["name"] == "toy"
    assert manifest["config"]["toy_pairing"] == 2 and manifest["summary"]["ok"] == 2
    info = json.loads((out / "batch_000" / "window_000" / "window_info.json").read_text())
    assert info["signature"]["options"]["pairing_overlap"] == 2
    again = toy_cli(tmp_path, *args, "--reconstructor", "toy", "--toy-pairing", "2",
                    "--min-registered", "0.25")
    assert again.returncode == 0
    assert json.loads((out / "run.json").read_text())["summary"]["skipped"] == 2
    other = toy_cli(tmp_path, *args, "--reconstructor", "toy", "--min-registered", "0.25")
    assert other.returncode == 0  # another pairing: both windows redone
    assert json.loads((out / "run.json").read_text())["summary"]["ok"] == 2


@dataclass(kw_only=True)
class ClashFlags:
    chunk_frames: int = option(5, group="clash", kind="int")
    """Another chunk size, declared apart from colmap's."""


class ClashReconstructor(ColmapReconstructor):
    name = "clash"
    flags = ClashFlags


def test_a_flag_declared_twice_is_refused(monkeypatch):
    monkeypatch.setattr(reconstructors, "_REGISTRY", {
        **reconstructors._REGISTRY,
        "clash": f"{ClashReconstructor.__module__}:ClashReconstructor"})
    with pytest.raises(TypeError, match="'chunk_frames' is declared by both ColmapFlags and "
                                        "ClashFlags"):
        reconstructors.registered_flags()
