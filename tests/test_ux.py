"""What a person running the pipeline meets: fast and right errors, honest statuses, a digest
of failures, readable logs, plots and tables."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import frames_with_blank_window, window_dirs, window_info, write_model
from tests.test_faults import IMAGES, ROOT, SMALL, cli, frames, manifest, one_error_line


def _closed_port() -> int:
    """A local TCP port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args", [("--reconstructor", "vggt"),
                                  ("--reconstructor", "da3", "--model",
                                   "depth-anything/DA3-LARGE-1.1")])
def test_explicit_network_without_weights_or_network_fails_fast(tmp_path, args):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "vae_data_pipeline_batch.py"),
                           "--input-dir", str(IMAGES), "--output-dir", str(tmp_path / "out"),
                           *args], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot be reached" in errors[0], proc.stderr
    assert "hf download" in errors[0] and "huggingface-cli" not in errors[0]
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 30, f"took {elapsed:.0f} s"


# ---- a folder that mixes kinds of images --------------------------------------------------------

def _mixed_folder(folder: Path, count: int = 8) -> Path:
    """7-Scenes style: colour frames beside 16-bit depth maps of the same names."""
    folder.mkdir()
    for i, path in enumerate(sorted(IMAGES.iterdir())[:count]):
        with Image.open(path) as img:
            img.save(folder / f"frame-{i:06d}.color.png")
            depth = np.full((img.height, img.width), 1000 + i, np.uint16)
        Image.fromarray(depth).save(folder / f"frame-{i:06d}.depth.png")
    return folder


def test_mixed_folder_is_refused_before_any_work(tmp_path, capsys):
    folder = _mixed_folder(tmp_path / "scene")
    out = tmp_path / "out"
    assert cli("--input-dir", folder, "--output-dir", out, *SMALL) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "mixes kinds of images: 8 colour (e.g. frame-000000.color.png), 8 single-channel " \
           "16-bit (e.g. frame-000000.depth.png)" in line
    assert "--frame-pattern '*.color.png'" in line
    assert not list(out.glob("batch_*"))
    assert cli("--input-dir", folder, "--output-dir", out, *SMALL,
               "--frame-pattern", "*.color.png") == 0


def test_a_grey_frame_named_like_the_others_is_only_a_warning(tmp_path, caplog):
    from pipeline.io.frames import check_one_kind

    folder = frames(tmp_path / "in", count=4)
    dark = sorted(folder.iterdir())[2]
    with Image.open(dark) as img:
        img.convert("L").save(dark)  # some encoders write a dark frame in grey
    with caplog.at_level(logging.WARNING, logger="pipeline.io.frames"):
        check_one_kind(sorted(folder.iterdir()))
    assert f"3 colour (e.g. {sorted(folder.iterdir())[0].name}), 1 grey 8-bit" in caplog.text


def test_one_kind_under_two_name_patterns_is_only_a_warning(tmp_path, caplog):
    from pipeline.io.frames import check_one_kind

    folder = tmp_path / "two_cameras"
    folder.mkdir()
    for i, path in enumerate(sorted(IMAGES.iterdir())[:8]):
        shutil.copy(path, folder / f"{'left' if i % 2 else 'right'}_{i:04d}.png")
    with caplog.at_level(logging.WARNING, logger="pipeline.io.frames"):
        check_one_kind(sorted(folder.iterdir()))
    assert "2 name patterns (4 like left_#.png, 4 like right_#.png)" in caplog.text


# ---- honest statuses and the digest ------------------------------------------------------------

def test_structure_checks_decide_ok(tmp_path):
    import pycolmap

    from pipeline.io.output import WindowChecks

    write_model(tmp_path / "few", ["a.png", "b.png"], points=10)
    write_model(tmp_path / "enough", ["a.png", "b.png"], points=64)
    checks = WindowChecks(min_points=50, min_frame_observations=20)
    assert checks.problem(pycolmap.Reconstruction(tmp_path / "few")) == \
        "too little structure: 10 3D points (need 50, --min-points)"
    assert checks.problem(pycolmap.Reconstruction(tmp_path / "enough")) is None
    strict = WindowChecks(min_points=50, min_frame_observations=100)
    assert strict.problem(pycolmap.Reconstruction(tmp_path / "enough")) == \
        "too little structure: frame a.png sees 64 3D points (need 100, --min-frame-observations)"


def test_windows_without_real_structure_fail_and_are_digested(tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--input-dir", frames(tmp_path / "in"), "--output-dir", out, *SMALL)
    assert cli(*args) == 0
    info = window_info(window_dirs(out)[0])
    assert info["checks"]["min_points"] == 50 and info["checks"]["num_points3D"] >= 50
    capsys.readouterr()
    assert cli(*args, "--min-points", "100000") == 1  # the bar changed: redone, and failed
    captured = capsys.readouterr()
    infos = [window_info(w) for w in window_dirs(out)]
    assert {i["status"] for i in infos} == {"failed"}
    assert all(i["error"].startswith("too little structure: ") for i in infos)
    digest = manifest(out)["digest"]
    assert [(d["cause"], d["count"], d["windows"]) for d in digest] == \
        [("too little structure", 3, [0, 1, 2])]
    assert "  3 windows: too little structure (windows 0, 1, 2); " in captured.out
    assert captured.err.count("failed: too little structure") == 1  # not once per window


def test_digest_groups_by_cause_and_names_the_first_windows():
    from pipeline.core.failures import failure_digest

    records = [{"window_index": i, "status": "failed",
                "error": f"only {i % 3} of 8 frames registered (need 4)"} for i in range(7)]
    records += [{"window_index": 7, "status": "ok", "error": None},
                {"window_index": 8, "status": "failed", "error": "RuntimeError: cannot open "
                 "'frame_8.png'"},
                {"window_index": 9, "status": "failed", "error": "RuntimeError: cannot open "
                 "'frame_9.png'"}]
    entries = failure_digest(records)
    assert [(e.cause, e.count, e.windows) for e in entries] == [
        ("too few frames registered", 7, [0, 1, 2, 3, 4]),
        ("RuntimeError: cannot open '…'", 2, [8, 9])]
    assert entries[0].line().startswith("7 windows: too few frames registered (windows 0, 1, "
                                        "2, 3, 4, ...); some frames did not join the model")
    assert entries[1].line() == ("2 windows: RuntimeError: cannot open '…' (windows 8, 9): "
                                 "RuntimeError: cannot open 'frame_8.png'")


def test_one_window_is_one_window():
    from pipeline.runner import RunSummary

    summary = RunSummary(output_dir=Path("o"), num_frames=1,
                         windows=[{"status": "ok", "skipped": False}])
    assert summary.line().startswith("1 window: 1 ok, 0 failed") and "| 1 frame |" in \
        summary.line()


# ---- logs and --help ---------------------------------------------------------------------------

def test_verbose_shows_the_pipelines_debug_log_not_other_libraries():
    from pipeline.cli.main import configure_logging

    root, saved = logging.getLogger(), logging.getLogger().handlers[:]
    levels = {name: logging.getLogger(name).level for name in ("pipeline", "PIL")}
    try:
        configure_logging(verbose=True, quiet=False)
        assert logging.getLogger("pipeline.runner").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.WARNING)
        configure_logging(verbose=False, quiet=False)
        assert logging.getLogger("pipeline.runner").isEnabledFor(logging.INFO)
        assert not logging.getLogger("pipeline.runner").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:] = saved
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_colmap_errors_stay_out_of_the_log_without_verbose(tmp_path):
    folder = frames_with_blank_window(IMAGES, tmp_path / "in", count=8, blank=range(0, 4))
    proc = subprocess.run([sys.executable, str(ROOT / "vae_data_pipeline_batch.py"),
                           "--input-dir", str(folder), "--output-dir", str(tmp_path / "out"),
                           *SMALL, "--chunk-frames", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "window 0 failed" in proc.stderr
    assert not re.search(r"^[EWI]\d{8} ", proc.stderr, re.M), proc.stderr  # glog's raw lines


def test_help_imports_no_heavy_module():
    """Every reconstructor's flags are read from its module, which imports torch, OpenCV and
    the models only where it uses them (pycolmap and scipy, 0.4 s, are imported)."""
    code = ("import sys; from pipeline.cli.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'cv2', 'matplotlib', 'safetensors') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_help_groups_the_input_flags():
    from pipeline.cli.main import build_parser

    groups = {g.title: [a.option_strings[0] for a in g._group_actions]
              for g in build_parser()._action_groups}
    assert {"--frame-pattern", "--frame-step", "--max-frames", "--fps"} <= set(groups["input"])
    assert {"--model", "--use-ba"} <= set(groups["vggt and da3"])
    assert {"--max-query-pts", "--vis-thresh"} <= set(groups["vggt"])
    assert {"--export-format"} <= set(groups["da3"])
    assert {"--camera-params", "--chunk-frames"} <= set(groups["colmap"])
    assert "--device" in groups["memory, devices and workers"]


# ---- progress inside a batch -------------------------------------------------------------------

def test_progress_names_the_stage_and_window(tmp_path):
    from pipeline.core.windows import create_windows
    from pipeline.io.frames import list_image_files, prepare_frames
    from pipeline.runner import build_reconstructor, process_window_batch
    from pipeline.runner.config import PipelineConfig

    config = PipelineConfig(output_dir=tmp_path / "out", input_dir=IMAGES,
                            reconstructor="colmap", window_size=4, window_stride=4)
    framed = prepare_frames(list_image_files(IMAGES)[:8], tmp_path / "cache",
                            show_progress=False)
    seen: list[str] = []
    with build_reconstructor(config) as reconstructor:
        reconstructor.progress = seen.append
        process_window_batch(create_windows(framed, 4, 4), 0, config,
                             reconstructor=reconstructor)
    counts = [s for s in seen if s.startswith("building the feature store: ")]
    assert all(re.fullmatch(r"building the feature store: (features \d+/8|matching \d+/\d+ "
                            r"pairs)", s) for s in counts), counts
    mapped = [s for s in seen if s.startswith("mapping chunk 1/1 (frames 0-7): ")]
    assert mapped in ([], ["mapping chunk 1/1 (frames 0-7): 0/1 mapped"]), mapped
    seen = [s for s in seen if s not in counts + mapped]  # how far, when it was asked
    assert seen[:2] == ["building the feature store", "mapping chunk 1/1 (frames 0-7)"]
    assert seen[2:] == ["export, window 0", "export, window 1"]


def test_progress_counts_the_chunks_mapped(tmp_path):
    """With several chunks the bar says which chunk is awaited and how many are mapped."""
    from pipeline.core.windows import create_windows
    from pipeline.io.frames import list_image_files, prepare_frames
    from pipeline.runner import build_reconstructor, process_window_batch
    from pipeline.runner.config import PipelineConfig

    config = PipelineConfig(output_dir=tmp_path / "out", input_dir=IMAGES,
                            reconstructor="colmap", window_size=4, window_stride=4,
                            chunk_frames=8, cpu_workers=1)
    framed = prepare_frames(list_image_files(IMAGES)[:16], tmp_path / "cache",
                            show_progress=False)
    windows = create_windows(framed, 4, 4)
    seen: list[str] = []
    with build_reconstructor(config) as reconstructor:
        reconstructor.progress = seen.append
        reconstructor.plan_sequence(framed, windows, tmp_path / "out")
        process_window_batch(windows, 0, config, reconstructor=reconstructor)
    awaited = list(dict.fromkeys(s.split(" (")[0] for s in seen
                                 if s.startswith("mapping chunk ")))
    total = int(awaited[0].split("/")[1])
    assert total >= 2 and awaited[0] == f"mapping chunk 1/{total}", seen
    # a chunk is named while it is awaited: one its worker finished before is not
    numbers = [int(a.split()[2].split("/")[0]) for a in awaited]
    assert numbers == sorted(numbers) and set(numbers) <= set(range(1, total + 1)), seen
    counts = [int(s.rsplit(": ", 1)[1].split("/")[0]) for s in seen
              if s.startswith("mapping chunk ") and s.endswith(" mapped")]
    assert counts == sorted(counts) and all(0 <= c < total for c in counts), seen


# ---- timestamps --------------------------------------------------------------------------------

def test_trajectory_timestamps_are_input_indices(tmp_path):
    out = tmp_path / "out"
    assert cli("--input-dir", IMAGES, "--output-dir", out, *SMALL, "--max-frames", "8",
               "--frame-step", "2", "--window-stride", "1", "--merge") == 0
    lines = (out / "merged" / "trajectory.txt").read_text().splitlines()
    assert lines[0].endswith("timestamp = index of the frame in the input folder)")
    assert [int(line.split()[0]) for line in lines[1:]] == [0, 2, 4, 6, 8, 10, 12, 14]
    with Image.open(out / "merged" / "trajectory.png") as img:
        assert img.text["Axes"] == ("x: main direction (scene units); y: second direction "
                                    "(scene units)")
        assert img.text["Legend"] == "estimated, start, end"


def test_structure_thresholds_are_checked_in_the_library_too(tmp_path):
    from pipeline.core.errors import InputError
    from pipeline.runner import run
    from pipeline.runner.config import PipelineConfig

    with pytest.raises(InputError,
                       match="--min-points must be a whole number from 0 to 1000000, got -1"):
        run(PipelineConfig(input_dir=IMAGES, output_dir=tmp_path / "o", min_points=-1))
    assert not (tmp_path / "o").exists()


def test_throughput_of_a_cpu_run_is_recorded_and_printed(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("--input-dir", frames(tmp_path / "in"), "--output-dir", out, *SMALL,
               "--profile-memory") == 0
    busy = manifest(out)["throughput"]
    assert busy["windows"] == 3 and busy["windows_per_s"] > 0 and busy["cpu_busy_s"] > 0
    assert "device_busy_s" not in busy  # colmap has no device stage
    assert busy["cpu_workers"] >= 1 and "main_busy_s" in busy and "finish_busy_s" in busy
    printed = capsys.readouterr().out
    assert "3 windows in " in printed and "main process busy" in printed


def test_the_progress_clock_moves_between_windows():
    """Long stages (a sequence's feature store) pass no window: the bar is redrawn anyway,
    so its elapsed time moves, and the redrawing stops with the bar."""
    import io
    import threading

    from tqdm import tqdm

    from pipeline.runner import keep_redrawing

    bar = tqdm(total=3, file=io.StringIO(), disable=False)
    redraws = []
    bar.refresh = lambda *args, **kwargs: redraws.append(bar.n)
    stop = threading.Event()
    clock = threading.Thread(target=keep_redrawing, args=(bar, stop, 0.02))
    clock.start()
    time.sleep(0.3)  # no update at all meanwhile
    stop.set()
    clock.join(timeout=5)
    assert not clock.is_alive() and len(redraws) >= 2 and set(redraws) == {0}
    bar.close()
