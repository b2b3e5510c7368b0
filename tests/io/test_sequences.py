"""Many sequences in one run (:mod:`pipeline.io.sequences`, ``--input-root``/``--input-list``):
finding and naming them, the index, failure of one sequence alone, resume, one model load and
batches shared between sequences."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGES, TESTDATA
from pipeline.cli.main import main
from pipeline.core.errors import InputError
from pipeline.infra.lock import OutputLock
from pipeline.io.output import read_window_info, read_window_poses
from pipeline.io.sequences import (
    INDEX,
    WindowIndex,
    discover,
    read_list,
    safe_name,
    unique_names,
)
from pipeline.post.evaluate import evaluate_dataset, format_dataset_report


def frames_folder(folder: Path, first: int, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(IMAGES.iterdir())[first:first + count]:
        shutil.copy(path, folder / path.name)
    return folder


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def index_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / INDEX).read_text().splitlines()]


# ---- names and discovery -------------------------------------------------------------------------

def test_names_are_safe_and_unique():
    assert safe_name("clips/a") == "clips__a"
    assert safe_name("odd name/ü.mp4") == "odd_name___.mp4"
    assert safe_name("../.hidden") == "hidden"
    assert unique_names(["a b", "a_b", "A_B", "c"]) == ["a_b", "a_b-2", "A_B-3", "c"]
    # what a run over many writes beside its sequences is no sequence's name
    assert unique_names(["index.jsonl", "dataset.json", "merged", "batch_000", "frames"]) == [
        "index.jsonl-2", "dataset.json-2", "sequence_merged", "sequence_batch_000",
        "sequence_frames"]


def test_a_users_file_named_like_a_record_does_not_hide_a_sequence(tmp_path):
    """A frame folder holding the user's own ``plan.json`` is a sequence; one holding the
    pipeline's record is an output folder."""
    root = tmp_path / "root"
    frames_folder(root / "mine", 0, 2)
    (root / "mine" / "plan.json").write_text('{"note": "my own plan"}')
    frames_folder(root / "run", 0, 2)
    (root / "run" / "plan.json").write_text('{"windows": []}')
    assert [s.name for s in discover(root)] == ["mine"]


def test_discover_finds_frame_folders_and_videos_but_not_the_output(tmp_path):
    root = tmp_path / "root"
    frames_folder(root / "clips" / "a", 0, 2)
    frames_folder(root / "b", 0, 2)
    (root / "clips" / "v.mp4").write_bytes(b"not really")
    frames_folder(root / ".cache", 0, 2)  # hidden: skipped
    frames_folder(root / "out" / "frames", 0, 2)  # the output folder inside the root: skipped
    (root / "notes").mkdir()
    found = discover(root, skip=[root / "out"])
    assert [(s.name, s.is_video) for s in found] == [
        ("b", False), ("clips__a", False), ("clips__v.mp4", True)]
    with pytest.raises(InputError, match="no folder of frames"):
        discover(root / "notes")


def test_a_frame_pattern_decides_which_folders_are_sequences(tmp_path):
    """A dataset mixing 7-Scenes-like folders (colour frames beside depth maps) with plain photo
    folders: with --frame-pattern only the folders whose names match are sequences."""
    root = tmp_path / "root"
    scene = frames_folder(root / "scene", 0, 3)
    for path in sorted(scene.iterdir()):
        path.rename(scene / f"{path.stem}.color{path.suffix}")
        shutil.copy(scene / f"{path.stem}.color{path.suffix}", scene / f"{path.stem}.depth.png")
    frames_folder(root / "photos", 0, 3)
    assert [s.name for s in discover(root)] == ["photos", "scene"]
    assert [s.name for s in discover(root, pattern="*.color.*")] == ["scene"]
    with pytest.raises(InputError, match=r"no folder of frames matching --frame-pattern '\*.x'"):
        discover(root, pattern="*.x")


def test_a_list_skips_comments_and_keeps_missing_paths_to_fail_alone(tmp_path):
    frames_folder(tmp_path / "seqs" / "a", 0, 2)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the clips\n\nseqs/a\n  {tmp_path / 'gone'}  \n")
    found = read_list(listing)
    assert [s.name for s in found] == ["seqs__a", "gone"]
    assert found[0].path == tmp_path / "seqs" / "a"
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="lists no sequence"):
        read_list(tmp_path / "empty.txt")


def test_the_index_is_replaced_whole(tmp_path):
    index = WindowIndex(tmp_path, interval=0)
    for k in range(3):
        index.add({"sequence": "b" if k else "a", "window_index": k, "status": "ok"})
        index.write()
        assert all(json.loads(line) for line in (tmp_path / INDEX).read_text().splitlines())
    assert [(e["sequence"], e["window_index"]) for e in index_lines(tmp_path)] == \
        [("a", 0), ("b", 1), ("b", 2)]
    assert not list(tmp_path.glob(".*tmp*"))


# ---- whole runs ----------------------------------------------------------------------------------

SMALL = ("--window-size", "4", "--window-stride", "4", "-q")


def test_a_sequence_folder_holding_a_users_run_json_fails_alone(tmp_path):
    """OUT/<sequence>/run.json written by someone else: that sequence is not run (its file
    kept), the other is."""
    root, out = tmp_path / "root", tmp_path / "out"
    frames_folder(root / "a", 0, 4)
    frames_folder(root / "b", 4, 4)
    (out / "b").mkdir(parents=True)
    (out / "b" / "run.json").write_text("my notes")
    assert cli("--input-root", root, "--output-dir", out, *SMALL, "--reconstructor",
               "colmap") == 1
    assert (out / "b" / "run.json").read_text() == "my notes"
    assert (out / "a" / "run.json").is_file()
    failed = [e for e in index_lines(out) if e["sequence"] == "b"]
    assert len(failed) == 1 and "no run of this pipeline wrote it" in failed[0]["error"]


def test_sequence_folders_of_an_earlier_run_are_named_not_listed(tmp_path, caplog):
    """A sequence gone from the input: its folder stays (nothing is deleted) but the run warns
    of it, and dataset.json names it, while index.jsonl lists this run's windows only."""
    root, out = tmp_path / "root", tmp_path / "out"
    frames_folder(root / "a", 0, 4)
    frames_folder(root / "b", 4, 4)
    assert cli("--input-root", root, "--output-dir", out, *SMALL, "--reconstructor",
               "colmap") == 0
    shutil.rmtree(root / "b")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert cli("--input-root", root, "--output-dir", out, *SMALL, "--reconstructor",
                   "colmap") == 0
    assert "holds 1 sequence folder of an earlier run that this run does not have (b)" \
        in caplog.text
    assert (out / "b" / "run.json").is_file()
    assert {e["sequence"] for e in index_lines(out)} == {"a"}
    assert json.loads((out / "dataset.json").read_text())["stray_sequences"] == ["b"]


def test_a_sequence_folder_another_run_holds_fails_alone(tmp_path):
    """A run over one sequence writes into OUT/<sequence> (it holds that folder's lock): the
    run over many leaves that sequence alone and does the other."""
    root, out = tmp_path / "root", tmp_path / "out"
    frames_folder(root / "a", 0, 4)
    frames_folder(root / "b", 4, 4)
    (out / "b").mkdir(parents=True)
    with OutputLock(out / "b"):
        assert cli("--input-root", root, "--output-dir", out, *SMALL, "--reconstructor",
                   "colmap") == 1
    assert (out / "a" / "run.json").is_file() and not (out / "b" / "run.json").exists()
    failed = [e for e in index_lines(out) if e["sequence"] == "b"]
    assert len(failed) == 1 and "is in use by another run" in failed[0]["error"]


def test_a_run_into_a_sequence_of_a_running_run_over_many_is_refused(tmp_path, capsys):
    """While a run over many holds OUT, a run into OUT/<sequence> exits 2 and writes nothing;
    once it is over, the same command runs."""
    root, out = tmp_path / "root", tmp_path / "out"
    frames_folder(root / "a", 0, 4)
    assert cli("--input-root", root, "--output-dir", out, *SMALL, "--reconstructor",
               "colmap") == 0
    before = sorted(p.relative_to(out) for p in (out / "a").rglob("*"))
    single = ("--input-dir", root / "a", "--output-dir", out / "a", *SMALL,
              "--reconstructor", "colmap", "--overwrite")
    with OutputLock(out):
        assert cli(*single) == 2
    assert "a run over many sequences, which writes into" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in (out / "a").rglob("*")) == before
    assert cli(*single) == 0


@pytest.mark.slow
def test_a_run_over_many_names_the_sequence_of_every_failure(tmp_path, caplog, capsys):
    """Failure lines, the digest (printed and kept in ``dataset.json``) and the end lines name
    the sequence: ``b/1`` failed, ``b``'s merge split in two, ``broken.mp4`` was not read."""
    from tests.helpers import frames_with_blank_window

    root = tmp_path / "root"
    frames_folder(root / "a", 0, 8)
    frames_with_blank_window(IMAGES, root / "b", count=12, blank=range(4, 8))
    (root / "broken.mp4").write_bytes(b"\0" * 4096)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert main(["--input-root", str(root), "--output-dir", str(out), "--window-size",
                     "4", "--window-stride", "4", "--reconstructor", "colmap", "--merge"]) == 1
    assert "window b/1 failed:" in caplog.text
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()
               if line.startswith("  ")]
    assert any("(window b/1)" in line for line in printed), printed
    assert any(line.startswith("b: merged in 2 separate segments; ") for line in printed)
    assert any(line.startswith("broken.mp4: not reconstructed; ") for line in printed)
    digest = json.loads((out / "dataset.json").read_text())["digest"]
    assert [d["windows"] for d in digest if d["count"]] == [["b/1"]]
    assert {d["cause"] for d in digest if not d["count"]} == {  # a's windows do not overlap
        "a: merged in 2 separate segments", "b: merged in 2 separate segments",
        "broken.mp4: not reconstructed"}
    # each sequence's own run.json names its windows by index, as a run over it alone does
    assert json.loads((out / "b" / "run.json").read_text())["digest"][0]["windows"] == [1]


def test_classical_dataset_run(tmp_path, caplog):
    root = tmp_path / "root"
    frames_folder(root / "a", 0, 8)
    frames_folder(root / "b", 8, 8)
    (root / "broken.mp4").write_bytes(b"\0" * 4096)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert cli("--input-root", str(root), "--output-dir", str(out), *SMALL[:-1],
                   "--reconstructor", "colmap") == 1  # a sequence could not be read
    planned = [r.getMessage() for r in caplog.records if r.name.startswith("pipeline.runner")
               and r.levelno == logging.INFO and "->" in r.getMessage()]
    # one line for all sequences (each one's own is at debug level)
    assert planned == ["2 sequences, 1 failed to load (skipped): 16 frames -> 4 windows: 4 to do, "
                       "0 already complete"]
    lines = index_lines(out)
    assert [(e["sequence"], e["window_index"], e["status"]) for e in lines] == [
        ("a", 0, "ok"), ("a", 1, "ok"), ("b", 0, "ok"), ("b", 1, "ok"),
        ("broken.mp4", None, "failed")]
    assert "cannot decode" in lines[-1]["error"]
    first = lines[0]
    assert first["folder"] == "a/batch_000/window_000" and first["image_size"] == [320, 240]
    assert set(first["intrinsics"]) == set(first["registered_frames"])
    assert not first["has_depth"] and first["exports"] == []
    dataset = json.loads((out / "dataset.json").read_text())
    assert [(s["name"], s["status"]) for s in dataset["sequences"]] == [
        ("a", "finished"), ("b", "finished"), ("broken.mp4", "failed")]
    # each sequence's folder is what a run over it alone writes
    alone = tmp_path / "alone"
    assert cli("--input-dir", str(root / "b"), "--output-dir", str(alone), *SMALL,
               "--reconstructor", "colmap") == 0
    for window in ("batch_000/window_000", "batch_000/window_001"):
        info = read_window_info(out / "b" / window)
        assert info["path"] == window
        assert info["signature"] == read_window_info(alone / window)["signature"]
        for name, pose in read_window_poses(alone / window).items():  # the same, exactly
            np.testing.assert_allclose(read_window_poses(out / "b" / window)[name], pose,
                                       rtol=0, atol=1e-6)
    assert (out / "b" / "run.json").is_file() and (out / "b" / "plan.json").is_file()
    # scored per sequence with a total: ground truth given per sequence, or found beside one
    gt = tmp_path / "gt"
    for name in ("a", "b"):
        (gt / name).mkdir(parents=True)
        shutil.copy(TESTDATA / "ground_truth.npz", gt / name)
    report = evaluate_dataset(out, gt)
    assert [(e["name"], e["status"]) for e in report["sequences"]] == [
        ("a", "ok"), ("b", "ok"), ("broken.mp4", "failed")]
    assert report["summary"]["windows_ok"] == 4 and report["summary"]["sequences_scored"] == 2
    assert report["summary"]["ate_rmse_path_fraction"]["max"] < 0.01
    assert format_dataset_report(report).splitlines()[-1].startswith(
        "total: 2 of 3 sequences, 4 of 4 windows scored, median")
    shutil.copy(TESTDATA / "ground_truth.npz", root / "a")
    beside = evaluate_dataset(out)
    assert [e["status"] for e in beside["sequences"]] == ["ok", "no ground truth", "failed"]
    # resumed: nothing redone, the index whole again
    (root / "broken.mp4").unlink()
    assert cli("--input-root", str(root), "--output-dir", str(out), *SMALL,
               "--reconstructor", "colmap") == 0
    assert [e["status"] for e in index_lines(out)] == ["ok"] * 4
    runs = json.loads((out / "a" / "run.json").read_text())
    assert all(w["skipped"] for w in runs["windows"])


@pytest.mark.slow
def test_network_dataset_run_loads_once_and_shares_batches(tmp_path, tiny_vggt_checkpoint):
    listing = tmp_path / "list.txt"
    frames_folder(tmp_path / "x", 0, 8)
    frames_folder(tmp_path / "y", 4, 8)
    listing.write_text("x\ny\nmissing\n")
    out = tmp_path / "out"
    assert cli("--input-list", str(listing), "--output-dir", str(out), *SMALL,
               "--reconstructor", "vggt", "--model", str(tiny_vggt_checkpoint),
               "--max-query-pts", "32", "--min-points", "0", "--min-frame-observations", "0",
               "--window-batch-size", "4", "--save-depth", "--merge", "--process-res",
               "112") == 1
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["profile"]["load"]["calls"] == 1
    assert dataset["profile"]["forward"]["calls"] == 1  # 4 windows of two sequences, one batch
    batches = {read_window_info(out / s / "batch_000" / w)["batch_index"]
               for s in ("x", "y") for w in ("window_000", "window_001")}
    assert batches == {0}
    lines = index_lines(out)
    assert [(e["sequence"], e["status"]) for e in lines] == [
        ("missing", "failed"), ("x", "ok"), ("x", "ok"), ("y", "ok"), ("y", "ok")]
    assert "does not exist" in lines[0]["error"]
    assert all(e["has_depth"] for e in lines[1:])
    assert (out / "x" / "merged" / "merge.json").is_file()  # --merge per sequence

    from pipeline.io.dataset import WindowDataset

    data = WindowDataset(out)
    assert len(data) == 4 and {data[i]["sequence"] for i in range(4)} == {"x", "y"}
    assert data[0]["depth"].shape == data[0]["images"].shape[:3]
