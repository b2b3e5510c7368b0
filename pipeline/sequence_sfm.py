"""Classical SfM of a whole sequence in overlapping chunks, each window cut out of its chunk.

An 8-frame window of hand-held 30 fps video spans a few centimetres and a quarter of a second:
too little parallax, and too few views, for COLMAP to initialise or to estimate the focal
length from the window alone (0 of 49 windows of 7-Scenes RedKitchen were posed that way). The
frames hold enough information; the window does not. So the classical reconstructor works on the
sequence:

1. **Feature store.** Every frame's SIFT features are extracted once and every pair that a chunk
   needs (each frame with its ``pairing_overlap`` successors, plus successors at distances
   2, 4, 8, ... within the chunk) is matched once, into one COLMAP database per sequence
   (``OUT/colmap_sequence/store-<key>/``), which a rerun with the same frames and options reuses.
   Frames of one image size share one camera, so the intrinsics are estimated jointly.
2. **Chunks.** The sequence is cut into overlapping chunks of about ``chunk_frames`` frames
   (consecutive chunks share at least one window's length, so every window lies inside one). Each
   chunk is mapped once by COLMAP's incremental mapper, in a worker process; its models are kept
   beside the store.
3. **Windows.** A window is cut out of the chunk in which it lies most centrally: its registered
   frames with their poses and cameras, the points that at least two of them observe (with those
   observations only), its world moved onto its first registered frame. It is still its own
   COLMAP scene; only its poses are better, because its chunk saw more of the sequence.

All paths in this module are plain data (names, paths, options), so the work can move between
processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from .memory import PeakMeter, reset_peak
from .windows import Window

logger = logging.getLogger(__name__)

SEQUENCE_DIR = "colmap_sequence"
"""Folder of the feature store and chunk models inside the output folder."""
STORE_VERSION = 1


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive frames mapped together: sequence indices ``start`` to ``stop - 1``."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"chunk_{self.start:06d}_{self.stop:06d}"


def plan_chunks(num_frames: int, window_size: int, chunk_frames: int) -> list[Chunk]:
    """Overlapping chunks of about ``chunk_frames`` frames covering ``num_frames``, spread
    evenly: consecutive chunks share at least ``window_size`` frames, so every window of at most
    that size lies inside one. A sequence shorter than 1.5 chunks is one chunk."""
    overlap = min(window_size, chunk_frames - 1)
    count = max(1, round((num_frames - overlap) / (chunk_frames - overlap)))
    if count == 1 or num_frames <= chunk_frames * 3 // 2:
        return [Chunk(0, 0, num_frames)]
    length = math.ceil((num_frames + (count - 1) * overlap) / count)
    starts = [round(k * (num_frames - length) / (count - 1)) for k in range(count)]
    return [Chunk(i, s, s + length) for i, s in enumerate(starts)]


def plan_calibration(num_frames: int, chunk_frames: int, count: int = 50) -> list[int]:
    """Sequence indices of the frames whose joint reconstruction estimates the intrinsics that
    every chunk then keeps: about ``count`` frames spread evenly over the first two chunks'
    length (wide baselines, yet views that still overlap)."""
    span = min(num_frames, 2 * chunk_frames)
    step = max(1, round(span / count))
    return list(range(0, span, step))


def chunk_of(window: Window[Any], chunks: Sequence[Chunk]) -> Chunk:
    """The chunk holding ``window`` with the widest margin on its narrower side.

    Raises:
        ValueError: no chunk holds the whole window.
    """
    holding = [c for c in chunks if c.start <= window.start and window.stop <= c.stop]
    if not holding:
        raise ValueError(f"no chunk holds frames {window.start}-{window.stop - 1}")
    return max(holding, key=lambda c: (min(window.start - c.start, c.stop - window.stop),
                                       -c.index))


def sequential_pairs(indices: Sequence[int], overlap: int,
                     quadratic: bool) -> set[tuple[int, int]]:
    """Sequence-index pairs ``(i, j)``, ``i < j``, of the frames ``indices`` (in order) that are
    matched: each with its ``overlap`` successors in ``indices`` and, with ``quadratic``, with
    those 2, 4, 8, ... places ahead."""
    steps = set(range(1, overlap + 1))
    if quadratic:
        steps |= {2 ** k for k in range(int(math.log2(max(1, len(indices)))) + 1)}
    return {(indices[a], indices[a + s]) for a in range(len(indices)) for s in steps
            if a + s < len(indices)}


# ---- work done in worker processes ------------------------------------------------------------

def build_store(folder: Path, frames: list[tuple[str, str, tuple[int, int]]],
                pairs: list[tuple[str, str]], options: Any) -> dict[str, dict[str, float]]:
    """Extract every frame's features and match ``pairs`` into ``folder/database.db``.

    Built in a temporary sibling folder and renamed into place, so a crash never leaves a store
    that looks complete.

    Args:
        folder: The store's folder (must not exist yet).
        frames: ``(name, path, (width, height))`` of every frame, in sequence order.
        pairs: Frame-name pairs to match.
        options: :class:`pipeline.reconstructors.colmap.ColmapOptions` (threads set).

    Returns:
        The time and peak memory of the ``features`` and ``matching`` stages.
    """
    from .reconstructors.colmap import copy_options, reader_options

    reset_peak()
    meter, stages = PeakMeter(), {}
    pycolmap.logging.minloglevel = options.colmap_log_level
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for name, path, _ in frames:
        (tmp / "images" / name).symlink_to(Path(path).resolve())
    db = tmp / "database.db"
    extraction = copy_options(options.extraction)
    extraction.num_threads = options.num_threads
    with meter.stage("features", stages):
        for size in dict.fromkeys(size for _, _, size in frames):  # one camera per image size
            names = [name for name, _, s in frames if s == size]
            pycolmap.extract_features(db, tmp / "images", image_names=names,
                                      camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader_options(options),
                                      extraction_options=extraction, device=pycolmap.Device.cpu)
    (tmp / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    matching = copy_options(options.matching)
    matching.num_threads = options.num_threads
    imported = pycolmap.ImportedPairingOptions()
    imported.match_list_path = tmp / "pairs.txt"
    with meter.stage("matching", stages):
        pycolmap.match_image_pairs(db, matching_options=matching, pairing_options=imported,
                                   device=pycolmap.Device.cpu)
    (tmp / "store.json").write_text(json.dumps({"version": STORE_VERSION,
                                                "frames": [f[0] for f in frames]}))
    os.replace(tmp, folder)
    return stages


def map_chunk(store: Path, names: list[str], out: Path, options: Any, *,
              fixed_intrinsics: bool = False, stage: str = "mapping"
              ) -> dict[str, dict[str, float]]:
    """Map the frames ``names`` of the store into models ``out/0``, ``out/1``... (written under a
    temporary name, then renamed). With ``fixed_intrinsics`` the cameras keep the store's
    intrinsics. Returns the stage's time and peak."""
    from .reconstructors.colmap import mapping_options

    reset_peak()
    meter, stages = PeakMeter(), {}
    pycolmap.logging.minloglevel = options.colmap_log_level
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mapping = mapping_options(options, fixed_intrinsics=fixed_intrinsics)
    mapping.image_names = names
    with meter.stage(stage, stages):  # writes the models to tmp/0, tmp/1, ...
        models = pycolmap.incremental_mapping(store / "database.db", store / "images", tmp,
                                              options=mapping)
    (tmp / "chunk.json").write_text(json.dumps({"frames": names, "models": len(models)}))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return stages


def calibrated_cameras(folder: Path) -> dict[int, list[float]]:
    """Camera id -> parameters of the largest model a calibration :func:`map_chunk` wrote (empty
    when it found none)."""
    models = load_models(folder)
    if not models:
        return {}
    best = max(models, key=lambda r: (r.num_reg_images(), r.num_points3D()))
    if best.num_reg_images() < 3:
        return {}
    return {camera_id: [float(v) for v in camera.params]
            for camera_id, camera in best.cameras.items()}


def fix_cameras(store: Path, params: dict[int, list[float]]) -> None:
    """Give the store's cameras these intrinsics, as priors that mapping keeps."""
    with pycolmap.Database.open(str(store / "database.db")) as db:
        for camera in db.read_all_cameras():
            if camera.camera_id in params:
                camera.params = params[camera.camera_id]
                camera.has_prior_focal_length = True
                db.update_camera(camera)


# ---- cutting a window out of its chunk --------------------------------------------------------

def load_models(folder: Path) -> list[pycolmap.Reconstruction]:
    """The models a :func:`map_chunk` wrote."""
    return [pycolmap.Reconstruction(str(p)) for p in sorted(
        (p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))]


def cut_window(models: Sequence[pycolmap.Reconstruction], names: Sequence[str], *,
               shared_camera: bool) -> tuple[pycolmap.Reconstruction | None, list[str]]:
    """The window's own model, cut out of the chunk model that registers most of ``names``.

    The window keeps each registered frame's pose, camera and keypoints, and the points observed
    by at least two of its frames (with those observations only). Without ``shared_camera`` each
    frame gets its own copy of its camera (intrinsics as the chunk estimated them).

    Returns:
        The model (``None`` when no chunk model registers two of the frames) and its registered
        frame names in window order. The world is still the chunk's (see
        :func:`pipeline.reconstructors.colmap.anchor_to_first_frame`).
    """
    def registered(rec: pycolmap.Reconstruction) -> list[str]:
        found = []
        for name in names:
            image = rec.find_image_with_name(name)
            if image is not None and image.has_pose:
                found.append(name)
        return found

    best = max(models, key=lambda r: len(registered(r)), default=None)
    kept = registered(best) if best is not None else []
    if len(kept) < 2:
        return None, kept
    return _sub_model(best, kept, shared_camera), kept


def _sub_model(source: pycolmap.Reconstruction, names: Sequence[str],
               shared_camera: bool) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    new_ids: dict[int, int] = {}
    for k, name in enumerate(names, start=1):
        image = source.find_image_with_name(name)
        camera_id = image.camera_id if shared_camera else k
        if camera_id not in rec.cameras:
            camera = source.cameras[image.camera_id]
            rec.add_camera_with_trivial_rig(pycolmap.Camera(
                model=camera.model, width=camera.width, height=camera.height,
                params=camera.params, camera_id=camera_id))
        keypoints = np.array([p.xy for p in image.points2D], dtype=np.float64).reshape(-1, 2)
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=name, keypoints=keypoints, camera_id=camera_id, image_id=k),
            image.cam_from_world())
        new_ids[image.image_id] = k
    for point_id, point in source.points3D.items():
        elements = [(new_ids[e.image_id], e.point2D_idx) for e in point.track.elements
                    if e.image_id in new_ids]
        if len({image_id for image_id, _ in elements}) < 2:
            continue
        track = pycolmap.Track()
        for image_id, idx in elements:
            track.add_element(image_id, idx)
        rec.add_point3D(point.xyz, track, point.color)
    rec.update_point_3d_errors()
    return rec


def store_key(frames: Sequence[Any], pairs: Sequence[tuple[int, int]],
              options_signature: Any) -> str:
    """What the feature store depends on: every frame (name, content hash, size), the pairs
    matched, and the extraction, camera and matching options."""
    from .output import digest

    return digest({"version": STORE_VERSION,
                   "frames": [[f.name, f.digest, list(f.size)] for f in frames],
                   "pairs": [list(p) for p in pairs], "options": options_signature})[:16]


# ---- keeping the store and the chunk models in the output folder ------------------------------

def save_folder(source: Path, target: Path) -> bool:
    """Copy folder ``source`` to ``target`` (a temporary sibling renamed into place, so a copy
    cut short never looks whole). A failure (a full disk) is logged and returns False: kept work
    only saves time on a rerun."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, symlinks=True, ignore=shutil.ignore_patterns(".*"))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return True
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _not_kept(target, exc)
        return False


def save_store(store: Path, cache: Path) -> bool:
    """Keep the store's database (features, matches) in ``cache`` for reruns."""
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("database.db", "pairs.txt", "store.json"):
            shutil.copy2(store / name, tmp / name)
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(tmp, cache)
        return True
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _not_kept(cache, exc)
        return False


def restore_store(cache: Path, store: Path, frames: Sequence[Any]) -> bool:
    """Bring a kept store back into the work folder ``store``; False when there is none (or it
    cannot be read), and the store must be built."""
    if not (cache / "store.json").is_file():
        return False
    try:
        (store / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy2(cache / "database.db", store / "database.db")
        for frame in frames:
            link = store / "images" / frame.name
            if not link.is_symlink():
                link.symlink_to(Path(frame.path).resolve())
        shutil.copy2(cache / "store.json", store / "store.json")
        return True
    except OSError as exc:
        logger.warning("cannot reuse the feature store in %s (%s); building it again", cache,
                       exc.strerror or exc)
        shutil.rmtree(store, ignore_errors=True)
        return False


def read_calibration(cache: Path) -> dict[int, list[float]] | None:
    """The intrinsics a previous run calibrated (``None``: none kept)."""
    try:
        return {int(k): v for k, v in json.loads((cache / "calibration.json").read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return None


def save_calibration(cache: Path, cameras: dict[int, list[float]]) -> None:
    """Keep the calibrated intrinsics beside the kept store (when the store is kept)."""
    if not cache.is_dir():
        return
    tmp = cache / f".calibration.json.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(cameras))
        os.replace(tmp, cache / "calibration.json")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _not_kept(cache / "calibration.json", exc)


def _not_kept(path: Path, exc: OSError) -> None:
    """Log that ``path`` could not be kept for reruns: a warning, except on a full disk, which
    the run itself reports when it next writes a window (with one error line)."""
    from .export import NO_SPACE

    log = logger.info if exc.errno in NO_SPACE else logger.warning
    log("cannot keep %s for reruns (%s)", path, exc.strerror or exc)


def remove_other_stores(root: Path | None, keep: str) -> None:
    """Delete kept stores of other frames or options (a rerun over changed input)."""
    if root is None or not root.is_dir():
        return
    for path in root.iterdir():
        if path.name != keep and (path.name.startswith("store-")
                                  or path.name.startswith(".store-")):
            logger.info("removing the feature store %s (made for other frames or options)", path)
            shutil.rmtree(path, ignore_errors=True)


def temporary_root() -> Path:
    """A private local folder where COLMAP works on a sequence."""
    return Path(tempfile.mkdtemp(prefix="colmap-sequence-"))
