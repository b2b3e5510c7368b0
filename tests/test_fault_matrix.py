"""The second fault matrix: the input is never written, an edited record is never trusted,
inputs are neither dropped nor duplicated without a word, and hangs, tracebacks and leftovers
are one-line errors. Each test injects one class of fault, as a user or the machine would."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGES
from pipeline.io.frames import file_digest
from tests.helpers import frames_with_blank_window, window_dirs, window_info, write_video
from tests.test_faults import (
    SMALL,
    cli,
    frames,
    manifest,
    one_error_line,
    pipeline_cmd,
    small_disk,  # noqa: F401 - a fixture
)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: file_digest(p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()}


def sixteen_bit(folder: Path, count: int = 8) -> Path:
    """``count`` testdata frames as 16-bit grey PNGs (frames the pipeline converts)."""
    folder.mkdir(parents=True)
    for path in sorted(IMAGES.iterdir())[:count]:
        grey = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(folder / path.name)
    return folder


# ---- 1, 5: nothing the pipeline writes is an input; converted copies are verified -------------

def test_an_output_folder_that_would_overwrite_the_input_is_refused(tmp_path, capsys):
    shots = tmp_path / "shots"
    source = sixteen_bit(shots / "frames")
    before = digests(source)
    assert cli("--input-dir", source, "--output-dir", shots, *SMALL) == 2
    assert "which the run writes" in one_error_line(capsys.readouterr().err)
    assert digests(source) == before
    from pipeline.core.errors import InputError
    from pipeline.io.frames import prepare_frames

    with pytest.raises(InputError, match="would be written into the input folder"):
        prepare_frames(sorted(source.iterdir()), source, show_progress=False)  # library use
    assert digests(source) == before
    inside = frames(tmp_path / "out" / "batch_000" / "mine")  # a folder the run replaces
    assert cli("--input-dir", inside, "--output-dir", tmp_path / "out", *SMALL) == 2
    assert "which the run writes" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_converted_frame_replaced_after_the_run_is_converted_again(tmp_path, caplog):
    source = sixteen_bit(tmp_path / "in", count=4)
    out = tmp_path / "out"
    assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    copy = out / "frames" / "frame_000.png"
    made = copy.read_bytes()
    Image.new("RGB", (64, 48), (9, 9, 9)).save(copy)  # another picture, another shape
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    assert "changed since it was made" in caplog.text
    assert copy.read_bytes() == made
    assert manifest(out)["summary"]["skipped"] == 1  # the window was right all along


# ---- 2, 3, 7, 9: sequences found once each, output folders never, unreadable ones named ----

def test_output_folders_and_link_loops_are_never_sequences(tmp_path, caplog):
    from pipeline.io.sequences import discover

    root = tmp_path / "root"
    frames(root / "a", 4)
    frames(root / "b", 4)
    (root / "b" / "loop").symlink_to(root / "b")  # seq/loop -> .
    old = root / "old_output"
    (old / "batch_000" / "window_000" / "images").mkdir(parents=True)
    frames(old / "batch_000" / "window_000" / "images", 4)
    frames(old / "frames", 4)
    (old / "plan.json").write_text('{"version": 1, "frames": [], "windows": []}')
    with caplog.at_level(logging.INFO, logger="pipeline.io.sequences"):
        found = discover(root)
    assert [s.name for s in found] == ["a", "b"]
    assert "a link back to a folder already looked at" in caplog.text
    assert "a pipeline output folder" in caplog.text
    # the root itself an earlier single run's output over its own frames: those frames count
    frames(old, 4)
    assert [s.path for s in discover(old)] == [old]


def test_the_input_root_as_output_folder_is_refused(tmp_path, capsys):
    root = tmp_path / "root"
    frames(root / "a", 4)
    assert cli("--input-root", root, "--output-dir", root, *SMALL) == 2
    assert "is the input root" in one_error_line(capsys.readouterr().err)
    assert not (root / "a" / "plan.json").exists()


@pytest.mark.slow
def test_a_dataset_written_inside_its_root_is_not_found_again(tmp_path):
    root = tmp_path / "root"
    frames(root / "a", 4)
    out = root / "out"
    assert cli("--input-root", root, "--output-dir", out, *SMALL) == 0
    assert cli("--input-root", root, "--output-dir", root / "out2", *SMALL) == 0
    dataset = json.loads((root / "out2" / "dataset.json").read_text())
    assert [s["name"] for s in dataset["sequences"]] == ["a"]  # not out/a/..., not out/a/frames


def test_an_unreadable_sequence_fails_named(tmp_path, monkeypatch, caplog):
    from pipeline.io.sequences import discover

    root = tmp_path / "root"
    frames(root / "a", 4)
    (root / "locked").mkdir()
    real = Path.iterdir

    def iterdir(self):  # as chmod 000 would (the tests may run as root, which reads anyway)
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with caplog.at_level(logging.WARNING, logger="pipeline.io.sequences"):
        found = discover(root)
    assert [s.name for s in found] == ["a", "locked"]
    assert "cannot read" in caplog.text and "Permission denied" in caplog.text


def test_a_list_naming_one_folder_twice_makes_one_sequence(tmp_path, caplog):
    from pipeline.io.sequences import read_list

    frames(tmp_path / "x" / "dir", 4)
    listing = tmp_path / "x" / "list.txt"
    listing.write_text("dir\ndir/\n../x/dir\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.io.sequences"):
        found = read_list(listing)
    assert len(found) == 1 and caplog.text.count("twice") == 2


# ---- 4: an edited record is not trusted --------------------------------------------------------

@pytest.mark.slow
def test_a_record_edited_to_ok_is_not_trusted(tmp_path):
    from pipeline.io.dataset import WindowDataset

    source = frames_with_blank_window(IMAGES, tmp_path / "in", count=12, blank=range(4, 8))
    out = tmp_path / "out"
    args = ("--window-size", "4", "--window-stride", "4", "--reconstructor", "colmap",
            "--chunk-frames", "0")
    assert cli("--input-dir", source, "--output-dir", out, *args) == 1
    failed = [d for d in window_dirs(out) if window_info(d)["status"] == "failed"]
    ok = [d for d in window_dirs(out) if window_info(d)["status"] == "ok"]
    assert failed and ok
    edited = {**window_info(failed[0]), "status": "ok", "error": None}
    (failed[0] / "window_info.json").write_text(json.dumps(edited))
    counts = window_info(ok[0])
    counts["num_points3D"] += 1000  # the counts of an ok window made up
    (ok[0] / "window_info.json").write_text(json.dumps(counts))
    assert len(WindowDataset(out)) == len(ok) - 1  # neither is served
    assert cli("--input-dir", source, "--output-dir", out, *args) == 1
    runs = {w["window_index"]: w for w in manifest(out)["windows"]}
    assert not runs[window_info(failed[0])["window_index"]]["skipped"]  # redone
    assert not runs[window_info(ok[0])["window_index"]]["skipped"]


def test_an_ok_record_must_agree_with_its_model(tmp_path):
    from pipeline.io.output import WindowChecks, ok_record_problem
    from tests.helpers import write_model

    write_model(tmp_path / "sparse", ["a.png", "b.png"], points=30)
    import pycolmap

    rec = pycolmap.Reconstruction(tmp_path / "sparse")
    bar = WindowChecks(min_points=20, min_frame_observations=10)
    info = {"status": "ok", "error": None, "num_points3D": 30, "checks": bar.record(rec)}
    assert ok_record_problem(rec, info) is None
    assert "names an error" in ok_record_problem(rec, {**info, "error": "too few matches"})
    assert "not its model's" in ok_record_problem(rec, {**info, "num_points3D": 300})
    high = {**info, "checks": {**info["checks"], "min_points": 50}}
    assert "too little structure" in ok_record_problem(rec, high)
    assert "no checks" in ok_record_problem(rec, {**info, "checks": None})


# ---- 6: merge is atomic --------------------------------------------------------------------------

@pytest.mark.slow
def test_a_merge_that_fails_keeps_the_good_merged_scene(tmp_path, monkeypatch, capsys):
    import errno

    from pipeline.cli.merge import main as merge_main
    from pipeline.post import merge

    out = tmp_path / "out"
    assert cli("--input-dir", frames(tmp_path / "in", 8), "--output-dir", out, *SMALL,
               "--merge") == 0
    good = {p.relative_to(out): p.read_bytes() for p in (out / "merged").rglob("*")
            if p.is_file()}
    (out / ".merged.partial-999999999").mkdir()  # what a merge killed at 0.7 s left
    real = merge.write_segment

    def full_disk(segment, folder, timestamps, **named):
        real(segment, folder, timestamps, **named)
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "points.ply"))

    monkeypatch.setattr(merge, "write_segment", full_disk)
    capsys.readouterr()  # what the run printed
    assert merge_main([str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line
    assert {p.relative_to(out): p.read_bytes() for p in (out / "merged").rglob("*")
            if p.is_file()} == good
    assert not [p for p in out.iterdir() if ".merged." in p.name]  # no staging, no trash left
    monkeypatch.setattr(merge, "write_segment", real)
    read_only = OSError(errno.EROFS, "Read-only file system", str(out / "merged"))
    monkeypatch.setattr(merge, "swap_into_place", lambda *a: (_ for _ in ()).throw(read_only))
    assert merge_main([str(out)]) == 2
    assert "Read-only file system" in one_error_line(capsys.readouterr().err)
    assert (out / "merged" / "merge.json").is_file()


@pytest.mark.parametrize("fault,exit_line", [
    (PermissionError(13, "Permission denied"), "PermissionError: [Errno 13] Permission denied"),
    (KeyError("window"), "a defect of the pipeline; -v shows where"),
])
def test_a_run_stopped_by_an_error_says_so_in_one_line_and_in_run_json(
        tmp_path, monkeypatch, capsys, fault, exit_line):
    """A folder of the output made read-only (or a defect) while windows were under way: it
    was a traceback, and run.json said 'interrupted' with no error."""
    from pipeline.runner import window_batch

    def staging(final, items, images):
        raise fault

    out = tmp_path / "out"
    monkeypatch.setattr(window_batch, "create_staging", staging)
    capsys.readouterr()
    assert cli("--input-dir", frames(tmp_path / "in", 8), "--output-dir", out, *SMALL) == 1
    assert exit_line in one_error_line(capsys.readouterr().err)
    record = manifest(out)
    assert record["status"] == "failed" and type(fault).__name__ in record["error"]
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]


def test_how_the_merge_of_a_run_ended_is_in_run_json(tmp_path, monkeypatch, capsys):
    """run.json said 'finished' with no word of a --merge that failed or was interrupted."""
    import errno

    from pipeline.post import merge

    out, images = tmp_path / "out", frames(tmp_path / "in", 8)
    assert cli("--input-dir", images, "--output-dir", out, *SMALL, "--merge") == 0
    segments = json.loads((out / "merged" / "merge.json").read_text())["segments"]
    assert manifest(out)["merge"] == {"status": "ok", "segments": len(segments)}
    good = {p.relative_to(out): p.read_bytes() for p in (out / "merged").rglob("*")
            if p.is_file()}
    real = merge.write_segment

    def full_disk(segment, folder, timestamps, **named):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "points.ply"))

    monkeypatch.setattr(merge, "write_segment", full_disk)
    assert cli("--input-dir", images, "--output-dir", out, *SMALL, "--merge") == 1
    record = manifest(out)
    assert record["status"] == "finished" and record["merge"]["status"] == "failed"
    assert "No space left on device" in record["merge"]["error"]

    def interrupted(segment, folder, timestamps, **named):
        real(segment, folder, timestamps, **named)
        raise KeyboardInterrupt

    monkeypatch.setattr(merge, "write_segment", interrupted)
    capsys.readouterr()
    assert cli("--input-dir", images, "--output-dir", out, *SMALL, "--merge") == 130
    record = manifest(out)
    assert record["status"] == "interrupted" and record["merge"] == {"status": "interrupted"}
    assert not [p for p in out.iterdir() if ".merged." in p.name]  # no staging left
    assert {p.relative_to(out): p.read_bytes() for p in (out / "merged").rglob("*")
            if p.is_file()} == good


# ---- 8, 18: broken links among frames, unreadable folders, names with newlines ----------------

def test_a_frame_that_is_a_link_to_nothing_is_named(tmp_path, capsys, caplog):
    source = frames(tmp_path / "in", 8)
    (source / "frame_100.png").symlink_to(tmp_path / "gone.png")
    (source / "frame_101.png").symlink_to(source / "frame_101.png")  # a loop
    out = tmp_path / "out"
    assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "frame_100.png is a link to" in line and "does not exist" in line and "1 more" in line
    from pipeline.runner import load_frames
    from pipeline.runner.config import PipelineConfig

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        kept = load_frames(PipelineConfig(input_dir=source, output_dir=out,
                                          skip_bad_frames=True))
    assert len(kept) == 8
    assert "frame_100.png" in caplog.text and "frame_101.png" in caplog.text


def test_an_unreadable_input_folder_is_not_called_unwritable(tmp_path, monkeypatch):
    from pipeline.core.errors import InputError
    from pipeline.io.frames import list_image_files

    source = frames(tmp_path / "in", 4)
    real = Path.iterdir

    def iterdir(self):
        if self == source:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(InputError, match="cannot read the input folder .*Permission denied"):
        list_image_files(source)


def test_a_name_with_a_newline_stays_on_one_error_line(tmp_path, capsys):
    assert cli("--input-dir", tmp_path / "two\nlines", "--output-dir", tmp_path / "out") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "two\\nlines" in line


# ---- 10, 11, 17: no hang, no traceback, values and library misuse refused ---------------------

def test_an_unreachable_ray_cluster_fails_within_seconds(tmp_path, capsys):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    assert cli("--input-dir", frames(tmp_path / "in", 4), "--output-dir", tmp_path / "out",
               *SMALL, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}") == 2
    assert time.monotonic() - start < 30
    line = one_error_line(capsys.readouterr().err)
    assert f"127.0.0.1:{port}" in line and "nothing answers" in line


@pytest.mark.parametrize("args, message", [
    (("--window-size", "99999999999999999999"), "--window-size must be a whole number"),
    (("--window-size", "100000000"), "from 1 to 1000000"),
    (("--cpu-workers", "99999999999999999999"), "--cpu-workers must be a whole number from 0"),
])
def test_huge_values_exit_2_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert cli("--input-dir", IMAGES, "--output-dir", out, *args) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("fields, message", [
    ({"window_size": "8"}, "--window-size must be a whole number, got '8'"),
    ({"window_size": 8.5}, "--window-size must be a whole number, got 8.5"),
    ({"frame_step": "2"}, "--frame-step must be a whole number"),
    ({"merge_options": {}}, "merge_options must be a MergeOptions, got dict"),
    ({"skip_bad_frames": "yes"}, "--skip-bad-frames must be True or False"),
    ({"camera_params": (500.0, "a", 1.0)}, "--camera-params must be a sequence of numbers"),
    ({"input_root": IMAGES}, "--input-dir and --input-root both given"),
])
def test_library_misuse_names_the_field(tmp_path, fields, message):
    from pipeline.core.errors import InputError
    from pipeline.runner import run
    from pipeline.runner.config import PipelineConfig

    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("(", r"\(")):
        run(PipelineConfig(input_dir=IMAGES, output_dir=tmp_path / "out", **fields))
    assert not (tmp_path / "out").exists()


def test_an_empty_batch_and_a_broken_index_line(tmp_path):
    from pipeline.core.errors import InputError
    from pipeline.io.dataset import WindowDataset
    from pipeline.runner import process_window_batch
    from pipeline.runner.config import PipelineConfig

    assert process_window_batch([], 0, PipelineConfig(input_dir=IMAGES,
                                                      output_dir=tmp_path / "o")) == []
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.jsonl").write_text('{"sequence": "a", "status": "failed"}\n{"se\n')
    with pytest.raises(InputError, match=r"index\.jsonl:2: not a JSON object"):
        WindowDataset(tmp_path / "d")


# ---- 12, 13: a full temporary disk is named; temporary folders of dead runs are removed ------

def test_temporary_folders_of_dead_runs_are_removed(tmp_path, monkeypatch):
    from pipeline.reconstructors.colmap import ColmapReconstructor

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for name in (f"window-colmap-{dead}-abc", f"colmap-sequence-{dead}-def",
                 f"window-colmap-{os.getppid()}-live", "colmap-sequence-nopid", "unrelated"):
        (tmp_path / name).mkdir()
    ColmapReconstructor().close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "colmap-sequence-nopid", "unrelated", f"window-colmap-{os.getppid()}-live"]


def test_a_full_temporary_disk_is_named(monkeypatch):
    from collections import namedtuple

    from pipeline.core.failures import cause_of
    from pipeline.infra import tempdirs

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(tempdirs.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 4096))
    message = tempdirs.explain("the worker process finishing this window died (often: out of "
                               "memory)")
    assert message.startswith(f"the temporary folder {tempfile.gettempdir()} has 0 MiB free")
    assert "TMPDIR" in message and cause_of(message).label == "temporary disk full"
    monkeypatch.setattr(tempdirs.shutil, "disk_usage", lambda path: usage(1 << 30, 0, 1 << 30))
    assert tempdirs.explain("boom") == "boom"


@pytest.mark.slow
def test_windows_on_a_full_temporary_disk_say_so(tmp_path, small_disk):  # noqa: F811
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:  # fill the 1 MiB tmpfs, then leave a few KiB: enough for
        try:  # Python to take it as the temporary folder, not for COLMAP's database
            fh.write(b"\0" * (2 << 20))
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - (16 << 10))
    env = {**os.environ, "TMPDIR": str(small_disk)}
    done = subprocess.run(pipeline_cmd("--input-dir", frames(tmp_path / "in", 4), "--output-dir",
                                       tmp_path / "out", *SMALL), capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode in (1, 2), done.stderr
    text = done.stdout + done.stderr
    assert "temporary folder" in text and "is full" in text and "Traceback" not in text


# ---- 14, 15: damaged window folders and extracted frames are redone, nothing left behind ------

@pytest.mark.slow
def test_a_window_folder_replaced_by_a_file_or_a_dangling_link_is_redone(
        tmp_path, monkeypatch, caplog):
    """... and a kept feature store this user cannot enter (``chmod 000``; the tests run as
    root, whom no mode stops, so access is denied the way the kernel would answer a user) is
    done without: the store is built again in the temporary folder, no traceback."""
    source = frames(tmp_path / "in", 6)
    out = tmp_path / "out"
    assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    first, second = window_dirs(out)
    shutil.rmtree(first)
    first.write_text("not a folder")
    shutil.rmtree(second)
    second.symlink_to(tmp_path / "nowhere")
    (store,) = out.rglob("store-*")
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        Path(path) != store and access(path, mode, **kw)))
    with caplog.at_level(logging.WARNING):
        assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    assert f"cannot use the COLMAP work kept in {store.parent}" in caplog.text
    assert first.is_dir() and second.is_dir() and not second.is_symlink()
    assert manifest(out)["summary"] == {"ok": 2, "failed": 0, "skipped": 0, "pending": 0}
    assert not [p for p in out.rglob("*") if ".trash-" in p.name or ".partial-" in p.name]


def test_a_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    out = tmp_path / ("x" * 300)
    assert cli("--input-dir", IMAGES, "--output-dir", out, *SMALL) == 2
    assert "File name too long" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_truncated_extracted_video_frame_is_extracted_again(tmp_path, caplog):
    pytest.importorskip("av")
    video = write_video(tmp_path / "clip.mp4", sorted(IMAGES.iterdir())[:4], rate=8)
    out = tmp_path / "out"
    assert cli("--input-video", video, "--output-dir", out, *SMALL) == 0
    frame = out / "frames" / "frame_000002.jpg"
    whole = frame.read_bytes()
    frame.write_bytes(whole[: len(whole) // 3])  # truncated
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert cli("--input-video", video, "--output-dir", out, *SMALL) == 0
    assert "extracting the video again" in caplog.text and frame.read_bytes() == whole


@pytest.mark.slow
def test_a_video_extracted_again_leaves_no_window_whose_images_changed(tmp_path, caplog):
    """Extracted again at another --fps, the frames took the old names with other pictures: a
    window of the first run outside the second's plan stayed 'ok' with images that were no
    longer those its cameras were solved for."""
    pytest.importorskip("av")
    video = write_video(tmp_path / "clip.mp4", sorted(IMAGES.iterdir())[:12], rate=10)
    out = tmp_path / "out"
    assert cli("--input-video", video, "--output-dir", out, *SMALL) == 0
    assert len(window_dirs(out)) == 5
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        cli("--input-video", video, "--fps", "4", "--output-dir", out, *SMALL)
    assert "whose images/ link to frames that have changed" in caplog.text
    left = sorted(out.glob("batch_*/window_*"))
    assert 0 < len(left) < 5
    for folder in left:  # every window left shows the pictures its cameras were solved for
        for name, digest in window_info(folder)["signature"]["frames"]:
            assert file_digest((folder / "images" / name).read_bytes()) == digest


# ---- 16: evaluation against ground truth that does not fit -------------------------------------

def test_ground_truth_that_names_no_frame_or_has_no_finite_pose(tmp_path, capsys):
    from pipeline.cli.evaluate import main
    from pipeline.post.ground_truth import read_ground_truth
    from tests.post.test_evaluate import NAMES, gt_poses, write_synthetic_gt, write_window

    out = tmp_path / "out"
    write_window(out, 0, NAMES[:6], gt_poses(6))
    other = write_synthetic_gt(tmp_path / "other")
    data = dict(np.load(other / "ground_truth.npz"))
    np.savez(other / "ground_truth.npz", **{**data, "names": np.array(
        [f"img{i}.jpg" for i in range(len(data["names"]))])})
    assert main(["--pred", str(out), "--gt", str(other)]) == 2
    assert "names none of the run's 6 frames" in one_error_line(capsys.readouterr().err)
    nan = write_synthetic_gt(tmp_path / "nan")
    data = dict(np.load(nan / "ground_truth.npz"))
    poses = data["cam_from_world"].copy()
    poses[:] = np.nan
    np.savez(nan / "ground_truth.npz", **{**data, "cam_from_world": poses})
    assert main(["--pred", str(out), "--gt", str(nan)]) == 2
    assert "none of its 12 poses is finite" in one_error_line(capsys.readouterr().err)
    poses = gt_poses()
    poses[2, 0, 0] = np.nan  # one frame only: skipped
    np.savez(nan / "ground_truth.npz", **{**data, "cam_from_world": poses})
    truth = read_ground_truth(nan)
    assert len(truth.names) == 11 and NAMES[2] not in truth.names
    assert main(["--pred", str(out), "--gt", str(nan)]) == 0



def test_a_disk_filled_by_converted_frames_is_named_as_full(tmp_path, capsys, monkeypatch):
    """Converting frames before any window fills the disk: one line naming the full disk (a
    usage-level error, exit 2: nothing of the windows was written), no half-written frame."""
    import errno

    source = sixteen_bit(tmp_path / "in", count=4)
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if "frames" in str(fp):
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "out"
    assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and "is full" in line
    assert not list((out / "frames").glob("*.png"))  # no half-written frame


def test_an_empty_frame_pattern_is_refused_by_name(tmp_path, capsys):
    assert cli("--input-dir", IMAGES, "--output-dir", tmp_path / "out", "--frame-pattern", "",
               *SMALL) == 2
    assert "--frame-pattern is empty" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
