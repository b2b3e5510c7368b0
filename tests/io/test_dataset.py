"""``pipeline.io.dataset.WindowDataset``: items that match the COLMAP models, resizing that keeps
the intrinsics consistent, and a multi-process DataLoader."""

from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import IMAGES
from pipeline.core.errors import InputError
from pipeline.io.dataset import FrameCountBatchSampler, WindowDataset, pick_frames, scale_intrinsics
from pipeline.io.output import read_window_intrinsics, read_window_poses
from pipeline.runner import run
from pipeline.runner.config import PipelineConfig


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset") / "out"
    summary = run(PipelineConfig(input_dir=IMAGES, output_dir=out, max_frames=12, window_size=4,
                                 window_stride=4, reconstructor="colmap", show_progress=False))
    assert summary.success
    return out


def test_items_are_the_windows_as_colmap_has_them(output):
    import pycolmap

    data = WindowDataset(output)
    assert len(data) == 3
    item = data[1]
    s = len(item["frames"])
    assert item["images"].shape == (s, 240, 320, 3) and item["images"].dtype == torch.uint8
    assert item["intrinsics"].shape == (s, 3, 3) and item["cam_from_world"].shape == (s, 3, 4)
    assert item["distortion"].shape == (s, 4) and not item["distortion"].any()  # pinhole
    assert item["window_index"] == 1 and item["sequence"] == ""
    assert "depth" not in item  # not saved by this run
    folder = output / "batch_000" / "window_001"
    poses = read_window_poses(folder)
    assert item["frames"] == sorted(poses)
    for name, pose in zip(item["frames"], item["cam_from_world"]):
        np.testing.assert_allclose(pose.numpy(), poses[name], atol=1e-5)
    # a 3D point projects onto its observation with the item's K and pose
    rec = pycolmap.Reconstruction(str(folder / "sparse"))
    errors = []
    for _, point in list(rec.points3D.items())[:50]:
        for element in point.track.elements:
            image = rec.images[element.image_id]
            i = item["frames"].index(image.name)
            uvw = item["intrinsics"][i].double().numpy() @ (
                item["cam_from_world"][i].double().numpy() @ np.append(point.xyz, 1.0))
            errors.append(np.linalg.norm(uvw[:2] / uvw[2] - image.points2D[element.point2D_idx].xy))
    assert np.median(errors) < 2.0


def test_a_relative_output_path_gives_the_same_items(output, monkeypatch):
    monkeypatch.chdir(output.parent)
    relative, absolute = WindowDataset(output.name), WindowDataset(output)
    assert len(relative) == len(absolute) == 3
    assert relative[2]["frames"] == absolute[2]["frames"]
    assert torch.equal(relative[2]["cam_from_world"], absolute[2]["cam_from_world"])


def test_distortion_comes_with_the_intrinsics(tmp_path):
    """A SIMPLE_RADIAL window's item carries its k1 (and the index too): with K, the pose and
    ``distortion`` (OpenCV's model) the points project onto their observations."""
    import pycolmap

    out = tmp_path / "radial"
    summary = run(PipelineConfig(input_dir=IMAGES, output_dir=out, max_frames=8, window_size=8,
                                 window_stride=8, reconstructor="colmap",
                                 camera_type="SIMPLE_RADIAL", shared_camera=True,
                                 show_progress=False))
    assert summary.success
    item = WindowDataset(out)[0]
    folder = out / "batch_000" / "window_000"
    rec = pycolmap.Reconstruction(str(folder / "sparse"))
    k1 = next(iter(rec.cameras.values())).params[3]
    assert item["distortion"].shape == (len(item["frames"]), 4)
    np.testing.assert_allclose(item["distortion"][:, 0].numpy(), k1, rtol=1e-6)
    assert not item["distortion"][:, 1:].any()
    errors = []
    for _, point in list(rec.points3D.items())[:100]:
        for element in point.track.elements:
            image = rec.images[element.image_id]
            i = item["frames"].index(image.name)
            xyz = item["cam_from_world"][i].double().numpy() @ np.append(point.xyz, 1.0)
            x, y = xyz[:2] / xyz[2]
            k1_, k2, p1, p2 = item["distortion"][i].double().numpy()
            r2 = x * x + y * y
            radial = 1 + k1_ * r2 + k2 * r2 * r2
            xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
            uv = (item["intrinsics"][i].double().numpy() @ [xd, yd, 1.0])[:2]
            errors.append(np.linalg.norm(uv - image.points2D[element.point2D_idx].xy))
    assert np.median(errors) < 2.0
    index_free = read_window_intrinsics(folder)[1]
    assert set(index_free) == set(item["frames"]) and index_free[item["frames"][0]][0] == \
        round(k1, 8)


def test_resizing_scales_the_intrinsics_with_the_pixels(output):
    full, small = WindowDataset(output)[0], WindowDataset(output, size=(120, 200))[0]
    assert small["images"].shape[1:] == (120, 200, 3)
    sx, sy = 200 / 320, 120 / 240
    expected = np.stack([scale_intrinsics(k, sx, sy) for k in full["intrinsics"].numpy()])
    np.testing.assert_allclose(small["intrinsics"].numpy(), expected, rtol=1e-6)
    # a pixel centre of the original lands on the same scene point in the resized image
    k, k2 = full["intrinsics"][0].double().numpy(), small["intrinsics"][0].double().numpy()
    ray = np.linalg.inv(k) @ [100.5, 60.5, 1.0]
    np.testing.assert_allclose((k2 @ ray)[:2], [100.5 * sx, 60.5 * sy])
    np.testing.assert_array_equal(small["cam_from_world"], full["cam_from_world"])


def test_a_multi_process_loader_batches_windows(output):
    loader = torch.utils.data.DataLoader(WindowDataset(output, size=(60, 80)), batch_size=3,
                                         num_workers=2)
    [batch] = list(loader)
    assert batch["images"].shape == (3, 4, 60, 80, 3)
    assert batch["window_index"].tolist() == [0, 1, 2]


def test_bad_sizes_and_empty_folders_are_refused(output, tmp_path):
    with pytest.raises(InputError, match="size"):
        WindowDataset(output, size=(0, 10))
    with pytest.raises(InputError):
        WindowDataset(tmp_path)


# ---- items of a fixed size, and whole windows batched by frame count -----------------------

@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A run over two sequences of one window of 8 frames each; two frames of ``b`` are flat
    grey (nothing to match), so its window registers 6."""
    base = tmp_path_factory.mktemp("many")
    names = sorted(IMAGES.iterdir())
    for sequence, first in (("a", 0), ("b", 8)):
        (base / "root" / sequence).mkdir(parents=True)
        for path in names[first:first + 8]:
            shutil.copy(path, base / "root" / sequence / path.name)
    for path in sorted((base / "root" / "b").iterdir())[3:5]:
        with Image.open(path) as image:
            Image.new("RGB", image.size, (110, 110, 110)).save(path)
    out = base / "out"
    summary = run(PipelineConfig(input_root=base / "root", output_dir=out, window_size=8,
                                 window_stride=4, reconstructor="colmap", show_progress=False))
    assert summary.success
    assert sorted(WindowDataset(out).frame_counts) == [6, 8]
    return out


def test_the_readme_loader_runs_on_windows_of_several_frame_counts(many):
    """``DataLoader(WindowDataset(out, num_frames=S), batch_size=4, shuffle=True)`` as the
    README has it: the default collate stacks every batch."""
    torch.manual_seed(0)
    data = WindowDataset(many, size=(60, 80), num_frames=6)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, num_workers=2)
    [batch] = list(loader)
    assert batch["images"].shape == (2, 6, 60, 80, 3)
    assert batch["cam_from_world"].shape == (2, 6, 3, 4)
    whole = {item["sequence"]: item for item in WindowDataset(many, size=(60, 80))}
    picked = {item["sequence"]: item for item in data}
    assert picked["b"]["frames"] == whole["b"]["frames"]  # all 6
    # of a's 8: the first (the window's world), the last, and evenly between
    assert picked["a"]["frames"] == [whole["a"]["frames"][i] for i in (0, 1, 3, 4, 6, 7)]
    np.testing.assert_array_equal(picked["a"]["cam_from_world"],
                                  whole["a"]["cam_from_world"][[0, 1, 3, 4, 6, 7]])


def test_windows_with_too_few_frames_are_left_out_and_counted(many, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.io.dataset"):
        data = WindowDataset(many, num_frames=7)
    assert [w.sequence for w in data.windows] == ["a"] and len(data[0]["frames"]) == 7
    assert "left out 1 of 2 windows with fewer than 7 registered frames" in caplog.text
    for bad in (0, -1, 2.5, "4", True):
        with pytest.raises(InputError, match="num_frames"):
            WindowDataset(many, num_frames=bad)


def test_whole_windows_batch_by_frame_count(many):
    data = WindowDataset(many, size=(60, 80))
    sampler = FrameCountBatchSampler(data, batch_size=4)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    shapes = sorted(batch["images"].shape[:2] for batch in loader)
    assert shapes == [(1, 6), (1, 8)]  # never stacked together


def test_the_sampler_groups_shuffles_by_epoch_and_repeats():
    data = SimpleNamespace(frame_counts=[4, 6, 4, 4, 6, 4, 4], num_frames=None)
    plain = list(FrameCountBatchSampler(data, batch_size=2))
    assert plain == [[0, 2], [3, 5], [6], [1, 4]]
    assert list(FrameCountBatchSampler(data, batch_size=2, drop_last=True)) == [[0, 2], [3, 5],
                                                                               [1, 4]]
    sampler = FrameCountBatchSampler(data, batch_size=2, shuffle=True, seed=3)
    first = list(sampler)
    assert first == list(FrameCountBatchSampler(data, batch_size=2, shuffle=True, seed=3))
    for batch in first:
        assert len({data.frame_counts[i] for i in batch}) == 1
    assert sorted(i for batch in first for i in batch) == list(range(7))
    sampler.set_epoch(1)
    assert list(sampler) != first and len(sampler) == 4
    with pytest.raises(InputError, match="batch_size"):
        FrameCountBatchSampler(data, batch_size=0)


def test_pick_frames_spreads_evenly_and_refuses_too_few():
    names = [f"f{i}" for i in range(8)]
    assert pick_frames(names, None) == names
    assert pick_frames(names, 8) == names
    assert pick_frames(names, 2) == ["f0", "f7"]
    assert pick_frames(names, 1) == ["f0"]
    with pytest.raises(InputError, match="fewer than num_frames=9"):
        pick_frames(names, 9)
