"""Fault injection: stale inputs, damaged windows, concurrent runs, signals, a full disk and bad
values. Every case checks the exit code, the one ``error:`` line, ``run.json`` and what is on
disk, as a user meets them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import IMAGES, ROOT
from pipeline.cli.main import main
from pipeline.io.output import check_window, read_window_info
from tests.helpers import window_dirs, window_info, write_video

SMALL = ("--window-size", "4", "--window-stride", "2", "--reconstructor", "colmap")
"""8 frames -> 3 overlapping windows of 4 (about a second each)."""


def frames(folder: Path, count: int = 8, flip: bool = False) -> Path:
    """The first ``count`` testdata frames under their own names; ``flip``: other pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(IMAGES.iterdir())[:count]:
        with Image.open(path) as img:
            (img.transpose(Image.FLIP_LEFT_RIGHT) if flip else img).save(folder / path.name)
    return folder


def cli(*args: object) -> int:
    """The command's exit status (argparse's own errors exit through ``SystemExit``)."""
    try:
        return main([*map(str, args), "-q"])
    except SystemExit as exc:
        return exc.code


def manifest(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def pipeline_cmd(*args: object) -> list[str]:
    return [sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), *map(str, args), "-q"]


def children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def assert_trustworthy(out: Path) -> None:
    """No staging left, and every window recorded as ok is whole."""
    assert list(out.glob("batch_*/.*")) == []
    for window in window_dirs(out):
        info = read_window_info(window)
        if info and info.get("status") == "ok":
            assert check_window(window) is None, window


# ---- resume never reuses a stale window -------------------------------------------------------

@pytest.mark.slow
def test_same_names_other_pixels_are_redone(tmp_path, caplog):
    out = tmp_path / "out"
    assert cli("--input-dir", frames(tmp_path / "a"), "--output-dir", out, *SMALL) == 0
    with caplog.at_level(logging.INFO, logger="pipeline.runner"):
        assert cli("--input-dir", frames(tmp_path / "b", flip=True), "--output-dir", out,
                   *SMALL) == 0
    assert manifest(out)["summary"]["skipped"] == 0
    assert "has other content now" in caplog.text
    flipped = window_info(window_dirs(out)[0])["signature"]["frames"]
    assert cli("--input-dir", tmp_path / "b", "--output-dir", out, *SMALL) == 0
    assert manifest(out)["summary"]["skipped"] == 3  # now they are the same pixels
    assert window_info(window_dirs(out)[0])["signature"]["frames"] == flipped


@pytest.mark.slow
def test_result_options_count_and_others_do_not(tmp_path, caplog):
    out = tmp_path / "out"
    source = frames(tmp_path / "a")
    assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    assert cli("--input-dir", source, "--output-dir", out, *SMALL, "--window-batch-size", "1",
               "--cpu-workers", "1") == 0
    assert manifest(out)["summary"]["skipped"] == 3
    with caplog.at_level(logging.INFO, logger="pipeline.runner"):
        assert cli("--input-dir", source, "--output-dir", out, *SMALL,
                   "--min-registered", "0.75") == 0
    assert manifest(out)["summary"]["skipped"] == 0
    assert "option min_registered_fraction (0.5 -> 0.75) changed" in caplog.text


@pytest.mark.slow
def test_other_fps_of_a_video_redoes_the_windows(tmp_path):
    pytest.importorskip("av")
    video = write_video(tmp_path / "clip.mp4", sorted(IMAGES.iterdir()))
    out = tmp_path / "out"
    assert cli("--input-video", video, "--fps", "12", "--output-dir", out, *SMALL) == 0
    first = window_info(window_dirs(out)[0])["signature"]["frames"]
    assert cli("--input-video", video, "--fps", "8", "--output-dir", out, *SMALL) == 0
    assert manifest(out)["summary"]["skipped"] == 0
    assert window_info(window_dirs(out)[0])["signature"]["frames"] != first
    assert_trustworthy(out)


@pytest.mark.slow
def test_shrunk_input_leaves_folders_that_merge_ignores(tmp_path):
    out = tmp_path / "out"
    source = frames(tmp_path / "a", count=12)
    args = ("--window-size", "6", "--window-stride", "3", "--reconstructor", "colmap")
    assert cli("--input-dir", source, "--output-dir", out, *args) == 0
    assert len(window_dirs(out)) == 3
    for path in sorted(source.iterdir())[9:]:
        path.unlink()
    assert cli("--input-dir", source, "--output-dir", out, *args, "--merge") == 0
    report = json.loads((out / "merged" / "merge.json").read_text())
    assert report["ignored_folders"] == ["batch_000/window_002"]
    assert [s["windows"] for s in report["segments"]] == [[0, 1]]
    assert report["segments"][0]["frames"] == 9


@pytest.mark.slow
def test_damaged_windows_are_redone_and_never_merged(tmp_path, caplog, capsys):
    from pipeline.cli.merge import main as merge_main

    out = tmp_path / "out"
    source = frames(tmp_path / "a")
    assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    first, second, third = window_dirs(out)
    (first / "sparse" / "images.bin").unlink()
    (second / "window_info.json").write_text("[1, 2]")
    assert merge_main([str(out)]) == 0  # merges what is whole, reports the rest
    report = json.loads((out / "merged" / "merge.json").read_text())
    errors = {w["window"]: w["error"] for w in report["failed_windows"]}
    assert errors[0] == "sparse/images.bin is missing"
    assert "not a JSON object" in errors[1]
    assert [s["windows"] for s in report["segments"]] == [[2]]
    with caplog.at_level(logging.INFO, logger="pipeline.runner"):
        assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    assert "redoing window 0: sparse/images.bin is missing" in caplog.text
    assert "redoing window 1: its window_info.json is missing, unreadable or not a JSON" \
        in caplog.text
    assert [w["skipped"] for w in manifest(out)["windows"]] == [False, False, True]
    assert_trustworthy(out)


def test_moved_input_folder_relinks_reused_windows(tmp_path):
    out = tmp_path / "out"
    source = frames(tmp_path / "a", count=4)
    assert cli("--input-dir", source, "--output-dir", out, "--window-size", "4",
               "--reconstructor", "colmap") == 0
    moved = source.rename(tmp_path / "moved")
    assert cli("--input-dir", moved, "--output-dir", out, "--window-size", "4",
               "--reconstructor", "colmap") == 0
    assert manifest(out)["summary"]["skipped"] == 1
    for link in (window_dirs(out)[0] / "images").iterdir():
        assert link.resolve().parent == moved.resolve()


# ---- one run at a time ------------------------------------------------------------------------

@pytest.mark.slow
def test_second_run_into_a_busy_folder_exits_2_at_once(tmp_path, capsys):
    out = tmp_path / "out"
    source = frames(tmp_path / "a", count=16)
    first = subprocess.Popen(pipeline_cmd("--input-dir", source, "--output-dir", out, *SMALL))
    try:
        assert wait_for(lambda: (out / ".lock").is_file() and (out / ".lock").read_text())
        start = time.monotonic()
        assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 2
        assert time.monotonic() - start < 10
        line = one_error_line(capsys.readouterr().err)
        assert f"in use by another run (pid {first.pid} on " in line
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert first.returncode == 143


def test_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": "h", "started_at": "t"}))
    with caplog.at_level(logging.WARNING, logger="pipeline.infra.lock"):
        assert cli("--input-dir", frames(tmp_path / "a", count=4), "--output-dir", out,
                   "--window-size", "4", "--reconstructor", "colmap") == 0
    assert f"left by pid {dead.pid} on h" in caplog.text
    assert not (out / ".lock").exists()


# ---- signals ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_leaves_no_worker_behind(tmp_path):
    out = tmp_path / "out"
    source = frames(tmp_path / "a", count=16)
    proc = subprocess.Popen(pipeline_cmd("--input-dir", source, "--output-dir", out, *SMALL,
                                         "--window-batch-size", "2", "--cpu-workers", "2"))
    assert wait_for(lambda: len(children(proc.pid)) >= 2 and list(out.glob("batch_*/.window_*")))
    workers = children(proc.pid)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: not any(alive(p) for p in workers), timeout=10), workers
    assert manifest(out)["status"] == "running"  # kill -9 leaves no chance to say more
    assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    assert_trustworthy(out)


@pytest.mark.slow
def test_sigterm_behaves_like_ctrl_c(tmp_path):
    out = tmp_path / "out"
    source = frames(tmp_path / "a", count=16)
    proc = subprocess.Popen(pipeline_cmd("--input-dir", source, "--output-dir", out, *SMALL,
                                         "--window-batch-size", "2", "--cpu-workers", "2"),
                            stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: list(out.glob("batch_*/.window_*")) and children(proc.pid))
    workers = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "rerun the same command" in err and "Traceback" not in err
    assert manifest(out)["status"] == "interrupted"
    assert wait_for(lambda: not any(alive(p) for p in workers), timeout=10)
    assert_trustworthy(out)
    assert not (out / ".lock").exists()


HANGING_STOP = """
import sys, time
from pipeline.cli.main import terminate_as_interrupt
with terminate_as_interrupt(grace={grace}):
    try:
        print("ready", flush=True)
        time.sleep(60)
    finally:
        time.sleep(60)  # a clean stop that never ends (a signal inside a critical section)
"""


@pytest.mark.parametrize("signals,grace", [(1, 1.0), (2, 60.0)])
def test_a_stop_that_hangs_still_ends_the_process(signals, grace):
    proc = subprocess.Popen([sys.executable, "-c", HANGING_STOP.format(grace=grace)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    for _ in range(signals):  # a second SIGTERM: stop now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert time.monotonic() - start < grace + 10
    if signals == 1:
        assert "did not stop within 1 s of SIGTERM" in err


# ---- a full disk ------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (skipped where this machine does not let the tests mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_stops_cleanly_and_a_rerun_finishes(tmp_path, small_disk):
    out = small_disk / "out"
    source = frames(tmp_path / "a", count=12)
    done = subprocess.run(pipeline_cmd("--input-dir", source, "--output-dir", out, *SMALL),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode in (1, 2), done.stderr
    line = one_error_line(done.stderr)
    assert "No space left on device" in line and str(small_disk) in line
    if (out / "run.json").exists():
        assert manifest(out)["status"] != "running"
    assert_trustworthy(out)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert cli("--input-dir", source, "--output-dir", out, *SMALL) == 0
    assert manifest(out)["summary"]["ok"] == 5
    assert_trustworthy(out)


# ---- every bad value: exit 2 and one line ----------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Broken checkpoints, and a sound tiny VGGT folder."""
    import torch
    from safetensors.torch import save_file

    from pipeline.algo.models import (
        VGGTConfig,
        build_model,
        load_rule_weights_,
        read_state_dict,
        save_pretrained,
    )

    root = tmp_path_factory.mktemp("ckpt")
    (root / "garbage.safetensors").write_bytes(os.urandom(4096))
    (root / "empty.safetensors").write_bytes(b"")
    (root / "garbage.pt").write_bytes(b"not a pickle at all")
    tiny = root / "tiny"
    save_pretrained(load_rule_weights_(build_model(VGGTConfig.tiny(), device="meta")), tiny)
    partial = root / "partial"
    shutil.copytree(tiny, partial)
    state = read_state_dict(partial / "model.safetensors")
    save_file({k: v for i, (k, v) in enumerate(state.items()) if i % 7}, partial /
              "model.safetensors")
    torch.save({"weights": [1, 2, 3]}, root / "notensors.pt")
    return root


BAD_MODEL = [("garbage.safetensors", "cannot read checkpoint"),
             ("empty.safetensors", "cannot read checkpoint"),
             ("garbage.pt", "cannot read checkpoint"),
             ("notensors.pt", "does not hold a state dict of tensors"),
             ("partial", "does not fit the vggt network")]


@pytest.mark.parametrize("name,message", BAD_MODEL)
def test_bad_checkpoints(tmp_path, capsys, checkpoints, name, message):
    code = cli("--input-dir", IMAGES, "--output-dir", tmp_path / "out", "--reconstructor",
               "vggt", "--model", checkpoints / name)
    assert code == 2
    assert message in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("device,message", [("gpu7", "is not a device"),
                                            ("cuda", "no CUDA device"),
                                            ("cuda:3", "CUDA device")])
def test_bad_devices(tmp_path, capsys, checkpoints, device, message):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = cli("--input-dir", IMAGES, "--output-dir", tmp_path / "out", "--reconstructor",
               "vggt", "--model", checkpoints / "tiny", "--device", device)
    assert code == 2
    assert message in one_error_line(capsys.readouterr().err)


BAD_VALUES = [
    (("--min-registered", "2"), "--min-registered must be a finite number between 0 and 1"),
    (("--min-registered", "nan"), "--min-registered: must be a finite number"),
    (("--camera-params", "nan,160,120"), "expected finite numbers"),
    (("--camera-params", "inf,160,120"), "expected finite numbers"),
    (("--camera-params", "0,0,0"), "the focal length f must be positive"),
    (("--camera-params=-300,160,120",), "the focal length f must be positive"),
    (("--camera-params", "300,-1,120"), "principal point cx must not be negative"),
    (("--camera-params", "300,160"), "needs 3 values"),
    (("--window-batch-size", "abc"), "argument --window-batch-size: must be a positive integer "
                                     "or auto, got 'abc'"),
    (("--window-size", "x"), "argument --window-size: must be a positive integer"),
    (("--vis-thresh", "nan"), "argument --vis-thresh: must be a finite number"),
]


@pytest.mark.parametrize("args,message", BAD_VALUES)
def test_bad_values(tmp_path, capsys, args, message):
    assert cli("--input-dir", IMAGES, "--output-dir", tmp_path / "out", *args) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fps", ["nan", "inf", "0", "-2"])
def test_bad_fps(tmp_path, capsys, fps):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert cli("--input-video", video, "--fps", fps, "--output-dir", tmp_path / "out") == 2
    assert "--fps" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("params,message", [
    ("300,500,120", "principal point cx=500 lies outside the 320x240 frames"),
    ("300,160,300", "principal point cy=300 lies outside the 320x240 frames"),
])
def test_principal_point_outside_the_frames(tmp_path, capsys, params, message):
    out = tmp_path / "new" / "out"
    assert cli("--input-dir", IMAGES, "--output-dir", out, "--reconstructor", "colmap",
               "--camera-params", params) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()  # refused before any work: nothing left behind


def test_bad_input_leaves_no_new_folder_and_keeps_an_old_one(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    assert cli("--input-dir", tmp_path / "missing", "--output-dir", out) == 2
    assert "input folder does not exist" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "a").exists()
    (tmp_path / "mine").mkdir()
    assert cli("--input-dir", tmp_path / "missing", "--output-dir", tmp_path / "mine") == 2
    assert (tmp_path / "mine").is_dir()  # the user's own folder stays, empty as it was


@pytest.mark.parametrize("name,text", [
    ("run.json", '{"experiment": "mine", "lr": 0.1}'),  # another tool's record
    ("plan.json", "my plan for the week\n"),  # not JSON at all
    ("run.json", "[1, 2]"),
])
def test_a_users_file_of_a_records_name_is_never_replaced(tmp_path, capsys, name, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(text)
    assert cli("--input-dir", IMAGES, "--output-dir", out, "--reconstructor", "colmap") == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{out / name} exists and no run of this pipeline wrote it" in line
    assert (out / name).read_text() == text
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing written beside it


def test_a_users_dataset_record_is_never_replaced(tmp_path, capsys):
    root, out = tmp_path / "root", tmp_path / "out"
    shutil.copytree(IMAGES, root / "a")
    out.mkdir()
    (out / "index.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    assert cli("--input-root", root, "--output-dir", out, "--reconstructor", "colmap") == 2
    assert "index.jsonl exists and no run of this pipeline wrote it" in one_error_line(
        capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["index.jsonl"]


def test_runs_over_one_and_over_many_sequences_never_share_a_folder(tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(IMAGES, root / "a")
    many, one = tmp_path / "many", tmp_path / "one"
    args = ("--reconstructor", "colmap", "--max-frames", "8", "-q")
    assert cli("--input-root", root, "--output-dir", many, *args) == 0
    assert cli("--input-dir", IMAGES, "--output-dir", many, *args) == 2
    assert "holds a run over many sequences (dataset.json)" in one_error_line(
        capsys.readouterr().err)
    assert not (many / "run.json").exists()
    assert cli("--input-dir", IMAGES, "--output-dir", many / "a", *args) == 0  # its sequence
    assert cli("--input-dir", IMAGES, "--output-dir", one, *args) == 0
    assert cli("--input-root", root, "--output-dir", one, *args) == 2
    assert "holds a run over one sequence (plan.json)" in one_error_line(capsys.readouterr().err)
    assert not (one / "dataset.json").exists()


def test_video_path_that_is_a_folder(tmp_path, capsys):
    assert cli("--input-video", IMAGES, "--output-dir", tmp_path / "out") == 2
    assert "input video is a folder" in one_error_line(capsys.readouterr().err)


def test_output_dir_empty_or_under_a_file(tmp_path, capsys):
    assert cli("--input-dir", IMAGES, "--output-dir", "") == 2
    assert "--output-dir: must name a folder" in one_error_line(capsys.readouterr().err)
    (tmp_path / "file").write_text("x")
    assert cli("--input-dir", IMAGES, "--output-dir", tmp_path / "file" / "out") == 2
    assert "cannot create output folder" in one_error_line(capsys.readouterr().err)


def _make_unwritable(folder: Path) -> str:
    """Make ``folder`` unwritable for this process: chmod, or (as root) the immutable flag."""
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return "chmod"
    folder.chmod(0o755)
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot make a folder unwritable here (root without chattr +i)")
    return "chattr"


def test_unwritable_output_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    how = _make_unwritable(out)
    try:
        assert cli("--input-dir", IMAGES, "--output-dir", out) == 2
        assert "cannot write into output folder" in one_error_line(capsys.readouterr().err)
    finally:
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(out)], check=True)
        out.chmod(0o755)


def test_bad_value_in_a_subprocess_prints_one_line_only(tmp_path):
    done = subprocess.run(pipeline_cmd("--input-dir", IMAGES, "--output-dir", tmp_path / "out",
                                       "--camera-params", "0,0,0"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    one_error_line(done.stderr)
    assert done.stdout == ""


def mixed_sizes(folder: Path, count: int = 8, odd: tuple[int, ...] = (5,)) -> Path:
    """``count`` testdata frames; those at the positions ``odd`` saved at 256x192 instead."""
    folder.mkdir(parents=True)
    for i, path in enumerate(sorted(IMAGES.iterdir())[:count]):
        with Image.open(path) as img:
            (img.resize((256, 192)) if i in odd else img).save(folder / path.name)
    return folder


def test_frames_of_several_sizes_are_refused_by_a_network_before_its_model_loads(
        tmp_path, capsys):
    folder = mixed_sizes(tmp_path / "mixed")
    missing = tmp_path / "no-such-checkpoint.safetensors"  # never opened: refused before
    assert cli("--input-dir", folder, "--output-dir", tmp_path / "out", "--reconstructor",
               "vggt", "--model", missing) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "frames differ in size: 320x240 (7 frames), 256x192 (1 frame)" in line
    assert "'frame_005.png'" in line and "--skip-bad-frames" in line


def test_skip_bad_frames_drops_the_frames_of_a_rarer_size(tmp_path, tiny_vggt_checkpoint,
                                                          caplog):
    folder = mixed_sizes(tmp_path / "mixed")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert cli("--input-dir", folder, "--output-dir", out, "--reconstructor", "vggt",
                   "--model", tiny_vggt_checkpoint, "--window-size", "4", "--window-stride",
                   "3", "--max-query-pts", "32", "--min-points", "0",
                   "--min-frame-observations", "0", "--skip-bad-frames", "--process-res",
                   "112") == 0
    assert any("dropping 1 frame of other sizes than 320x240" in r.getMessage()
               for r in caplog.records)
    frames_used = [f for d in window_dirs(out) for f in window_info(d)["frames"]]
    assert "frame_005.png" not in frames_used and len(set(frames_used)) == 7


def test_colmap_records_each_frame_size_of_a_mixed_window(tmp_path):
    from pipeline.io.dataset import WindowDataset

    folder = mixed_sizes(tmp_path / "mixed", count=6, odd=(2,))
    out = tmp_path / "out"
    assert cli("--input-dir", folder, "--output-dir", out, *SMALL) == 0
    infos = [window_info(d) for d in window_dirs(out)]
    assert all(info["image_size"] == [320, 240] for info in infos)  # never null
    mixed = infos[0]
    assert mixed["image_sizes"][2] == [256, 192] and mixed["image_sizes"][0] == [320, 240]
    calibration = manifest(out)["calibration"]
    assert [(c["width"], c["height"]) for c in calibration["cameras"]] == [(320, 240), (256, 192)]
    item = WindowDataset(out)[0]  # a mixed window's frames come at its image_size
    assert item["images"].shape[1:] == (240, 320, 3)
