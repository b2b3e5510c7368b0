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
2. **Chunks.** The sequence is cut into overlapping chunks of about ``chunk_frames`` frames
   (consecutive chunks share at least one window's length, so every window lies inside one). Each
   chunk is mapped once (GLOMAP or COLMAP's incremental mapper), in a worker process; a frame it
   throws far from its neighbours is registered again (:func:`repair_jumps`).
3. **Checked calibration.** Mapping starts from the best focal length known before it and
   refines it; the chunks' results are then checked against each other and a chunk that
   disagrees is mapped again with the agreed value held (:mod:`pipeline.algo.calibration`).
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

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from ..core.windows import Window
from ..infra.files import NO_SPACE, write_json
from ..infra.memory import PeakMeter, reset_peak
from ..infra.tempdirs import make_temp
from ..io.signature import stable_hash
from . import sift_matching
from .colmap_database import call_shared, open_shared
from .colmap_options import copy_options, global_mapping_options, mapping_options, reader_options

logger = logging.getLogger(__name__)

SEQUENCE_DIR = "colmap_sequence"
"""Folder of the feature store and chunk models inside the output folder."""
STORE_VERSION = 3
"""Bumped when a store of the same frames and options would hold other features or matches
(3: exact SIFT matching, :mod:`pipeline.algo.sift_matching`)."""


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive frames mapped together: sequence indices ``start`` to ``stop - 1``."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"chunk_{self.start:06d}_{self.stop:06d}"


def chunk_length(window_size: int, chunk_frames: int) -> int:
    """Frames a chunk is planned with: ``chunk_frames``, raised to twice the window size when it
    is less (a chunk must hold a window and go on past it)."""
    return max(chunk_frames, 2 * window_size)


def plan_chunks(num_frames: int, window_size: int, chunk_frames: int) -> list[Chunk]:
    """Overlapping chunks of about ``chunk_length(window_size, chunk_frames)`` frames covering
    ``num_frames``, spread evenly: consecutive chunks share at least ``window_size`` frames, so
    every window of at most that size lies inside one. A sequence shorter than 1.5 chunks is
    one chunk."""
    chunk_frames = chunk_length(window_size, chunk_frames)
    overlap = window_size
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


EXTRACT_SLICE = 16
"""The fewest frames whose features are extracted in one pycolmap call (the progress counts
after each call)."""
MATCH_SLICE = 256
"""The fewest image pairs matched and verified in one call (each pair's matches and its seeded
verification depend on that pair alone, so the slices give what one call would)."""
PROGRESS_STEPS = 4
"""Calls per stage at the most, so the progress moves in quarters: each call costs its
start-up (on 200 frames of 7-Scenes, 10 calls per stage cost 9% more time than one)."""


def _slice(total: int, smallest: int) -> int:
    return max(smallest, -(-total // PROGRESS_STEPS))


def progress_path(store: Path) -> Path:
    """Where :func:`build_store` says how far it is (read by the process that waits for it)."""
    return store.with_name(f".{store.name}.progress.json")


def read_progress(store: Path) -> str | None:
    """``"features 32/200"``, ``"matching 512/1300 pairs"``: how far the store's build is, or
    None when it has not said yet."""
    try:
        data = json.loads(progress_path(store).read_text())
        return f"{data['stage']} {data['done']}/{data['total']}{data.get('unit', '')}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _say_progress(store: Path, stage: str, done: int, total: int, unit: str = "") -> None:
    with contextlib.suppress(OSError):  # progress only
        write_json(progress_path(store),
                   {"stage": stage, "done": done, "total": total, "unit": unit})


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

    reset_peak()
    meter, stages = PeakMeter(), {}
    pycolmap.logging.minloglevel = options.colmap_log_level
    pycolmap.set_random_seed(0)  # the same start whatever this worker ran before
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for name, path, _ in frames:
        (tmp / "images" / name).symlink_to(Path(path).resolve())
    db = tmp / "database.db"
    extraction = copy_options(options.extraction)
    extraction.num_threads = options.num_threads
    with meter.stage("features", stages):
        done = 0
        for size in dict.fromkeys(size for _, _, size in frames):  # one camera per image size
            names = [name for name, _, s in frames if s == size]
            extract_in_order(
                db,
                tmp / "images",
                names,
                camera_mode=pycolmap.CameraMode.SINGLE,
                reader=reader_options(options),
                extraction=extraction,
                on_slice=lambda n, base=done: _say_progress(folder, "features", base + n,
                                                            len(frames)),
            )
            done += len(names)
    (tmp / "pairs.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    with meter.stage("matching", stages):
        step = _slice(len(pairs), MATCH_SLICE)
        for start in range(0, len(pairs), step):
            sift_matching.match_and_verify(db, pairs[start:start + step], options.matching,
                                           options.verification, options.num_threads,
                                           tmp / "pairs-part.txt")
            _say_progress(folder, "matching", min(start + step, len(pairs)), len(pairs),
                          " pairs")
        (tmp / "pairs-part.txt").unlink(missing_ok=True)
    (tmp / "store.json").write_text(
        json.dumps({"version": STORE_VERSION, "frames": [f[0] for f in frames]})
    )
    os.replace(tmp, folder)
    progress_path(folder).unlink(missing_ok=True)
    return stages


def extract_in_order(
    db: Path,
    image_dir: Path,
    names: Sequence[str],
    *,
    camera_mode: pycolmap.CameraMode,
    reader: pycolmap.ImageReaderOptions,
    extraction: pycolmap.FeatureExtractionOptions,
    on_slice: Callable[[int], None] | None = None,
) -> None:
    """SIFT features of the images ``names`` into the database ``db``, the images numbered in
    the order of ``names``. (COLMAP numbers an image when its features are written, in the
    order its extraction threads finish; the mappers break ties by image id, so the same frames
    would give other poses from run to run. The images are imported in order first (one call:
    with ``SINGLE`` they share one camera), then their features extracted in up to
    :data:`PROGRESS_STEPS` calls; ``on_slice`` is told how many are done after each.)"""
    pycolmap.Database.open(str(db)).close()  # created when missing
    pycolmap.import_images(
        db, image_dir, camera_mode=camera_mode, image_names=list(names), options=reader
    )
    step = _slice(len(names), EXTRACT_SLICE)
    for start in range(0, len(names), step):
        part = list(names[start:start + step])
        pycolmap.extract_features(
            db,
            image_dir,
            image_names=part,
            camera_mode=camera_mode,
            reader_options=reader,
            extraction_options=extraction,
            device=pycolmap.Device.cpu,
        )
        if on_slice is not None:
            on_slice(start + len(part))


def map_chunk(
    store: Path,
    names: list[str],
    out: Path,
    options: Any,
    *,
    hold_focal: dict[int, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Map the frames ``names`` of the store into models ``out/0``, ``out/1``... (written under a
    temporary name, then renamed), with ``out/chunk.json`` recording the frames, the number of
    models and what the largest says about its cameras
    (:func:`pipeline.algo.calibration.model_evidence`). Bundle adjustment refines the focal lengths
    from the store's values; with ``hold_focal`` (``{camera_id: focal}``) the cameras get those
    values and keep them (a copy of the database is mapped). Returns the ``mapping`` stage's time
    and peak."""
    from .calibration import model_evidence, set_focal_lengths

    reset_peak()
    meter, stages = PeakMeter(), {}
    pycolmap.logging.minloglevel = options.colmap_log_level
    pycolmap.set_random_seed(0)  # the same start whatever this worker ran before
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    database = store / "database.db"
    if hold_focal is not None:
        shutil.copy2(database, tmp / "database.db")
        database = tmp / "database.db"
        set_focal_lengths(database, hold_focal)
    hold = hold_focal is not None
    incremental = mapping_options(options, hold_focal=hold)
    incremental.image_names = names
    with meter.stage("mapping", stages):  # writes the models to tmp/0, tmp/1, ...
        if options.chunk_mapper == "global" or (
            options.chunk_mapper == "auto" and len(names) >= options.global_min_frames
        ):
            mapping = global_mapping_options(options, hold_focal=hold)
            mapping.image_names = names
            models = call_shared(pycolmap.global_mapping, database, store / "images", tmp,
                                 options=mapping)
        else:
            models = call_shared(pycolmap.incremental_mapping, database, store / "images", tmp,
                                 options=incremental)
        for folder in sorted(p for p in tmp.iterdir() if p.name.isdigit()):
            repair_jumps(folder, store, names, incremental, database)
    (tmp / "database.db").unlink(missing_ok=True)
    record: dict[str, Any] = {"frames": names, "models": len(models), "evidence": None}
    kept = load_models(tmp)
    if kept:
        with open_shared(store / "database.db") as db:
            camera_of = {image.name: image.camera_id for image in db.read_all_images()}
        frames_of: dict[int, int] = {}
        for name in names:
            frames_of[camera_of[name]] = frames_of.get(camera_of[name], 0) + 1
        record["evidence"] = model_evidence(largest(kept), frames_of)
    (tmp / "chunk.json").write_text(json.dumps(record))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return stages


def largest(models: Sequence[pycolmap.Reconstruction]) -> pycolmap.Reconstruction:
    """The model that registers the most frames (then: has the most points)."""
    return max(models, key=lambda r: (r.num_reg_images(), r.num_points3D()))


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
    folder: Path,
    store: Path,
    names: list[str],
    mapping: pycolmap.IncrementalPipelineOptions,
    database: Path | None = None,
) -> None:
    """Re-register the :func:`jump_outliers` of the model in ``folder``: they are deregistered
    and the mapper continues from the rest (a few seconds; the frame then lands where it
    belongs). Frames that jump again are left out of the model. ``database``: the one mapped
    (default: the store's)."""
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
    call_shared(
        pycolmap.incremental_mapping,
        database or store / "database.db",
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
        :func:`pipeline.algo.window_sfm.anchor_to_first_frame`).
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
    return stable_hash(
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


def readable_file(path: Path) -> bool:
    """``path`` is a file this process can read; False (not an exception) when a folder on the
    way cannot be entered (``chmod 000``): kept work that cannot be read is made again."""
    try:
        return path.is_file() and os.access(path, os.R_OK)
    except OSError:
        return False


def usable_root(root: Path | None) -> Path | None:
    """``root`` (where the store and chunk models are kept for reruns) when this process can
    list, enter and write it and the stores in it, or when it does not exist yet; else None,
    with a warning: the run then works without keeping anything (a rerun maps again)."""
    if root is None:
        return None
    try:
        if root.exists():
            for folder in [root, *root.iterdir()]:
                if folder.is_dir() and not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
                    raise PermissionError(13, "Permission denied", str(folder))
                if folder.is_dir():
                    next(folder.iterdir(), None)
    except OSError as exc:
        logger.warning("cannot use the COLMAP work kept in %s (%s: %s); running without it",
                       root, exc.strerror or exc, exc.filename or root)
        return None
    return root


def save_store(store: Path, cache: Path) -> bool:
    """Keep the store's database (features, matches) in ``cache`` for reruns."""
    return save_folder(store, cache, ("database.db", "pairs.txt", "store.json"))


def restore_store(cache: Path, store: Path, frames: Sequence[Any]) -> bool:
    """Bring a kept store back into the work folder ``store``; False when there is none (or it
    cannot be read), and the store must be built."""
    if not readable_file(cache / "store.json"):
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


def read_calibration(cache: Path) -> dict[int, Any] | None:
    """The fundamental-matrix focal length estimates a previous run kept beside the store
    (``None``: none kept; see :mod:`pipeline.algo.calibration`)."""
    from .calibration import read_estimates

    return read_estimates(cache)


def save_calibration(cache: Path, estimates: dict[int, Any]) -> None:
    """Keep the focal length estimates beside the kept store (when the store is kept)."""
    from .calibration import ESTIMATES_FILE, estimates_json

    try:
        if not cache.is_dir():
            return
    except OSError:
        return
    try:
        write_json(cache / ESTIMATES_FILE, estimates_json(estimates), indent=None)
    except OSError as exc:  # a full disk too: the estimates are made again next time
        _not_kept(cache / ESTIMATES_FILE, exc)


def _not_kept(path: Path, exc: OSError) -> None:
    """Log that ``path`` could not be kept for reruns: a warning, except on a full disk, which
    the run itself reports when it next writes a window (with one error line)."""
    log = logger.info if exc.errno in NO_SPACE else logger.warning
    log("cannot keep %s for reruns (%s)", path, exc.strerror or exc)


def remove_other_stores(root: Path | None, keep: str) -> None:
    """Delete kept stores of other frames or options (a rerun over changed input)."""
    try:
        paths = sorted(root.iterdir()) if root is not None and root.is_dir() else []
    except OSError:  # usable_root warned
        return
    for path in paths:
        if path.name != keep and (
            path.name.startswith("store-") or path.name.startswith(".store-")
        ):
            logger.info("removing the feature store %s (made for other frames or options)", path)
            shutil.rmtree(path, ignore_errors=True)


TEMP_PREFIX = "colmap-sequence-"
"""Temporary folders where COLMAP works on a sequence (see :mod:`pipeline.infra.tempdirs`)."""


def temporary_root() -> Path:
    """A private local folder where COLMAP works on a sequence."""
    return make_temp(TEMP_PREFIX)
