"""Windows and merged scenes are readable without pycolmap: a reader of COLMAP's documented
binary format (https://colmap.github.io/format.html), written here from the format alone,
finds in ``sparse/`` what pycolmap finds: cameras, image poses and names, keypoints, points and
their tracks. Tools that parse the files themselves (nerfstudio, gsplat, hloc) read the same."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pycolmap
import pytest

PARAMS = {0: 3, 1: 4, 2: 4, 3: 5, 4: 8, 5: 8, 6: 12, 7: 5, 8: 4, 9: 5, 10: 12}
"""COLMAP camera model id -> number of parameters (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL,
RADIAL, OPENCV, OPENCV_FISHEYE, FULL_OPENCV, FOV, SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE,
THIN_PRISM_FISHEYE)."""


class Binary:
    def __init__(self, path: Path) -> None:
        self.data, self.at = path.read_bytes(), 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def name(self) -> str:
        end = self.data.index(b"\0", self.at)
        text, self.at = self.data[self.at:end].decode(), end + 1
        return text


def read_cameras(path: Path) -> dict[int, tuple[int, int, int, np.ndarray]]:
    f = Binary(path)
    cameras = {}
    for _ in range(f.take("Q")[0]):
        camera_id, model, width, height = f.take("iiQQ")
        cameras[camera_id] = (model, width, height, np.array(f.take(f"{PARAMS[model]}d")))
    return cameras


def read_images(path: Path) -> dict[int, dict]:
    f = Binary(path)
    images = {}
    for _ in range(f.take("Q")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = f.take("I7dI")
        name = f.name()
        count = f.take("Q")[0]
        points = np.array(f.take("ddq" * count), dtype=object).reshape(count, 3)
        images[image_id] = {"name": name, "q": np.array([qw, qx, qy, qz]),
                            "t": np.array([tx, ty, tz]), "camera_id": camera_id,
                            "xy": points[:, :2].astype(float),
                            "point3D_ids": points[:, 2].astype(np.int64)}
    assert f.at == len(f.data)
    return images


def read_points(path: Path) -> dict[int, dict]:
    f = Binary(path)
    points = {}
    for _ in range(f.take("Q")[0]):
        point_id, x, y, z, r, g, b, error, length = f.take("Q3d3BdQ")
        track = np.array(f.take("II" * length)).reshape(length, 2)
        points[point_id] = {"xyz": np.array([x, y, z]), "rgb": (r, g, b), "error": error,
                            "track": track}
    assert f.at == len(f.data)
    return points


def rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


@pytest.fixture(scope="module")
def output(merged_colmap_output):
    return merged_colmap_output


@pytest.mark.parametrize("scene", ["batch_000/window_000", "merged"])
def test_the_files_read_without_pycolmap_as_pycolmap_reads_them(output, scene):
    sparse = output / scene / "sparse"
    cameras = read_cameras(sparse / "cameras.bin")
    images = read_images(sparse / "images.bin")
    points = read_points(sparse / "points3D.bin")
    rec = pycolmap.Reconstruction(sparse)
    assert len(images) == rec.num_reg_images() > 0 and len(points) == rec.num_points3D() > 0
    for image_id, image in images.items():
        theirs = rec.images[image_id]
        assert image["name"] == theirs.name and (output / scene / "images" / image["name"]).exists()
        pose = np.column_stack([rotation(image["q"]), image["t"]])
        np.testing.assert_allclose(pose, theirs.cam_from_world().matrix(), atol=1e-12)
        model, width, height, params = cameras[image["camera_id"]]
        camera = rec.cameras[theirs.camera_id]
        assert (model, width, height) == (int(camera.model.value), camera.width, camera.height)
        np.testing.assert_array_equal(params, camera.params)
        np.testing.assert_array_equal(image["xy"], [p.xy for p in theirs.points2D])
    for point_id, point in points.items():
        np.testing.assert_array_equal(point["xyz"], rec.points3D[point_id].xyz)
        assert len(point["track"]) >= 2
        for image_id, k in point["track"]:  # each observation names the point back
            assert images[image_id]["point3D_ids"][k] == point_id
