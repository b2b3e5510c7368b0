"""A fourth reconstructor comes from another installed package, through the entry-point group
``pipeline.reconstructors``: its flags join the command line and ``PipelineConfig``, and the
runner, the resume signature and the option checks take it without further code or patching."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT
from pipeline import reconstructors
from pipeline.infra.options import option
from pipeline.reconstructors import registry
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

COMMAND = "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
"""The pipeline's command line, as the console script runs it."""


def install_toy(site: Path) -> None:
    """An installed distribution ``toy-reconstructor`` in ``site`` (a folder on the path): its
    module and its metadata, declaring ``toy`` in the entry-point group as its
    ``pyproject.toml`` would."""
    site.mkdir(exist_ok=True)
    (site / "toy_reconstructor.py").write_text(TOY)
    meta = site / "toy_reconstructor-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-reconstructor\n"
                                   "Version: 0.1\n")
    (meta / "entry_points.txt").write_text(
        f"[{reconstructors.ENTRY_POINT_GROUP}]\ntoy = toy_reconstructor:ToyReconstructor\n")


def toy_cli(tmp_path, *args):
    site = tmp_path / "site"
    if not site.exists():
        install_toy(site)
    return subprocess.run([sys.executable, "-c", COMMAND, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{site}:{ROOT}"})


@pytest.mark.slow
def test_a_reconstructor_of_another_package_joins_through_its_entry_point(tmp_path):
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


def with_entry_points(monkeypatch, **declared: str) -> None:
    """The registry as it is with ``declared`` (name -> ``module:Class``) installed besides."""
    from importlib.metadata import EntryPoint

    points = [EntryPoint(name, value, registry.ENTRY_POINT_GROUP)
              for name, value in declared.items()]
    monkeypatch.setattr(registry, "entry_points", lambda group: points
                        if group == registry.ENTRY_POINT_GROUP else [])
    registry.reconstructor_entries.cache_clear()
    registry.flag_readers.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_registry():
    yield
    registry.reconstructor_entries.cache_clear()
    registry.flag_readers.cache_clear()


def test_a_flag_declared_twice_is_refused(monkeypatch):
    with_entry_points(monkeypatch, clash=f"{ClashReconstructor.__module__}:ClashReconstructor")
    assert reconstructors.available_reconstructors() == ["vggt", "da3", "colmap", "clash"]
    with pytest.raises(TypeError, match="'chunk_frames' is declared by both ColmapFlags and "
                                        "ClashFlags"):
        reconstructors.registered_flags()


def test_a_taken_name_keeps_its_first_declaration(monkeypatch, caplog):
    """Another package declaring ``colmap`` (or ``auto``) does not replace it: a warning names
    what is ignored; the project's own declarations (its installed metadata) count once."""
    with_entry_points(monkeypatch, colmap=f"{ClashReconstructor.__module__}:ClashReconstructor",
                      auto="x:Y", vggt=registry.BUILT_IN["vggt"])
    with caplog.at_level("WARNING", logger=registry.__name__):
        assert registry.reconstructor_entries() == registry.BUILT_IN
    assert sorted(r.args[0] for r in caplog.records) == ["auto", "colmap"]


def test_the_built_in_reconstructors_are_those_pyproject_declares():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][registry.ENTRY_POINT_GROUP] == registry.BUILT_IN
