"""Small helpers shared by the tests: reading a pipeline output folder."""

from __future__ import annotations

import json
from pathlib import Path


def write_model(sparse_dir: Path, names, poses=None, size=(64, 48), points: int = 0,
                focal: float = 50.0) -> None:
    """Write a COLMAP model whose images ``names`` are registered with camera-from-world
    ``poses`` ((N, 3, 4); identity when ``None``), one shared PINHOLE camera of focal length
    ``focal``, and ``points`` 3D points seen by every image (keypoint ``j`` of each image
    observes point ``j``)."""
    import numpy as np
    import pycolmap

    rec = pycolmap.Reconstruction()
    width, height = size
    cam = pycolmap.Camera(model="PINHOLE", width=width, height=height, camera_id=1,
                          params=[focal, focal, width / 2, height / 2])
    rec.add_camera_with_trivial_rig(cam)
    keypoints = np.random.default_rng(0).uniform(0, min(size), (points, 2))
    for i, name in enumerate(names):
        pose = np.eye(4)[:3] if poses is None else poses[i]
        im = pycolmap.Image(name=name, keypoints=keypoints, camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(pose))
    for j in range(points):
        track = pycolmap.Track()
        for i in range(len(names)):
            track.add_element(i + 1, j)
        rec.add_point3D(np.array([0.01 * j, 0.0, 5.0]), track, np.zeros(3, np.uint8))
    Path(sparse_dir).mkdir(parents=True, exist_ok=True)
    rec.write(str(sparse_dir))


def window_dirs(out: Path) -> list[Path]:
    """The window folders of an output folder's run plan that exist, in window order (read
    through :func:`pipeline.io.output.iter_windows`, as merge and evaluate read them)."""
    from pipeline.io.output import iter_windows

    out = Path(out)
    return [out / w.path for w in iter_windows(out) if (out / w.path).is_dir()]


def window_info(window: Path) -> dict:
    """A window's ``window_info.json``."""
    return json.loads((Path(window) / "window_info.json").read_text())


def frames_with_blank_window(images: Path, out: Path, count: int = 12,
                             blank: range = range(4, 8)) -> Path:
    """Copy the first ``count`` frames of ``images`` into ``out``, replacing the frames whose
    positions are in ``blank`` by flat grey images of the same size (no texture: no keypoint,
    no match, no model), so that a window made of exactly those frames must fail."""
    from shutil import copy

    from PIL import Image

    out.mkdir(parents=True)
    for i, path in enumerate(sorted(Path(images).iterdir())[:count]):
        if i in blank:
            with Image.open(path) as image:
                Image.new("RGB", image.size, (110, 110, 110)).save(out / path.name)
        else:
            copy(path, out / path.name)
    return out


def fake_frame(name: str, index: int = 0, size=(64, 48)):
    """A :class:`pipeline.io.frames.Frame` for a frame known only by name (content hash of the
    name), for outputs the tests write by hand."""
    import hashlib

    from pipeline.io.frames import Frame

    return Frame(index, name, Path(name), Path(name), size[0], size[1],
                 hashlib.blake2b(name.encode(), digest_size=16).hexdigest())


def finish_window(out: Path, window, *, status: str = "ok", error: str | None = None,
                  registered=None) -> dict:
    """Record ``out/<window folder>`` (``sparse/`` etc. already written there) as the pipeline
    finishes a window: a ``window_info.json`` with its signature and files, written through the
    pipeline's own staging and rename. ``window.items`` are frame names.

    Returns:
        The record.
    """
    import os

    import pycolmap

    from pipeline.io.output import WindowChecks
    from pipeline.io.signature import window_signature
    from pipeline.io.window_folders import finalize_window

    folder = Path(out) / window.relative_dir
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    os.rename(folder, staging)
    names = list(window.items)
    info = {"window_index": window.index, "path": window.relative_dir.as_posix(),
            "status": status, "error": None if status == "ok" else error or "forced",
            "start_frame": window.start, "frames": names, "num_frames": len(names),
            "registered_frames": names if registered is None else list(registered),
            "num_registered": len(names if registered is None else registered),
            "num_points3D": (pycolmap.Reconstruction(staging / "sparse").num_points3D()
                             if (staging / "sparse").is_dir() else 0),
            "reconstructor": "test",
            "signature": window_signature([fake_frame(n) for n in names], "test", {}, "none")}
    finalize_window(staging, folder, info, images="none",
                    checks=WindowChecks(min_points=0, min_frame_observations=0))
    return info


def write_test_plan(out: Path, windows, timestamps=None) -> str:
    """``plan.json`` for ``windows`` (over frame names) as :func:`finish_window` records them;
    ``timestamps`` (one per frame, in order of appearance) stamp the frames."""
    import dataclasses

    from pipeline.core.windows import Window
    from pipeline.io.output import write_plan
    from pipeline.io.signature import window_signature

    names = list(dict.fromkeys(n for w in windows for n in w.items))
    stamps = [None] * len(names) if timestamps is None else list(timestamps)
    frames = {n: dataclasses.replace(fake_frame(n, i), timestamp=t)
              for i, (n, t) in enumerate(zip(names, stamps, strict=True))}
    framed = [Window(w.index, w.start, tuple(frames[n] for n in w.items)) for w in windows]
    signatures = [window_signature(w.items, "test", {}, "none") for w in framed]
    return write_plan(Path(out), list(frames.values()), framed, signatures)


def write_video(path: Path, images: list[Path], rate: int = 24) -> Path:
    """An MPEG-4 video (8 Mbit/s) of ``images``, the first one's size, ``rate`` frames a
    second."""
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        first = np.asarray(Image.open(images[0]).convert("RGB"))
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "yuv420p"
        stream.bit_rate = 8_000_000
        for image in images:
            rgb = np.asarray(Image.open(image).convert("RGB"))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
