"""One source for every option: the command line is generated from the configuration's fields,
the README's flag table matches it, and options a reconstructor does not read are refused."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT
from pipeline.cli.main import build_parser, main
from pipeline.infra.options import (
    default_text,
    field_docs,
    flag_name,
    flag_of,
    flagged_fields,
)
from pipeline.post.merge_options import MergeOptions
from pipeline.reconstructors import unread_options
from pipeline.runner.config import PipelineConfig


def readme_flags() -> dict[str, str]:
    """``{flag: default}`` of the README's flag table (backticks dropped)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| flag | default | meaning |"):].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for flag in re.findall(r"`(-[-\w]+)", cells[0]):
            rows[flag] = cells[1].replace("`", "")
    return rows


def test_every_field_is_a_flag_with_help_and_the_readme_agrees():
    parser_flags = {s for a in build_parser()._actions for s in a.option_strings
                    if s.startswith("--") and s != "--help"}
    expected = {}
    flagged = {f.name for _, owner, f in flagged_fields(PipelineConfig) if owner is PipelineConfig}
    unflagged = {f.name for f in dataclasses.fields(PipelineConfig)} - flagged
    assert unflagged == {"show_progress", "merge_options"}  # set by -q; the merge flags' home
    for _, owner, f in flagged_fields(PipelineConfig):
        assert field_docs(owner).get(f.name), f"{f.name} has no docstring (its help text)"
        expected[flag_name(f)] = default_text(f) or ""
        if f.default is True:
            expected["--no-" + flag_name(f)[2:]] = default_text(f)
    expected.update({"--quiet": "", "--backend": "", "--token": ""})  # the command's own
    assert set(expected) == parser_flags
    readme = readme_flags()
    documented = {flag for flag in expected if flag not in ("--quiet", "--verbose")}
    assert set(readme) - {"-v", "-q"} == documented, "the README's flag table lists other flags"
    for flag in documented:
        assert readme[flag] == expected[flag], f"README default of {flag}: {readme[flag]!r}, " \
                                               f"parser: {expected[flag]!r}"


def test_parser_defaults_are_the_configuration_defaults():
    from pipeline.cli.main import config_from_args

    args = build_parser().parse_args(["--input-dir", "x", "--output-dir", "o"])
    config = config_from_args(args)
    assert config == PipelineConfig(input_dir=Path("x"), output_dir=Path("o"))
    for dest, _, f in flagged_fields(PipelineConfig):
        if not flag_of(f).required:
            assert vars(args)[dest] == f.default, dest


def test_merge_flags_reach_the_merge_from_both_commands(tmp_path, capsys):
    from pipeline.cli.main import config_from_args

    args = build_parser().parse_args(["--input-dir", "x", "--output-dir", "o", "--merge",
                                      "--min-shared-frames", "4", "--no-refine"])
    assert config_from_args(args).merge_options == MergeOptions(min_shared_frames=4,
                                                                refine=False)
    assert main(["--input-dir", str(IMAGES), "--output-dir", str(tmp_path / "o"),
                 "--min-shared-frames", "4", "-q"]) == 2
    assert "--min-shared-frames: merge options, read only with --merge" in \
        capsys.readouterr().err
    out = tmp_path / "run"  # the run's merge is made with them
    assert main(["--input-dir", str(IMAGES), "--output-dir", str(out), "--max-frames", "8",
                 "--reconstructor", "colmap", "--merge", "--no-refine", "--voxel-fraction",
                 "0.01", "-q"]) == 0
    used = json.loads((out / "merged" / "merge.json").read_text())["options"]
    assert used == dataclasses.asdict(MergeOptions(refine=False, voxel_fraction=0.01))


def test_unread_options_are_named():
    config = PipelineConfig(output_dir=Path("o"), max_query_pts=512, camera_params=(1.0, 2, 3),
                            export_format="colmap-glb")
    assert list(unread_options(config, "colmap")) == ["--max-query-pts", "--export-format"]
    assert list(unread_options(config, "vggt")) == ["--export-format", "--camera-params"]
    assert list(unread_options(config, "da3")) == ["--max-query-pts", "--camera-params"]
    assert unread_options(config, "colmap")["--export-format"] == ("da3",)


@pytest.mark.parametrize("args,message", [
    (("--reconstructor", "colmap", "--max-query-pts", "512"),
     "--max-query-pts (read by vggt): not read by colmap"),
    (("--reconstructor", "vggt", "--camera-params", "300,160,120"),
     "--camera-params (read by colmap): not read by vggt"),
    (("--reconstructor", "vggt", "--export-format", "glb"),
     "--export-format (read by da3): not read by vggt"),
    (("--reconstructor", "colmap", "--process-res", "280", "--no-use-ba"),
     "--use-ba (read by vggt/da3), --process-res (read by vggt/da3): not read by colmap"),
])
def test_an_option_the_reconstructor_does_not_read_exits_2(tmp_path, capsys, args, message):
    assert main(["--input-dir", str(IMAGES), "--output-dir", str(tmp_path / "o"), *args,
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_each_reconstructor_declares_its_flags_in_its_own_module():
    from pipeline.reconstructors import available_reconstructors, flag_readers, reconstructor_class

    readers = flag_readers()
    for name in available_reconstructors():
        cls = reconstructor_class(name)
        assert cls.flags is not None and cls.flags.__module__ == cls.__module__, name
        assert issubclass(PipelineConfig, cls.flags), f"{cls.flags.__name__} is no base of " \
                                                      "PipelineConfig"
        for f in dataclasses.fields(cls.flags):
            assert flag_of(f) is not None, f"{name}: {f.name} is no option(...)"
            assert name in readers[f.name]
    own = {f.name for f in dataclasses.fields(PipelineConfig)} - set(readers)
    assert {"model", "max_query_pts", "chunk_frames", "export_format"}.isdisjoint(own)
    assert {"input_dir", "window_size", "camera_type", "cpu_workers"} <= own


@pytest.mark.parametrize("name", ["vggt", "da3", "colmap"])
def test_default_flags_build_the_reconstructors_default_options(name):
    """The flags' defaults and the options classes' defaults agree (one would drift otherwise):
    a configuration left at its defaults builds the same result-deciding options as the options
    class does by itself, apart from the lowest automatic resolution (set only from flags)."""
    from pipeline.io.signature import options_signature
    from pipeline.reconstructors import reconstructor_class
    from pipeline.reconstructors.colmap import ColmapOptions
    from pipeline.reconstructors.da3 import Da3Options
    from pipeline.reconstructors.vggt import VggtOptions

    kwargs = {"model": "some/da3"} if name == "da3" else {}
    config = PipelineConfig(output_dir=Path("o"), **kwargs)
    built = options_signature(reconstructor_class(name).options_from_config(config))
    default = options_signature({"vggt": VggtOptions, "da3": Da3Options,
                                 "colmap": ColmapOptions}[name](**kwargs))
    assert built.pop("min_process_res", None) in (224, None)
    default.pop("min_process_res", None)
    assert built == default


def test_the_command_line_reads_every_flag_without_torch():
    """Reconstructor modules import torch where they use it: ``--help`` and bad input answer
    without loading it."""
    import subprocess
    import sys

    code = ("import sys; from pipeline.cli.main import build_parser, main; "
            "build_parser().format_help()"
            "; import pipeline.reconstructors.vggt, pipeline.reconstructors.da3; "
            "assert main(['--input-dir', 'x', '--output-dir', 'o', '--vis-thresh', '2']) == 2; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
    assert "error: --vis-thresh must be a finite number between 0 and 1, got 2.0" in out.stderr


@pytest.mark.parametrize("kwargs,message", [
    ({"vis_thresh": 1.5}, "--vis-thresh must be a finite number between 0 and 1, got 1.5"),
    ({"max_memory_gb": 0}, "--max-memory-gb must be a positive finite number, got 0"),
    ({"conf_thresh_percentile": float("nan")}, "--conf-thresh-percentile must be a finite"),
    ({"merge_options": MergeOptions(voxel_fraction=-1.0), "merge": True},
     "--voxel-fraction must be a positive finite number, got -1.0"),
    ({"camera_params": (300.0, -1.0, 120.0), "reconstructor": "colmap"},
     "--camera-params: the principal point cx must not be negative"),
])
def test_library_values_are_checked_as_declared(tmp_path, kwargs, message):
    from pipeline.core.errors import InputError
    from pipeline.runner import run

    config = PipelineConfig(input_dir=IMAGES, output_dir=tmp_path / "o", **kwargs)
    with pytest.raises(InputError, match=re.escape(message)):
        run(config)
    assert not (tmp_path / "o").exists()
