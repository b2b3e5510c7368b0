"""The output folder's reading side: resume signatures, window validation, the run plan, the
output lock."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from pipeline.core.windows import Window
from pipeline.infra.lock import OutputBusyError, OutputLock
from pipeline.io.output import WindowChecks, check_window, planned_windows
from pipeline.io.signature import (
    options_signature,
    signature_difference,
    stable_hash,
    window_signature,
)
from pipeline.runner import reconstructor_options
from pipeline.runner.config import MergeOptions, PipelineConfig
from tests.helpers import fake_frame, finish_window, write_model, write_test_plan

ALTERNATIVES = {
    # a value other than the default for every field of PipelineConfig
    "output_dir": Path("other"),
    "input_dir": Path("frames"),
    "frame_pattern": "*.jpg",
    "input_video": Path("clip.mp4"),
    "input_root": Path("clips"),
    "input_list": Path("clips.txt"),
    "fps": 5.0,
    "window_size": 6,
    "window_stride": 2,
    "window_batch_size": 3,
    "max_memory_gb": 4.0,
    "reconstructor": "colmap",
    "model": "a/b",
    "device": "cpu",
    "mixed_precision": "bf16",
    "preprocess_mode": "pad",
    "process_res": 280,
    "max_res": 420,
    "cpu_offload": True,
    "use_accelerate": True,
    "profile_memory": True,
    "process_res_method": "lower_bound_crop",
    "export_format": "colmap-glb",
    "conf_thresh_percentile": 50.0,
    "num_max_points": 1000,
    "query_frame_num": 2,
    "max_query_pts": 512,
    "fine_tracking": True,
    "vis_thresh": 0.3,
    "max_reproj_error": 4.0,
    "conf_thres_value": 2.0,
    "use_ba": False,
    "allow_approximate": True,
    "save_depth": True,
    "camera_type": "PINHOLE",
    "shared_camera": True,
    "camera_params": (300.0, 160.0, 120.0),
    "frame_step": 2,
    "max_frames": 10,
    "overwrite": True,
    "skip_bad_frames": True,
    "images": "copy",
    "cpu_workers": 2,
    "engine": "ray",
    "ray_address": "auto",
    "chunk_frames": 50,
    "min_registered_fraction": 0.7,
    "min_points": 10,
    "min_frame_observations": 5,
    "fov_range": (1.0, 170.0),
    "merge": True,
    "merge_options": MergeOptions(refine=False),
    "show_progress": False,
    "verbose": True,
}

NOT_IN_OPTIONS = {
    # which frames a window holds: the window signature names them with their content hashes
    "input_dir",
    "frame_pattern",
    "input_video",
    "input_root",
    "input_list",
    "fps",
    "window_size",
    "window_stride",
    "frame_step",
    "max_frames",
    "skip_bad_frames",
    # parts of the window signature beside the options (``checks``: see the test below)
    "reconstructor",
    "images",
    "min_points",
    "min_frame_observations",
    "fov_range",
    # how the work runs, not what it makes (batched equals one at a time; offload is exact)
    "output_dir",
    "window_batch_size",
    "max_memory_gb",
    "device",
    "cpu_offload",
    "use_accelerate",
    "profile_memory",
    "overwrite",
    "cpu_workers",
    "engine",
    "ray_address",
    "merge",
    "merge_options",  # what --merge makes of the windows, not the windows
    "show_progress",
    "verbose",
}


def _signatures(config: PipelineConfig) -> dict[str, object]:
    base = {
        "colmap": config,
        "vggt": config,
        "da3": dataclasses.replace(
            config, model="acme/da3" if config.model == "facebook/VGGT-1B" else config.model
        ),
    }
    return {
        name: options_signature(reconstructor_options(dataclasses.replace(cfg, reconstructor=name)))
        for name, cfg in base.items()
    }


def test_every_option_is_in_a_signature_or_declared_not_to_change_results():
    names = {f.name for f in dataclasses.fields(PipelineConfig)}
    assert names == set(ALTERNATIVES), "give a new option an alternative value here"
    default = PipelineConfig(output_dir=Path("o"))
    before = _signatures(default)
    for name in sorted(names):
        after = _signatures(dataclasses.replace(default, **{name: ALTERNATIVES[name]}))
        changed = [r for r in before if after[r] != before[r]]
        if name in NOT_IN_OPTIONS:
            assert not changed, f"{name} changes the options of {changed}: drop it from the list"
        else:
            assert changed, (
                f"{name} reaches no reconstructor's options: pass it on, or declare "
                "why it does not change results"
            )


def test_structure_checks_are_part_of_the_window_signature():
    from pipeline.runner import window_checks

    frames = [fake_frame("a.png"), fake_frame("b.png")]
    default = PipelineConfig(output_dir=Path("o"))
    sig = window_signature(frames, "colmap", {}, "link", None, window_checks(default))
    for name in ("min_points", "min_frame_observations"):
        other = dataclasses.replace(default, **{name: ALTERNATIVES[name]})
        new = window_signature(frames, "colmap", {}, "link", None, window_checks(other))
        assert (
            signature_difference(sig, new)
            == f"option {name} ({getattr(default, name)} -> {ALTERNATIVES[name]}) changed"
        )
    other = dataclasses.replace(default, fov_range=(1.0, 170.0))
    new = window_signature(frames, "colmap", {}, "link", None, window_checks(other))
    assert signature_difference(sig, new).startswith("option fov_range")


def test_options_signature_follows_metadata_and_pycolmap_objects():
    from pipeline.reconstructors.colmap import ColmapOptions

    options = ColmapOptions(num_workers=3, num_threads=2)
    signature = options_signature(options)
    assert "num_workers" not in signature and "num_threads" not in signature
    assert "num_threads" not in signature["extraction"]
    assert signature["extraction"]["sift"]["max_num_features"] == 8192
    options.extraction.sift.max_num_features = 1024
    assert options_signature(options)["extraction"]["sift"]["max_num_features"] == 1024
    json.dumps(signature)  # plain JSON
    with pytest.raises(TypeError, match="cannot put a object into a resume signature"):
        options_signature({"x": object()})


def test_signature_difference_says_what_changed():
    frames = [fake_frame(n) for n in ("a.png", "b.png")]
    sig = window_signature(frames, "colmap", {"sfm": {"vis_thresh": 0.2}}, "link")
    assert signature_difference(sig, sig) is None
    other = [frames[0], dataclasses.replace(frames[1], digest="0" * 32)]
    assert (
        signature_difference(sig, window_signature(other, "colmap", sig["options"], "link"))
        == "frame b.png has other content now"
    )
    assert (
        signature_difference(
            sig, window_signature(frames, "colmap", {"sfm": {"vis_thresh": 0.3}}, "link")
        )
        == "option sfm.vis_thresh (0.2 -> 0.3) changed"
    )
    assert "--images link" in signature_difference(
        sig, window_signature(frames, "colmap", sig["options"], "copy")
    )
    assert (
        signature_difference({"frames": []}, sig)
        == "it was made by another version of the pipeline"
    )
    assert (
        signature_difference(sig, window_signature(frames[:1], "colmap", sig["options"], "link"))
        == "its frames are other frames"
    )


@pytest.fixture
def window(tmp_path):
    """A finished window over a.png, b.png in ``tmp_path``, and its signature."""
    win = Window(0, 0, ("a.png", "b.png"))
    write_model(tmp_path / win.relative_dir / "sparse", win.items)
    finish_window(tmp_path, win)
    sig = window_signature([fake_frame(n) for n in win.items], "test", {}, "none")
    return tmp_path / win.relative_dir, sig


def test_a_whole_window_is_trusted(window):
    folder, sig = window
    assert check_window(folder, sig) is None
    info = json.loads((folder / "window_info.json").read_text())
    assert set(info["files"]) == {
        "sparse/cameras.bin",
        "sparse/images.bin",
        "sparse/frames.bin",
        "sparse/points3D.bin",
        "sparse/rigs.bin",
    }


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda f: (f / "window_info.json").unlink(), "window_info.json is missing"),
        (lambda f: (f / "window_info.json").write_text("[1, 2]"), "not a JSON object"),
        (
            lambda f: (f / "window_info.json").write_text('{"status": "ok"}'),
            "no valid 'window_index'",
        ),
        (lambda f: (f / "sparse" / "images.bin").unlink(), "sparse/images.bin is missing"),
        (
            lambda f: (f / "sparse" / "points3D.bin").write_bytes(b"x"),
            "sparse/points3D.bin has 1 bytes",
        ),
    ],
)
def test_a_damaged_window_is_not_trusted(window, damage, reason):
    folder, sig = window
    damage(folder)
    assert reason in check_window(folder, sig)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_file_of_its_size_with_other_content_is_not_trusted(window):
    """A bit flipped on the disk, or garbage of the right length after a power loss: the
    sizes agree and the model may still load, the checksum does not."""
    folder, sig = window
    info = json.loads((folder / "window_info.json").read_text())
    assert set(info["sha256"]) == set(info["files"])
    _flip_a_byte(folder / "sparse" / "points3D.bin")
    assert check_window(folder, sig) == (
        "sparse/points3D.bin is not what was written (its SHA-256 differs)"
    )


def test_checksums_of_other_files_are_not_trusted_and_sizes_only_records_still_are(window):
    folder, sig = window
    info = json.loads((folder / "window_info.json").read_text())
    digests = info.pop("sha256")
    (folder / "window_info.json").write_text(json.dumps(info))
    assert check_window(folder, sig) is None  # a record of an older version: sizes only
    digests.pop("sparse/rigs.bin")
    (folder / "window_info.json").write_text(json.dumps({**info, "sha256": digests}))
    assert check_window(folder, sig) == "its window_info.json records checksums of other files"


def test_a_window_is_on_the_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Every file and folder of the staging folder is flushed (fsync) before the rename, and
    the parent folder after it."""
    import pipeline.infra.files as files
    import pipeline.io.window_folders as window_folders

    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_rename(src, dst)

    win = Window(0, 0, ("a.png", "b.png"))
    write_model(tmp_path / win.relative_dir / "sparse", win.items)
    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(window_folders.os, "rename", rename)
    finish_window(tmp_path, win)
    final = tmp_path / win.relative_dir
    renamed = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(final))
    staging = events[renamed][1]
    synced_before = {e[1] for e in events[:renamed] if e[0] == "fsync"}
    info = json.loads((final / "window_info.json").read_text())
    for name in [*info["files"], "window_info.json", "sparse", ""]:
        assert os.path.join(staging, name).rstrip("/") in synced_before, name
    assert ("fsync", str(final.parent)) in events[renamed:]


@pytest.mark.parametrize("focal,fov,recorded", [(0.07, "180", 179.7493), (2000.0, "1.83", 1.8333)])
def test_a_camera_of_implausible_focal_length_fails_the_checks(tmp_path, focal, fov, recorded):
    """A focal length of 0.07 px, or of 31 image widths, is a camera solved wrong."""
    import pycolmap

    write_model(tmp_path / "sparse", ["a.png", "b.png"], points=60, focal=focal)
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    assert WindowChecks().problem(rec) == (
        f"implausible camera: frame a.png has a focal length of {focal:g} px for 64x48 pixels, "
        f"a field of view of {fov} degrees (outside 5-140, --fov-range)")
    assert WindowChecks(fov_range=(1.0, 179.9)).problem(rec) is None
    assert WindowChecks(fov_range=None).problem(rec) is None
    assert WindowChecks().record(rec)["fov_deg"] == [recorded, recorded]


def test_a_record_without_the_field_of_view_checks_is_read_as_made(window):
    """Records of versions before the check: their checks, without it, still hold."""
    folder, sig = window
    info = json.loads((folder / "window_info.json").read_text())
    assert info["checks"]["fov_range"] == [5.0, 140.0] and len(info["checks"]["fov_deg"]) == 2
    for key in ("fov_range", "fov_deg"):
        del info["checks"][key]
    (folder / "window_info.json").write_text(json.dumps(info))
    assert check_window(folder, None) is None
    info["checks"]["fov_deg"] = [1.0, 2.0]  # the record edited: no longer the model's
    (folder / "window_info.json").write_text(json.dumps(info))
    assert check_window(folder, None) == (
        "its record's point or observation counts are not its model's")


def test_a_model_that_does_not_hold_its_frames_is_not_trusted(window):
    folder, sig = window
    write_model(folder / "sparse", ["a.png"])  # a model of one frame, record of two
    info = json.loads((folder / "window_info.json").read_text())
    info["files"] = info["sha256"] = {}
    (folder / "window_info.json").write_text(json.dumps(info))
    assert "does not hold the registered frames" in check_window(folder, sig)


def test_a_failed_window_or_other_signature_is_redone(window):
    folder, sig = window
    assert "option x" in check_window(folder, {**sig, "options": {"x": 1}})
    info = json.loads((folder / "window_info.json").read_text())
    (folder / "window_info.json").write_text(json.dumps({**info, "status": "failed"}))
    assert check_window(folder, sig) == "its status is 'failed'"


def test_planned_windows_use_the_plan_only(tmp_path):
    windows = [Window(i, 2 * i, (f"f{2 * i}.png", f"f{2 * i + 1}.png")) for i in range(3)]
    for win in windows:
        write_model(tmp_path / win.relative_dir / "sparse", win.items)
        finish_window(tmp_path, win)
    write_test_plan(tmp_path, windows[:2])
    planned, leftovers = planned_windows(tmp_path)
    assert [w.index for w in planned] == [0, 1]
    assert all(w.problem is None for w in planned)
    assert leftovers == [tmp_path / windows[2].relative_dir]
    write_test_plan(tmp_path, [Window(0, 0, ("f0.png", "other.png")), windows[1]])
    planned, _ = planned_windows(tmp_path)
    assert planned[0].problem == "it was not made for this run's frames and options"


def test_the_stable_hash_is_stable():
    assert stable_hash({"b": 1, "a": [1, 2]}) == stable_hash({"a": [1, 2], "b": 1})
    assert len(stable_hash({})) == 32


# ---- the lock ---------------------------------------------------------------------------------


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pipeline.infra.lock import OutputLock; "
            f"lock = OutputLock(__import__('pathlib').Path({str(tmp_path)!r})); lock.acquire(); "
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusyError, match=f"in use by another run \\(pid {holder.pid} on"):
            OutputLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(tmp_path):  # the dead holder's lock went with it
        assert (tmp_path / ".lock").is_file()
    assert not (tmp_path / ".lock").exists()


def test_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    (tmp_path / ".lock").write_text(
        json.dumps({"pid": 2**22 + 7, "host": "elsewhere", "started_at": "yesterday"})
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.infra.lock"):
        with OutputLock(tmp_path):
            held = json.loads((tmp_path / ".lock").read_text())
    assert held["pid"] == os.getpid()
    assert "left by pid 4194311 on elsewhere, started yesterday" in caplog.text
