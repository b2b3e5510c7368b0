"""``pipeline.dataset.WindowDataset``: items that match the COLMAP models, resizing that keeps
the intrinsics consistent, and a multi-process DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import IMAGES
from pipeline.config import PipelineConfig
from pipeline.dataset import WindowDataset, scale_intrinsics
from pipeline.errors import InputError
from pipeline.output import read_window_poses
from pipeline.runner import run


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
