"""Classical SfM of a whole sequence in overlapping chunks, each window cut out of its chunk.

An 8-frame window of hand-held 30 fps video spans a few centimetres and a quarter of a second:
too little parallax, and too few views, for COLMAP to initialise or to estimate the focal
length from the window alone (0 of 49 windows of 7-Scenes RedKitchen were posed that way). The
frames hold enough information; the window does not. So the classical reconstructor works on the
sequence:

1. **Feature store.** Every frame's SIFT features are extracted once and every pair that a chunk
   needs (each frame with its ``pairing_overlap`` successors, plus successors 16, 32, 64, ...
   frames ahead within the chunk) is matched once, into one COLMAP database per sequence. Frames
   of one image size share one camera.
2. **One focal length.** :func:`estimate_focal` finds each camera's focal length from the
   fundamental matrices of all verified pairs, and every chunk keeps it (chunks that calibrate
   themselves disagree with each other, and then cannot be merged).
3. **Chunks.** The sequence is cut into overlapping chunks of about ``chunk_frames`` frames
   (consecutive chunks share at least one window's length, so every window lies inside one). Each
   chunk is mapped once by COLMAP's incremental mapper, in a worker process; a frame it throws far
   from its neighbours is registered again (:func:`repair_jumps`).
4. **Windows.** A window is cut out of the chunk in which it lies most centrally: its registered
   frames with their poses and cameras, the points that at least two of them observe (with those
   observations only), its world moved onto its first registered frame. It is still its own
   COLMAP scene; only its poses are better, because its chunk saw more of the sequence.

COLMAP works in a local temporary folder; the store and the chunk models are copied into
``OUT/colmap_sequence/store-<key>/``, which a rerun with the same frames and options reuses.
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


def chunk_of(window: Window[Any], chunks: Sequence[Chunk]) -> Chunk:
    """The chunk holding ``window`` with the widest margin on its narrower side.

    Raises:
        ValueError: no chunk holds the whole window.
    """
    holding = [c for c in chunks if c.start <= window.start and window.stop <= c.stop]
    if not holding:
        raise ValueError(f"no chunk holds frames {window.start}-{window.stop - 1}")
    return max(holding, key=lambda c: (min(window.start - c.start, c.stop - window.stop), -c.index))


def sequential_pairs(indices: Sequence[int], overlap: int, quadratic: bool) -> set[tuple[int, int]]:
    """Sequence-index pairs ``(i, j)``, ``i < j``, of the frames ``indices`` (in order) that are
    matched: each with its ``overlap`` successors in ``indices`` and, with ``quadratic``, with
    those 2, 4, 8, ... places ahead."""
    steps = set(range(1, overlap + 1))
    if quadratic:
        steps |= {2**k for k in range(int(math.log2(max(1, len(indices)))) + 1)}
    return {
        (indices[a], indices[a + s])
        for a in range(len(indices))
        for s in steps
        if a + s < len(indices)
    }


# ---- work done in worker processes ------------------------------------------------------------


def build_store(
    folder: Path,
    frames: list[tuple[str, str, tuple[int, int]]],
    pairs: list[tuple[str, str]],
    options: Any,
) -> dict[str, dict[str, float]]:
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
            pycolmap.extract_features(
                db,
                tmp / "images",
                image_names=names,
                camera_mode=pycolmap.CameraMode.SINGLE,
                reader_options=reader_options(options),
                extraction_options=extraction,
                device=pycolmap.Device.cpu,
            )
    (tmp / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    matching = copy_options(options.matching)
    matching.num_threads = options.num_threads
    imported = pycolmap.ImportedPairingOptions()
    imported.match_list_path = tmp / "pairs.txt"
    with meter.stage("matching", stages):
        pycolmap.match_image_pairs(
            db, matching_options=matching, pairing_options=imported, device=pycolmap.Device.cpu
        )
    (tmp / "store.json").write_text(
        json.dumps({"version": STORE_VERSION, "frames": [f[0] for f in frames]})
    )
    os.replace(tmp, folder)
    return stages


def map_chunk(
    store: Path, names: list[str], out: Path, options: Any, *, fixed_focal: bool = False
) -> dict[str, dict[str, float]]:
    """Map the frames ``names`` of the store into models ``out/0``, ``out/1``... (written under a
    temporary name, then renamed). With ``fixed_focal`` the cameras keep the store's focal
    lengths. Returns the ``mapping`` stage's time and peak."""
    from .reconstructors.colmap import global_mapping_options, mapping_options

    reset_peak()
    meter, stages = PeakMeter(), {}
    pycolmap.logging.minloglevel = options.colmap_log_level
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    incremental = mapping_options(options, fixed_focal=fixed_focal)
    incremental.image_names = names
    with meter.stage("mapping", stages):  # writes the models to tmp/0, tmp/1, ...
        if options.chunk_mapper == "global" or (
            options.chunk_mapper == "auto" and len(names) >= options.global_min_frames
        ):
            mapping = global_mapping_options(options, fixed_focal=fixed_focal)
            mapping.image_names = names
            models = pycolmap.global_mapping(
                store / "database.db", store / "images", tmp, options=mapping
            )
        else:
            models = pycolmap.incremental_mapping(
                store / "database.db", store / "images", tmp, options=incremental
            )
        for folder in sorted(p for p in tmp.iterdir() if p.name.isdigit()):
            repair_jumps(folder, store, names, incremental)
    (tmp / "chunk.json").write_text(json.dumps({"frames": names, "models": len(models)}))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return stages


def jump_outliers(
    rec: pycolmap.Reconstruction, order: Sequence[str], factor: float = 10.0
) -> list[str]:
    """Frames that the mapper put far from both their neighbours in the sequence while those
    neighbours are close to each other: more than ``factor`` times the median step between
    consecutive registered frames. (COLMAP occasionally registers one frame of a video with a
    wrong absolute pose, dozens of metres away, and keeps it: about one run in three on the first
    100 frames of 7-Scenes RedKitchen.)"""
    position = {name: k for k, name in enumerate(order)}
    names = sorted(
        (rec.images[i].name for i in rec.reg_image_ids() if rec.images[i].name in position),
        key=position.__getitem__,
    )
    if len(names) < 5:
        return []
    centres = np.array([rec.find_image_with_name(n).projection_center() for n in names])
    step = float(np.median(np.linalg.norm(np.diff(centres, axis=0), axis=1)))
    limit = factor * step
    found = []
    for k in range(1, len(names) - 1):
        before, here, after = centres[k - 1], centres[k], centres[k + 1]
        if (
            min(np.linalg.norm(here - before), np.linalg.norm(here - after)) > limit
            and np.linalg.norm(after - before) < limit
        ):
            found.append(names[k])
    return found


def repair_jumps(
    folder: Path, store: Path, names: list[str], mapping: pycolmap.IncrementalPipelineOptions
) -> None:
    """Re-register the :func:`jump_outliers` of the model in ``folder``: they are deregistered
    and the mapper continues from the rest (a few seconds; the frame then lands where it
    belongs). Frames that jump again are left out of the model."""
    rec = pycolmap.Reconstruction(str(folder))
    outliers = jump_outliers(rec, names)
    if not outliers:
        return
    logger.info(
        "re-registering %d frame(s) placed far from their neighbours: %s",
        len(outliers),
        ", ".join(outliers),
    )
    for name in outliers:
        rec.deregister_frame(rec.find_image_with_name(name).frame_id)
    again = folder.with_name(f"{folder.name}.again")
    shutil.rmtree(again, ignore_errors=True)
    (again / "input").mkdir(parents=True)
    rec.write(again / "input")
    pycolmap.incremental_mapping(
        store / "database.db",
        store / "images",
        again / "output",
        options=mapping,
        input_path=again / "input",
    )
    repaired = pycolmap.Reconstruction(str(again / "output"))
    for name in jump_outliers(repaired, names):
        repaired.deregister_frame(repaired.find_image_with_name(name).frame_id)
    shutil.rmtree(folder)
    folder.mkdir()
    repaired.write(folder)
    shutil.rmtree(again, ignore_errors=True)


MIN_CALIBRATION_PAIRS = 20
"""Fundamental matrices a camera needs for :func:`estimate_focal` to trust its estimate."""


def estimate_focal(
    store: Path, *, min_pairs: int = MIN_CALIBRATION_PAIRS, max_cost: float = 0.02
) -> dict[int, float]:
    """The focal length of each camera of the store, from all its verified image pairs at once.

    For the right calibration ``K`` the essential matrix ``E = K^T F K`` of every pair has two
    equal singular values (Mendonça and Cipolla, 1999). With the principal point at the
    camera's (the image centre unless known), the focal length is the one that minimises the
    median of ``(s1 - s2) / (s1 + s2)`` over the fundamental matrices COLMAP verified between
    frames of that camera: a search over 0.3 to 3 times the image size, then refined. Hand-held
    video defeats COLMAP's own self-calibration about one run in two (542 px, or anything from
    700 to 12500 px, on subsets of 7-Scenes RedKitchen); this estimate gave 535-583 px on every
    subset and 279.5 px on the synthetic testdata (true: 277.1).

    Cameras with a focal length prior (EXIF) are left to COLMAP, as are cameras with fewer than
    ``min_pairs`` fundamental matrices or whose best cost exceeds ``max_cost``.

    Returns:
        ``{camera_id: focal length in pixels}`` of the cameras it could estimate.
    """
    from scipy.optimize import minimize_scalar

    with pycolmap.Database.open(str(store / "database.db")) as db:
        camera_of = {image.image_id: image.camera_id for image in db.read_all_images()}
        cameras = {camera.camera_id: camera for camera in db.read_all_cameras()}
        pair_ids, geometries = db.read_two_view_geometries()
    matrices: dict[int, list[np.ndarray]] = {}
    for pair_id, geometry in zip(pair_ids, geometries):
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        if geometry.F is None or camera_of.get(a) != camera_of.get(b):
            continue
        matrices.setdefault(camera_of[a], []).append(np.asarray(geometry.F, float))
    found = {}
    for camera_id, fs in matrices.items():
        camera = cameras[camera_id]
        if camera.has_prior_focal_length or len(fs) < min_pairs:
            continue
        stack = np.stack([f / np.linalg.norm(f) for f in fs])
        centre = camera.principal_point_x, camera.principal_point_y

        def cost(focal: float, centre: tuple = centre, stack: np.ndarray = stack) -> float:
            k = np.array([[focal, 0.0, centre[0]], [0.0, focal, centre[1]], [0.0, 0.0, 1.0]])
            s = np.linalg.svd(k.T[None] @ stack @ k[None], compute_uv=False)
            return float(np.median((s[:, 0] - s[:, 1]) / (s[:, 0] + s[:, 1])))

        size = max(camera.width, camera.height)
        grid = np.geomspace(0.3 * size, 3.0 * size, 120)
        k = int(np.argmin([cost(f) for f in grid]))
        best = minimize_scalar(
            cost,
            bounds=(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]),
            method="bounded",
            options={"xatol": 1e-3 * size},
        )
        if best.fun <= max_cost:
            found[camera_id] = float(best.x)
        else:
            logger.info(
                "camera %d: no focal length explains its image pairs (cost %.3f)",
                camera_id,
                best.fun,
            )
    return found


def fix_focal_lengths(store: Path, focal: dict[int, float]) -> None:
    """Give the store's cameras these focal lengths, as priors that mapping keeps."""
    with pycolmap.Database.open(str(store / "database.db")) as db:
        for camera in db.read_all_cameras():
            if camera.camera_id in focal:
                params = np.array(camera.params, float)
                params[list(camera.focal_length_idxs())] = focal[camera.camera_id]
                camera.params = params
                camera.has_prior_focal_length = True
                db.update_camera(camera)


# ---- cutting a window out of its chunk --------------------------------------------------------


def load_models(folder: Path) -> list[pycolmap.Reconstruction]:
    """The models a :func:`map_chunk` wrote."""
    return [
        pycolmap.Reconstruction(str(p))
        for p in sorted(
            (p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
        )
    ]


def cut_window(
    models: Sequence[pycolmap.Reconstruction], names: Sequence[str], *, shared_camera: bool
) -> tuple[pycolmap.Reconstruction | None, list[str]]:
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


def _sub_model(
    source: pycolmap.Reconstruction, names: Sequence[str], shared_camera: bool
) -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    new_ids: dict[int, int] = {}
    for k, name in enumerate(names, start=1):
        image = source.find_image_with_name(name)
        camera_id = image.camera_id if shared_camera else k
        if camera_id not in rec.cameras:
            camera = source.cameras[image.camera_id]
            rec.add_camera_with_trivial_rig(
                pycolmap.Camera(
                    model=camera.model,
                    width=camera.width,
                    height=camera.height,
                    params=camera.params,
                    camera_id=camera_id,
                )
            )
        keypoints = np.array([p.xy for p in image.points2D], dtype=np.float64).reshape(-1, 2)
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=name, keypoints=keypoints, camera_id=camera_id, image_id=k),
            image.cam_from_world(),
        )
        new_ids[image.image_id] = k
    for point in source.points3D.values():
        elements = [
            (new_ids[e.image_id], e.point2D_idx)
            for e in point.track.elements
            if e.image_id in new_ids
        ]
        if len({image_id for image_id, _ in elements}) < 2:
            continue
        track = pycolmap.Track()
        for image_id, idx in elements:
            track.add_element(image_id, idx)
        rec.add_point3D(point.xyz, track, point.color)
    rec.update_point_3d_errors()
    return rec


def store_key(
    frames: Sequence[Any], pairs: Sequence[tuple[int, int]], options_signature: Any
) -> str:
    """What the feature store depends on: every frame (name, content hash, size), the pairs
    matched, and the extraction, camera and matching options."""
    from .output import digest

    return digest(
        {
            "version": STORE_VERSION,
            "frames": [[f.name, f.digest, list(f.size)] for f in frames],
            "pairs": [list(p) for p in pairs],
            "options": options_signature,
        }
    )[:16]


# ---- keeping the store and the chunk models in the output folder ------------------------------


def save_folder(source: Path, target: Path, names: Sequence[str] | None = None) -> bool:
    """Copy folder ``source`` (only the files ``names`` at its top, when given) to ``target``,
    through a temporary sibling renamed into place, so a copy cut short never looks whole. A
    failure (a full disk) is logged and returns False: kept work only saves time on a rerun."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in sorted(Path(source).rglob("*")):
            relative = path.relative_to(source)
            if any(part.startswith(".") for part in relative.parts) or (
                names is not None and relative.parts[0] not in names
            ):
                continue
            if path.is_dir() and not path.is_symlink():
                (tmp / relative).mkdir(parents=True, exist_ok=True)
            else:  # copy2 raises the OSError itself (copytree would wrap it in shutil.Error)
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, tmp / relative, follow_symlinks=False)
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
    return save_folder(store, cache, ("database.db", "pairs.txt", "store.json"))


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
        logger.warning(
            "cannot reuse the feature store in %s (%s); building it again",
            cache,
            exc.strerror or exc,
        )
        shutil.rmtree(store, ignore_errors=True)
        return False


def read_calibration(cache: Path) -> dict[int, float] | None:
    """The focal lengths a previous run calibrated (``None``: none kept)."""
    try:
        return {
            int(k): float(v)
            for k, v in json.loads((cache / "calibration.json").read_text()).items()
        }
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def save_calibration(cache: Path, cameras: dict[int, float]) -> None:
    """Keep the calibrated focal lengths beside the kept store (when the store is kept)."""
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
        if path.name != keep and (
            path.name.startswith("store-") or path.name.startswith(".store-")
        ):
            logger.info("removing the feature store %s (made for other frames or options)", path)
            shutil.rmtree(path, ignore_errors=True)


def temporary_root() -> Path:
    """A private local folder where COLMAP works on a sequence."""
    return Path(tempfile.mkdtemp(prefix="colmap-sequence-"))
