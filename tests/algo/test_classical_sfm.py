"""The classical reconstructor's sequence path: chunk planning, pairs, cutting windows out of a
chunk, and the whole path on the bundled sequence cut into several chunks."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest

from conftest import TESTDATA
from pipeline.algo import calibration as calib
from pipeline.algo.classical_sfm import (
    chunk_length,
    chunk_of,
    cut_window,
    jump_outliers,
    plan_chunks,
    sequential_pairs,
)
from pipeline.core.windows import create_windows
from pipeline.io.output import read_window_poses
from pipeline.io.synthetic import load_ground_truth
from pipeline.post.evaluate import evaluate_output
from pipeline.runner import run
from pipeline.runner.config import PipelineConfig
from tests.helpers import window_dirs, window_info


@pytest.mark.parametrize("frames,size,stride,chunk", [(24, 8, 4, 100), (200, 8, 4, 100),
                                                      (1000, 8, 4, 100), (37, 6, 3, 10),
                                                      (150, 8, 8, 100), (151, 16, 4, 20),
                                                      (200, 120, 60, 100), (40, 8, 4, 1),
                                                      (12, 8, 4, 3)])
def test_every_window_lies_in_a_chunk(frames, size, stride, chunk):
    chunks = plan_chunks(frames, size, chunk)
    chunk = chunk_length(size, chunk)  # a chunk shorter than two windows is lengthened
    assert chunk >= 2 * size
    assert chunks[0].start == 0 and chunks[-1].stop == frames
    for a, b in zip(chunks, chunks[1:]):
        assert b.start > a.start and a.stop - b.start >= size  # they overlap by a window
    lengths = [c.stop - c.start for c in chunks]
    assert max(lengths) - min(lengths) <= 1
    assert len(chunks) == 1 or 0.5 * chunk <= lengths[0] <= 1.5 * chunk
    for window in create_windows(list(range(frames)), size, stride):
        c = chunk_of(window, chunks)
        assert c.start <= window.start and window.stop <= c.stop


def test_short_sequences_are_one_chunk():
    assert [(c.start, c.stop) for c in plan_chunks(150, 8, 100)] == [(0, 150)]
    assert [(c.start, c.stop) for c in plan_chunks(200, 8, 100)] == [(0, 104), (96, 200)]


def test_pairs():
    pairs = sequential_pairs(range(10, 30), 3, quadratic=False)
    assert len(pairs) == 17 + 18 + 19 and (10, 13) in pairs and (10, 14) not in pairs
    wide = sequential_pairs(range(0, 100), 3, quadratic=True)
    assert {(0, 4), (0, 8), (0, 16), (0, 32), (0, 64)} <= wide and (0, 5) not in wide


def test_a_frame_registered_far_from_its_neighbours_is_found():
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=64, height=48,
                                                    camera_id=1, params=[50.0, 32.0, 24.0]))
    names = [f"f{i:02d}.png" for i in range(12)]
    for i, name in enumerate(names):
        pose = np.eye(4)[:3]
        pose[:, 3] = [-0.01 * i, 0.002 * (i % 3), 0.0]  # a wobbly path, 1 cm a frame
        if i == 6:
            pose[:, 3] = [5.0, -40.0, 20.0]  # the mapper put this one dozens of metres away
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, keypoints=np.zeros((0, 2)),
                                                        camera_id=1, image_id=i + 1),
                                         pycolmap.Rigid3d(pose))
    assert jump_outliers(rec, names) == ["f06.png"]
    rec.deregister_frame(rec.find_image_with_name("f06.png").frame_id)
    assert jump_outliers(rec, names) == []


def test_cut_window_keeps_its_frames_and_shared_points():
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="SIMPLE_PINHOLE", width=64, height=48,
                                                    camera_id=1, params=[50.0, 32.0, 24.0]))
    for i in range(4):
        image = pycolmap.Image(name=f"f{i}.png", keypoints=np.full((3, 2), 10.0 + i),
                               camera_id=1, image_id=i + 1)
        pose = np.eye(4)[:3]
        pose[0, 3] = i
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pose))
    for k, images in enumerate(([1, 2, 3], [3, 4], [1, 4])):
        track = pycolmap.Track()
        for image_id in images:
            track.add_element(image_id, k)
        rec.add_point3D(np.array([0.0, 0.0, 5.0 + k]), track, np.array([1, 2, 3], np.uint8))
    window, registered = cut_window([rec], ["f1.png", "f2.png", "f9.png"], shared_camera=False)
    assert registered == ["f1.png", "f2.png"]
    assert sorted(window.images[i].name for i in window.reg_image_ids()) == registered
    assert window.num_cameras() == 2  # a copy per frame without a shared camera
    [point] = window.points3D.values()  # only the point that two of its frames observe
    assert point.xyz[2] == 5.0 and point.track.length() == 2
    assert cut_window([rec], ["f0.png", "f9.png"], shared_camera=True) == (None, ["f0.png"])


@pytest.mark.slow
def test_a_sequence_in_several_chunks(tmp_path, monkeypatch):
    """Several chunks, each mapped with the focal length refined; with the agreement bar set to
    nothing, every chunk that differs from the consensus at all is mapped again holding it."""
    monkeypatch.setattr(calib, "AGREEMENT", 1e-12)
    out = tmp_path / "out"
    config = PipelineConfig(input_dir=TESTDATA / "images", output_dir=out, window_size=6,
                            window_stride=3, reconstructor="colmap", chunk_frames=4, merge=True,
                            show_progress=False)
    summary = run(config)  # chunks of 4 frames cannot hold a window: they are made 12 long
    assert summary.success, summary.line()
    infos = [window_info(d) for d in window_dirs(out)]
    assert len({tuple(i["details"]["chunk"]) for i in infos}) >= 3
    assert all(i["details"]["chunk"][1] - i["details"]["chunk"][0] + 1 == 12 for i in infos)
    assert all(i["num_registered"] == 6 for i in infos)
    assert {"features", "matching", "calibration", "mapping"} <= set(summary.profile.rows)
    assert summary.profile.rows["features"]["calls"] == 1
    [camera] = json.loads((out / "run.json").read_text())["calibration"]["cameras"]
    true_focal = load_ground_truth(TESTDATA).K[0, 0]
    assert camera["initial"]["source"] == calib.SOURCE_FUNDAMENTAL
    assert abs(camera["initial"]["focal"] - true_focal) <= 0.02 * true_focal
    assert len(camera["chunks"]) >= 3 and camera["remap"] and camera["support"] == "weak"
    assert abs(camera["focal"] - true_focal) <= 0.01 * true_focal  # the chunks' consensus
    for info in infos:  # a chunk mapped again kept it
        rec = pycolmap.Reconstruction(out / info["path"] / "sparse")
        held = info["details"]["calibration"]["held"]
        assert held == (f"chunk_{info['details']['chunk'][0]:06d}_"
                        f"{info['details']['chunk'][1] + 1:06d}" in camera["remap"])
        for c in rec.cameras.values():
            if held:
                assert c.params[0] == pytest.approx(camera["focal"], rel=1e-9)
            assert abs(c.params[0] - true_focal) <= 0.01 * true_focal
    assert any("--camera-params" in line for line in summary.digest())
    report = evaluate_output(out, TESTDATA)
    assert max(w["ate"]["rmse_fraction"] for w in report["windows"]) <= 0.01
    [merged] = report["merged"]
    assert merged["ate"]["rmse_fraction"] <= 0.01
    # a rerun with another judgement of windows reuses the store and the chunk models
    rerun = run(PipelineConfig(**{**config.__dict__, "min_registered_fraction": 0.75}))
    assert rerun.success and rerun.num_skipped == 0
    assert "features" not in rerun.profile.rows and "mapping" not in rerun.profile.rows


@pytest.mark.slow
def test_a_wrong_starting_focal_length_is_corrected_and_runs_repeat_exactly(tmp_path,
                                                                           monkeypatch):
    """The fundamental-matrix estimate is made wrong (0.6 times the truth, claiming strong
    support): bundle adjustment corrects it, the windows are as accurate as with the truth, the
    contradiction is reported. Two runs with other worker counts and batch sizes give the same
    poses."""
    truth = load_ground_truth(TESTDATA).K[0, 0]
    wrong = {1: calib.FocalEstimate(focal=0.6 * truth, pairs=100, cost=1e-3, support=5.0)}
    monkeypatch.setattr(calib, "estimate_focal", lambda database, **kw: wrong)
    outs = [tmp_path / "one", tmp_path / "two"]
    for out, workers, batch in zip(outs, (1, 2), (None, 2)):
        summary = run(PipelineConfig(input_dir=TESTDATA / "images", output_dir=out,
                                     max_frames=12, reconstructor="colmap", cpu_workers=workers,
                                     window_batch_size=batch, show_progress=False))
        assert summary.success, summary.line()
        [camera] = json.loads((out / "run.json").read_text())["calibration"]["cameras"]
        assert camera["initial"]["focal"] == pytest.approx(0.6 * truth)
        assert camera["focal"] == pytest.approx(truth, rel=0.01)
        assert camera["support"] == "weak" and "suggest" in camera["warnings"][0]
        report = evaluate_output(out, TESTDATA)
        assert max(w["ate"]["rmse_path_fraction"] for w in report["windows"]) <= 0.002
    first, second = ([read_window_poses(d) for d in window_dirs(out)] for out in outs)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6)


def test_the_feature_store_says_how_far_it_is_and_slices_change_nothing(tmp_path, monkeypatch):
    """``build_store`` reports features i/N and pairs matched after each slice; the store of
    small slices equals that of one call (the same keypoints and verified matches)."""
    import sqlite3
    from dataclasses import replace

    from PIL import Image

    import pipeline.algo.classical_sfm as seq
    from pipeline.reconstructors.colmap import ColmapOptions

    images = sorted((TESTDATA / "images").iterdir())[:12]
    frames = [(p.name, str(p), Image.open(p).size) for p in images]
    pairs = [(a[0], b[0]) for i, a in enumerate(frames) for b in frames[i + 1:i + 4]]
    options = replace(ColmapOptions(), num_threads=1)
    said = []
    monkeypatch.setattr(seq, "_say_progress", lambda store, *args: said.append(args))
    seq.build_store(tmp_path / "whole", frames, pairs, options)
    monkeypatch.setattr(seq, "EXTRACT_SLICE", 5)
    monkeypatch.setattr(seq, "MATCH_SLICE", 10)
    said.clear()
    seq.build_store(tmp_path / "sliced", frames, pairs, options)
    assert said == [("features", 5, 12), ("features", 10, 12), ("features", 12, 12),
                    ("matching", 10, 30, " pairs"), ("matching", 20, 30, " pairs"),
                    ("matching", 30, 30, " pairs")]

    def contents(store):
        with sqlite3.connect(store / "database.db") as db:
            return [db.execute(f"select * from {t} order by 1").fetchall()
                    for t in ("cameras", "images", "keypoints", "two_view_geometries")]

    assert contents(tmp_path / "whole") == contents(tmp_path / "sliced")
    monkeypatch.undo()
    seq._say_progress(tmp_path / "sliced", "features", 5, 12)
    assert seq.read_progress(tmp_path / "sliced") == "features 5/12"
    assert seq.read_progress(tmp_path / "whole") is None


def test_a_long_job_is_shown_with_how_far_it_is(monkeypatch):
    import threading
    from concurrent.futures import Future

    import pipeline.reconstructors.colmap as colmap

    monkeypatch.setattr(colmap, "PROGRESS_POLL_S", 0.01)
    reconstructor = colmap.ColmapReconstructor()
    shown = []
    reconstructor.progress = shown.append
    reconstructor._sequence = colmap._Sequence(frames=[], chunks=[], calibrate=False, pairs=[],
                                               key="k", root=None, chunk_of={})
    job, steps = Future(), iter(["features 4/9", "features 9/9", "matching 3/3 pairs"])
    state = {"text": None}

    def work():
        for text in steps:
            state["text"] = text
            threading.Event().wait(0.3)
        job.set_result({})

    threading.Thread(target=work).start()
    reconstructor._wait(job, "building the feature store", "store", lambda: state["text"])
    assert shown[0] == "building the feature store"
    assert "building the feature store: features 4/9" in shown
    assert shown[-1] == "building the feature store: matching 3/3 pairs"


def test_overwrite_makes_the_kept_store_and_chunk_models_again(tmp_path):
    """--overwrite redid the windows but cut them out of the chunk models kept by the earlier
    run, whatever had become of them."""
    out = tmp_path / "out"
    config = PipelineConfig(input_dir=TESTDATA / "images", output_dir=out, window_size=4,
                            window_stride=2, max_frames=8, reconstructor="colmap",
                            show_progress=False)
    assert run(config).success
    kept = out / "colmap_sequence"
    [points] = kept.glob("*/chunk_*/0/points3D.bin")
    whole = points.read_bytes()
    points.write_bytes(whole[:-8] + bytes(8))  # same size, other content
    again = run(PipelineConfig(**{**config.__dict__, "overwrite": True}))
    assert again.success and again.num_skipped == 0
    assert again.profile.rows["features"]["calls"] == 1 and "mapping" in again.profile.rows
    [remade] = kept.glob("*/chunk_*/0/points3D.bin")
    assert remade.read_bytes() == whole
