"""One source for every option: the command line is generated from the configuration's fields,
the README's flag table matches it, and options a reconstructor does not read are refused."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT
from pipeline.cli import build_parser, main
from pipeline.config import MergeOptions, PipelineConfig
from pipeline.options import (
    default_text,
    field_docs,
    flag_name,
    flag_of,
    flagged_fields,
    unread_options,
)


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
    expected["--quiet"] = ""
    assert set(expected) == parser_flags
    readme = readme_flags()
    documented = {flag for flag in expected if flag not in ("--quiet", "--verbose")}
    assert set(readme) - {"-v", "-q"} == documented, "the README's flag table lists other flags"
    for flag in documented:
        assert readme[flag] == expected[flag], f"README default of {flag}: {readme[flag]!r}, " \
                                               f"parser: {expected[flag]!r}"


def test_parser_defaults_are_the_configuration_defaults():
    from pipeline.cli import config_from_args

    args = build_parser().parse_args(["--input-dir", "x", "--output-dir", "o"])
    config = config_from_args(args)
    assert config == PipelineConfig(input_dir=Path("x"), output_dir=Path("o"))
    for dest, _, f in flagged_fields(PipelineConfig):
        if not flag_of(f).required:
            assert vars(args)[dest] == f.default, dest


def test_merge_flags_reach_the_merge_from_both_commands(tmp_path, capsys):
    from pipeline.cli import config_from_args

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
    assert list(unread_options(config, "vggt")) == ["--camera-params", "--export-format"]
    assert list(unread_options(config, "da3")) == ["--camera-params", "--max-query-pts"]
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
