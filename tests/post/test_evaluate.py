"""Tests of pipeline.post.evaluate: ground-truth readers, window/merged readers, report, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from conftest import ROOT
from pipeline.cli.evaluate import main
from pipeline.core.errors import InputError
from pipeline.core.geometry import Sim3, camera_centers, invert_pose, rotmat_to_quat_xyzw
from pipeline.core.windows import Window
from pipeline.io.output import read_window_poses
from pipeline.post.evaluate import EvaluateOptions, evaluate_output, format_report, match_names
from pipeline.post.ground_truth import load_ground_truth_poses, read_ground_truth
from tests.helpers import finish_window, write_model, write_test_plan

REPO = ROOT
SEVEN_SCENES = Path("/work/shared/data/real/7scenes_redkitchen_000_199")
N = 12
NAMES = [f"frame_{i:03d}.png" for i in range(N)]
S_A = Sim3(scale=0.4, rotation=Rotation.from_euler("xyz", [10, 70, -30], degrees=True).as_matrix(),
           translation=np.array([3.0, 0.5, -1.0]))
S_B = Sim3(scale=3.0, rotation=Rotation.from_euler("xyz", [-80, 5, 120], degrees=True).as_matrix(),
           translation=np.array([-2.0, 1.0, 4.0]))


def gt_poses(n: int = N) -> np.ndarray:
    """(n, 3, 4) camera-from-world poses on an arc of radius 2, all looking at the origin."""
    poses = []
    for a in np.linspace(0.0, 1.5, n):
        c = np.array([2 * np.cos(a), 2 * np.sin(a), 0.3 + 0.2 * a])
        z = -c / np.linalg.norm(c)
        x = np.cross(z, [0.0, 0.0, 1.0])
        x /= np.linalg.norm(x)
        rot = np.stack([x, np.cross(z, x), z])  # rows: camera axes in world coordinates
        poses.append(np.c_[rot, -rot @ c])
    return np.stack(poses)


def write_window(out: Path, index: int, names, poses=None, status: str = "ok",
                 windows: list | None = None) -> Path:
    """A finished window (as the pipeline records it) over frame ``names``; with ``windows``,
    the window is appended to that list and the output's plan rewritten to hold them all."""
    window = Window(index, 0, tuple(names))
    wdir = out / window.relative_dir
    wdir.mkdir(parents=True)
    if poses is not None:
        write_model(wdir / "sparse", names, poses)
    finish_window(out, window, status=status, error="too few matches",
                  registered=list(names) if poses is not None else [])
    windows = [] if windows is None else windows
    windows.append(window)
    write_test_plan(out, windows)
    return wdir


def write_tum(path: Path, cam_from_world: np.ndarray, stamps=None) -> None:
    world_from_cam = invert_pose(cam_from_world)
    quats = rotmat_to_quat_xyzw(world_from_cam[:, :, :3])
    stamps = range(len(quats)) if stamps is None else stamps
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    lines += [f"{s} " + " ".join(f"{v:.17g}" for v in (*p[:, 3], *q))
              for s, p, q in zip(stamps, world_from_cam, quats)]
    path.write_text("\n".join(lines) + "\n")


def write_synthetic_gt(folder: Path, poses: np.ndarray = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    poses = gt_poses() if poses is None else poses
    np.savez_compressed(folder / "ground_truth.npz", K=np.eye(3), cam_from_world=poses,
                        names=np.array(NAMES[: len(poses)]),
                        depth=np.zeros((len(poses), 2, 2), np.float16))
    return folder


@pytest.fixture
def output(tmp_path):
    """An output with two good windows (other Sim(3) frames), one failed, and a merged file."""
    gt = gt_poses()
    out = tmp_path / "out"
    windows = []
    write_window(out, 0, NAMES[0:6], S_A.transform_poses(gt[0:6]), windows=windows)
    write_window(out, 1, NAMES[3:9], S_B.transform_poses(gt[3:9]), windows=windows)
    write_window(out, 2, NAMES[6:12], None, status="failed", windows=windows)
    (out / "merged").mkdir()
    write_tum(out / "merged" / "trajectory.txt", S_B.transform_poses(gt))
    (out / "merged" / "trajectory_names.txt").write_text("\n".join(NAMES) + "\n")
    return out


# ---- readers ---------------------------------------------------------------------------------

def test_window_poses_round_trip(tmp_path):
    poses = S_A.transform_poses(gt_poses(5))
    wdir = write_window(tmp_path, 0, NAMES[:5], poses)
    loaded = read_window_poses(wdir)
    assert sorted(loaded) == NAMES[:5]
    for name, pose in zip(NAMES, poses):
        np.testing.assert_allclose(loaded[name], pose, atol=1e-12)


def test_synthetic_gt_reader_folder_and_npz(tmp_path):
    folder = write_synthetic_gt(tmp_path / "seq")
    for path in (folder, folder / "ground_truth.npz"):
        gt = load_ground_truth_poses(path)
        assert list(gt) == NAMES
        np.testing.assert_allclose(gt["frame_004.png"], gt_poses()[4])


def test_tum_reader_with_names_file_and_by_index(tmp_path):
    poses = gt_poses()
    write_tum(tmp_path / "traj.txt", poses)
    # without names: timestamps are indices into the (naturally) sorted frame list
    by_index = load_ground_truth_poses(tmp_path / "traj.txt", frame_names=NAMES[::-1])
    assert list(by_index) == NAMES
    for i, name in enumerate(NAMES):
        np.testing.assert_allclose(by_index[name], poses[i], atol=1e-12)
    with pytest.raises(InputError, match="no frame names"):
        load_ground_truth_poses(tmp_path / "traj.txt")
    # with a names file beside it
    names = [f"img{i}.jpg" for i in range(N)]
    (tmp_path / "traj_names.txt").write_text("\n".join(names) + "\n")
    named = load_ground_truth_poses(tmp_path / "traj.txt")
    assert list(named) == names
    np.testing.assert_allclose(named["img7.jpg"], poses[7], atol=1e-12)
    (tmp_path / "traj_names.txt").write_text("a.png\n")
    with pytest.raises(InputError, match="1 names for 12 poses"):
        read_ground_truth(tmp_path / "traj.txt")


def test_tum_reader_rejects_malformed_lines(tmp_path):
    (tmp_path / "bad.txt").write_text("0 1 2 3 0 0 0 1\n1 1 2 3 0 0\n")
    with pytest.raises(InputError, match=r"bad.txt:2"):
        read_ground_truth(tmp_path / "bad.txt")


def test_7scenes_reader(tmp_path):
    poses = gt_poses(3)
    for i, c2w in enumerate(invert_pose(poses)):
        np.savetxt(tmp_path / f"frame-{i:06d}.pose.txt", np.r_[c2w, [[0, 0, 0, 1]]])
        (tmp_path / f"frame-{i:06d}.color.jpg").write_bytes(b"")
    truth = read_ground_truth(tmp_path)
    assert truth.kind == "7scenes"
    assert truth.names == [f"frame-{i:06d}.color.jpg" for i in range(3)]
    np.testing.assert_allclose(truth.cam_from_world, poses, atol=1e-12)


@pytest.mark.skipif(not SEVEN_SCENES.is_dir(), reason=f"{SEVEN_SCENES} not present")
def test_7scenes_reader_on_real_data(tmp_path):
    truth = read_ground_truth(SEVEN_SCENES)
    assert truth.kind == "7scenes" and len(truth.names) == 200
    assert truth.names[0] == "frame-000000.color.jpg"
    c2w = np.loadtxt(SEVEN_SCENES / "frame-000000.pose.txt")
    np.testing.assert_allclose(camera_centers(truth.cam_from_world[0]), c2w[:3, 3], atol=1e-12)
    rot = truth.cam_from_world[:, :, :3]
    np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-12)
    # the file's rotations are rounded: the orthonormalised one stays within 1e-4 of them
    np.testing.assert_allclose(rot[0].T, c2w[:3, :3], atol=1e-4)
    # end to end: one window holding a similarity copy of frames 0..19 scores ATE ~ 0
    out = tmp_path / "out"
    write_window(out, 0, truth.names[:20], S_A.transform_poses(truth.cam_from_world[:20]))
    report = evaluate_output(out, SEVEN_SCENES)
    w = report["windows"][0]
    assert w["num_matched"] == 20 and w["ate"]["rmse"] < 1e-9
    assert w["ate"]["alignment"]["scale"] == pytest.approx(1 / S_A.scale)


@pytest.mark.parametrize("text", [True, False])
def test_colmap_model_reader_matches_by_file_name(tmp_path, text):
    import pycolmap

    poses = gt_poses(5)
    write_model(tmp_path / "model", [f"images/{n}" for n in NAMES[:5]], poses)
    if text:  # as DTU's gt_sparse/ ships it
        rec = pycolmap.Reconstruction(tmp_path / "model")
        (tmp_path / "scan" / "gt_sparse").mkdir(parents=True)
        rec.write_text(tmp_path / "scan" / "gt_sparse")
    folder = tmp_path / ("scan" if text else "model")
    truth = read_ground_truth(folder)
    assert truth.kind == "colmap" and truth.names == NAMES[:5]
    np.testing.assert_allclose(truth.cam_from_world, poses, atol=1e-9)


def test_unrecognised_gt(tmp_path):
    with pytest.raises(InputError, match="unrecognised ground truth"):
        read_ground_truth(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_ground_truth(tmp_path / "missing")


def test_match_names_by_basename_then_stem():
    pairs = match_names(["frame_10.png", "frame_2.png", "x.png", "dir/frame_3.jpg"],
                        ["frame_2.png", "frame_10.tif", "frame_3.jpg"])
    assert pairs == [("frame_2.png", "frame_2.png"), ("dir/frame_3.jpg", "frame_3.jpg"),
                     ("frame_10.png", "frame_10.tif")]


# ---- evaluation ------------------------------------------------------------------------------

def test_evaluate_output_end_to_end(output, tmp_path):
    gt_dir = write_synthetic_gt(tmp_path / "gt")
    report = evaluate_output(output, gt_dir)
    ok = [w for w in report["windows"] if w["status"] == "ok"]
    assert [w["window_index"] for w in ok] == [0, 1]
    for w, sim in zip(ok, (S_A, S_B)):
        assert w["num_matched"] == 6 and w["num_registered"] == 6
        assert w["ate"]["rmse"] < 1e-9 and w["ate"]["max"] < 1e-9
        assert w["ate"]["alignment"]["scale"] == pytest.approx(1 / sim.scale, rel=1e-9)
        assert w["rpe"]["trans"]["max"] < 1e-9 and w["rpe"]["rot_deg"]["max"] < 1e-6
    failed = report["windows"][2]
    assert failed["status"] == "failed" and failed["error"] == "too few matches"
    [merged] = report["merged"]
    assert merged["num_matched"] == N and merged["ate"]["rmse"] < 1e-9
    assert report["summary"]["windows_ok"] == 2 and report["summary"]["windows_failed"] == 1
    table = format_report(report).splitlines()
    assert table[0].split()[:3] == ["window", "batch", "status"]
    assert [line.split()[0] for line in table[1:5]] == ["000", "001", "002", "merged"]
    col = table[0].index("status")  # columns are aligned: each row's status sits under it
    assert [line[col:].split()[0] for line in table[1:5]] == ["ok", "ok", "failed", "ok"]


def test_evaluate_detects_errors(tmp_path):
    gt = gt_poses()
    out = tmp_path / "out"
    noisy = gt[:8].copy()
    noisy[:, :, 3] += np.random.default_rng(0).normal(scale=0.05, size=(8, 3))
    windows = []
    write_window(out, 0, NAMES[:8], noisy, windows=windows)
    write_window(out, 1, NAMES[:8], gt[[3, 0, 6, 1, 7, 2, 5, 4]], windows=windows)  # wrong frames
    report = evaluate_output(out, dict(zip(NAMES, gt)), options=EvaluateOptions(align="se3"))
    noisy_ate, swapped_ate = (w["ate"]["rmse"] for w in report["windows"])
    assert 0.02 < noisy_ate < 0.1
    assert swapped_ate > 0.5
    assert report["gt_kind"] == "mapping"


def test_merged_without_names_uses_sorted_frame_index(output, tmp_path):
    (output / "merged" / "trajectory_names.txt").unlink()
    subset = [1, 4, 5, 9]  # timestamps = indices into the sorted frame names of the run
    write_tum(output / "merged" / "trajectory.txt", S_A.transform_poses(gt_poses()[subset]),
              stamps=subset)
    report = evaluate_output(output, write_synthetic_gt(tmp_path / "gt"),
                             options=EvaluateOptions(per_frame=True))
    [merged] = report["merged"]
    assert merged["frames"] == [NAMES[i] for i in subset]
    assert merged["ate"]["rmse"] < 1e-9
    write_tum(output / "merged" / "trajectory.txt", gt_poses()[:2], stamps=[0.5, 1.5])
    with pytest.raises(InputError, match="indices of the run's frames"):
        evaluate_output(output, write_synthetic_gt(tmp_path / "gt"))


def test_unnamed_ground_truth_indexes_the_input_folder_not_the_runs_frames(tmp_path):
    """A run with ``--frame-step 2`` has every other frame of the folder; a TUM file without
    names stamps each pose with its frame's index in the folder: pose 4 is frame 4, the run's
    third frame, and the merged trajectory's stamps are folder indices too."""
    gt, out = gt_poses(), tmp_path / "out"
    taken = list(range(0, N, 2))
    names = [NAMES[i] for i in taken]
    windows = []
    write_window(out, 0, names[:4], S_A.transform_poses(gt[taken[:4]]), windows=windows)
    write_window(out, 1, names[2:], S_B.transform_poses(gt[taken[2:]]), windows=windows)
    write_test_plan(out, windows, timestamps=taken)
    (out / "merged").mkdir()
    write_tum(out / "merged" / "trajectory.txt", S_B.transform_poses(gt[taken]), stamps=taken)
    write_tum(tmp_path / "traj.txt", gt)  # stamps 0..N-1: the folder's frames
    report = evaluate_output(out, tmp_path / "traj.txt")
    assert [w["status"] for w in report["windows"]] == ["ok", "ok"]
    assert all(w["ate"]["rmse"] < 1e-9 for w in report["windows"])
    [merged] = report["merged"]
    assert merged["num_matched"] == len(taken) and merged["ate"]["rmse"] < 1e-9


def test_damaged_window_model_is_reported_not_raised(output, tmp_path):
    sparse = output / "batch_000" / "window_001" / "sparse"
    for f in sparse.iterdir():
        f.write_bytes(b"garbage")
    report = evaluate_output(output, write_synthetic_gt(tmp_path / "gt"))
    bad = report["windows"][1]
    assert bad["status"] == "error" and "bytes, not the" in bad["error"]
    assert report["summary"]["windows_error"] == 1


def test_window_model_that_does_not_load_is_reported(output, tmp_path):
    (output / "batch_000" / "window_001" / "window_info.json").write_text(json.dumps(
        {**json.loads((output / "batch_000" / "window_001" / "window_info.json").read_text()),
         "files": {}, "sha256": None}))  # an old record with no file list: the model is still read
    (output / "batch_000" / "window_001" / "sparse" / "images.bin").write_bytes(b"garbage")
    report = evaluate_output(output, write_synthetic_gt(tmp_path / "gt"))
    bad = report["windows"][1]
    assert bad["status"] == "error"
    assert "COLMAP model does not load" in bad["error"]


def test_too_few_matched_frames_is_an_error_entry(tmp_path):
    out = tmp_path / "out"
    write_window(out, 0, ["a.png", "b.png", NAMES[0]], gt_poses(3))
    report = evaluate_output(out, dict(zip(NAMES, gt_poses())))
    assert report["windows"][0]["status"] == "error"
    assert "only 1 frames match" in report["windows"][0]["error"]


# ---- command line ----------------------------------------------------------------------------

def test_main_writes_json_and_table(output, tmp_path, capsys):
    gt_dir = write_synthetic_gt(tmp_path / "gt")
    assert main(["--pred", str(output), "--gt", str(gt_dir)]) == 0
    stdout = capsys.readouterr().out
    assert "merged" in stdout and "ATE rmse (gt units)" in stdout and "RPE r rmse (deg)" in stdout
    report = json.loads((output / "evaluation.json").read_text())
    plot = output / "merged" / "trajectory_vs_gt.png"  # the merged path over the ground truth
    assert report["merged"][0]["plot"] == str(plot)
    with Image.open(plot) as img:
        assert img.text["Axes"] == "x: main direction (gt units); y: second direction (gt units)"
        assert img.text["Legend"] == "ground truth, estimated (colour: error), start, end"
    assert report["windows"][0]["ate"]["rmse"] < 1e-9
    custom = tmp_path / "custom.json"
    assert main(["--pred", str(output), "--gt", str(gt_dir), "--json", str(custom),
                 "--align", "se3"]) == 0
    assert json.loads(custom.read_text())["options"]["align"] == "se3"


def test_a_read_only_output_is_still_scored(output, tmp_path, capsys, monkeypatch):
    """A folder that refuses writes (a read-only mount) gets its table and a warning; a
    report asked for by ``--json`` that cannot be written is an error."""
    import pipeline.infra.files as files
    import pipeline.io.plots as plots

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(plots, "plot_trajectory", refuse)
    monkeypatch.setattr(files.os, "replace", refuse)
    gt_dir = write_synthetic_gt(tmp_path / "gt")
    assert main(["--pred", str(output), "--gt", str(gt_dir)]) == 0
    captured = capsys.readouterr()
    assert "ATE rmse (gt units)" in captured.out
    assert captured.err.splitlines() == [
        f"warning: cannot write {output / 'evaluation.json'}: Permission denied (the scores "
        "above are complete; --json PATH keeps the report elsewhere)"]
    assert not list(output.glob(".evaluation.json.tmp-*"))
    assert main(["--pred", str(output), "--gt", str(gt_dir), "--json",
                 str(tmp_path / "report.json")]) == 2
    assert capsys.readouterr().err == (f"error: cannot write {tmp_path / 'report.json'}: "
                                       "Permission denied\n")


@pytest.mark.parametrize("argv_kind", ["missing_pred", "bad_gt", "empty_out", "bad_align",
                                       "no_args", "bad_delta"])
def test_main_bad_input_exit_2_one_line(argv_kind, output, tmp_path, capsys):
    gt_dir = write_synthetic_gt(tmp_path / "gt")
    (tmp_path / "empty").mkdir()
    argv = {"missing_pred": ["--pred", str(tmp_path / "nope"), "--gt", str(gt_dir)],
            "bad_gt": ["--pred", str(output), "--gt", str(tmp_path / "empty")],
            "empty_out": ["--pred", str(tmp_path / "empty"), "--gt", str(gt_dir)],
            "bad_align": ["--pred", str(output), "--gt", str(gt_dir), "--align", "affine"],
            "no_args": [],
            "bad_delta": ["--pred", str(output), "--gt", str(gt_dir), "--rpe-delta", "0"],
            }[argv_kind]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err and "Traceback" not in err
    assert not (output / "evaluation.json").exists()


def test_module_entry_point(output, tmp_path):
    gt_dir = write_synthetic_gt(tmp_path / "gt")
    ok = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--pred", str(output),
                         "--gt", str(gt_dir)], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0].startswith("window")
    bad = subprocess.run([sys.executable, "-m", "pipeline.evaluate", "--pred", str(output),
                          "--gt", str(tmp_path / "missing")], cwd=REPO, capture_output=True,
                         text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"error: ground truth not found: "
                                               f"{tmp_path / 'missing'}"]


def test_a_missing_output_folder_is_named_before_its_ground_truth_is_looked_for(tmp_path,
                                                                               capsys):
    assert main(["--pred", str(tmp_path / "nope")]) == 2
    assert "output folder not found" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["--pred", str(tmp_path / "file")]) == 2
    assert "not an output folder (a file)" in capsys.readouterr().err
