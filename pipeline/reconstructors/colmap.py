"""Classical reconstruction with pycolmap: SIFT, matching, incremental mapping; no weights, CPU.

By default the sequence is reconstructed in overlapping chunks and each window is cut out of its
chunk (:mod:`pipeline.algo.classical_sfm`): every frame's features are extracted once, every pair
matched once, and short windows of hand-held video get poses that they could not get alone. With
``chunk_frames=0`` each window is reconstructed on its own, from its frames only. Either way the
COLMAP work runs in worker processes (the executor's pool, see :meth:`attach_pool`; its own
``num_workers`` on the serial path and in library use; each with ``num_threads`` threads), so a
COLMAP abort costs its windows, never the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pycolmap

from ..algo import calibration as calib
from ..algo import classical_sfm as seq
from ..algo import sift_matching
from ..algo.colmap_options import (
    global_mapping_options,
    mapping_options,
)
from ..algo.window_sfm import (
    WINDOW_TEMP_PREFIX,
    ColmapWindowJob,
    reconstruct_window,
    write_and_judge,
)
from ..core.cameras import CAMERA_PARAMS, CAMERA_TYPES
from ..core.errors import InputError
from ..core.results import BatchReport, WindowResult
from ..core.windows import Window
from ..exec.executor import CpuPool, completed, cores
from ..infra.memory import PeakMeter
from ..infra.options import option
from ..infra.tempdirs import explain, remove_dead_temps
from ..io.frames import Frame
from ..io.signature import frames_hash, options_signature, stable_hash
from .base import Reconstructor, colmap_log_level

if TYPE_CHECKING:
    from ..exec.executor import Pending

logger = logging.getLogger(__name__)

def _default_mapping() -> pycolmap.IncrementalPipelineOptions:
    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = 3  # a window has few frames; COLMAP's default (10) drops them all
    options.random_seed = 0
    # a global bundle adjustment each time the model grows by 40% instead of 10%: the frames of
    # a video chunk arrive in order, and on 100 frames of 7-Scenes this maps in 45 s instead of
    # 70 s with the same poses (window errors 5.5% of their path either way)
    options.ba_global_frames_ratio = 1.4
    options.ba_global_points_ratio = 1.4
    return options


def _default_verification() -> pycolmap.TwoViewGeometryOptions:
    options = pycolmap.TwoViewGeometryOptions()
    # seeded: each pair's RANSAC starts from this seed whichever thread verifies it, so the
    # same frames give the same matches run after run and for any number of threads
    options.ransac.random_seed = 0
    return options


def _default_global_mapping() -> pycolmap.GlobalPipelineOptions:
    options = pycolmap.GlobalPipelineOptions()
    options.min_model_size = 3
    options.random_seed = 0
    return options


PROGRESS_POLL_S = 0.5
"""How often a long COLMAP job is asked how far it is."""

TEMP_PREFIXES = (WINDOW_TEMP_PREFIX, seq.TEMP_PREFIX)

GROUP = "colmap"
"""The ``--help`` section of colmap's own options."""


@dataclass(kw_only=True)
class ColmapFlags:
    """Command-line options of the colmap reconstructor; fields of
    :class:`pipeline.runner.config.PipelineConfig`."""

    camera_params: tuple[float, ...] | None = option(None, group=GROUP, kind="floats",
                                                     metavar="P1,P2,...",
                                                     default_text="estimated")
    """colmap: known intrinsics in COLMAP's order for --camera-type, in pixels of the original
    frames, kept fixed: f,cx,cy (SIMPLE_PINHOLE), fx,fy,cx,cy (PINHOLE), f,cx,cy,k
    (SIMPLE_RADIAL)."""
    chunk_frames: int = option(100, group=GROUP, kind="count", metavar="N")
    """colmap: frames of the sequence reconstructed together (at least twice the window size),
    each window cut out of its chunk (features once per frame, matches once per pair, poses for
    short windows of video); 0: each window from its own frames only."""
    min_registered_fraction: float = option(0.5, group=GROUP, kind="float", bounds=(0, 1),
                                            name="--min-registered", metavar="FRACTION")
    """colmap: mark a window failed when fewer of its frames register."""


@dataclass(kw_only=True)
class ColmapOptions:
    """Settings of the classical reconstructor."""

    camera_type: str = "SIMPLE_PINHOLE"
    """COLMAP camera model of every camera: SIMPLE_PINHOLE, PINHOLE or SIMPLE_RADIAL."""
    shared_camera: bool = False
    """One camera (intrinsics) for all frames of a window, instead of one per frame."""
    camera_params: tuple[float, ...] | None = None
    """Known intrinsics in COLMAP's order for ``camera_type``; kept fixed during mapping."""
    num_workers: int | None = field(default=None, metadata={"result": False})
    """Worker processes per batch when no executor pool is attached (the serial path, library
    use); default: one per window of the batch, at most one per core. Windows always run in
    worker processes, so that COLMAP aborting (it does on some internal errors) costs one
    window, not the run."""
    num_threads: int | None = field(default=None, metadata={"result": False})
    """Threads of each worker's SIFT extraction and matching; default: the cores divided
    among the workers. Mapping and bundle adjustment always run on one thread
    (:data:`pipeline.algo.colmap_options.MAPPING_THREADS`): results repeat exactly."""
    chunk_frames: int = ColmapFlags.chunk_frames
    """Frames reconstructed together: windows are cut out of overlapping chunks of about this
    many frames of the sequence (see :mod:`pipeline.algo.classical_sfm`); 0 reconstructs each window
    from its own frames only."""
    pairing_overlap: int = 10
    """Each frame is matched with this many following frames (of its chunk, or its window)."""
    quadratic_overlap: bool = True
    """Also match each frame with the frames 2, 4, 8, ... ahead of it (wider baselines)."""
    min_registered_fraction: float = ColmapFlags.min_registered_fraction
    """A window whose largest model registers fewer of its frames than this fails."""
    extraction: pycolmap.FeatureExtractionOptions = field(
        default_factory=pycolmap.FeatureExtractionOptions)
    """pycolmap's SIFT extraction options, passed through (threads are set by ``num_threads``)."""
    matching: pycolmap.FeatureMatchingOptions = field(
        default_factory=pycolmap.FeatureMatchingOptions)
    """pycolmap's matching options, passed through. SIFT matching (the default type, not guided)
    is exact and repeatable (:mod:`pipeline.algo.sift_matching`, with ``sift.max_ratio``,
    ``max_distance`` and ``cross_check``); other types are pycolmap's own matchers."""
    verification: pycolmap.TwoViewGeometryOptions = field(default_factory=_default_verification)
    """pycolmap's two-view geometry verification of the matches, passed through (its RANSAC
    seeded with 0 by default, for results that do not change from run to run)."""
    mapping: pycolmap.IncrementalPipelineOptions = field(default_factory=_default_mapping)
    """pycolmap's incremental mapping options, passed through (``min_model_size`` defaults to 3):
    windows alone, ``chunk_mapper="incremental"``, and frames re-registered after a jump."""
    chunk_mapper: str = "auto"
    """How chunks are mapped: ``global`` (GLOMAP, :func:`pycolmap.global_mapping`: rotation
    averaging, then global positioning and bundle adjustment), ``incremental`` (COLMAP's
    incremental mapper), or ``auto``: global for chunks of at least ``global_min_frames``
    frames, incremental for shorter ones. On 100-frame chunks of 7-Scenes RedKitchen both pose
    windows equally well, but the incremental mapper drifts in scale within a chunk in about one
    run in three (merged trajectory 7% of the path instead of 2%), while the global one gave the
    same result for every seed, in less time; on a short chunk (24 synthetic frames) the global
    mapper costs about 5 s more for the same poses."""
    global_min_frames: int = 40
    """``chunk_mapper="auto"``: the shortest chunk mapped by the global mapper."""
    global_mapping: pycolmap.GlobalPipelineOptions = field(
        default_factory=_default_global_mapping)
    """pycolmap's global mapping options, passed through (``min_model_size`` defaults to 3)."""
    colmap_log_level: int = field(default=2, metadata={"result": False})
    """glog level of COLMAP's own messages in the workers: 0 info, 1 warnings, 2 errors."""
    reuse_kept: bool = field(default=True, metadata={"result": False})
    """Reuse the feature store and chunk models kept in the output folder by an earlier run
    (``colmap_sequence/``); False (``--overwrite``): make them again, as every window."""

    def __post_init__(self) -> None:
        if self.camera_type not in CAMERA_TYPES:
            raise ValueError(f"camera type must be one of {', '.join(CAMERA_TYPES)}, "
                             f"got {self.camera_type!r}")
        expected = CAMERA_PARAMS[self.camera_type]
        if self.camera_params is not None and len(self.camera_params) != len(expected):
            raise ValueError(f"{self.camera_type} takes {len(expected)} camera parameters "
                             f"({', '.join(expected)}), got {len(self.camera_params)}")
        if not 0.0 <= self.min_registered_fraction <= 1.0:
            raise ValueError("min_registered_fraction must lie in [0, 1]")
        if self.chunk_frames < 0:
            raise ValueError(f"chunk_frames must be 0 or positive, got {self.chunk_frames}")
        if self.chunk_mapper not in ("auto", "global", "incremental"):
            raise ValueError(f"chunk_mapper must be auto, global or incremental, got "
                             f"{self.chunk_mapper!r}")


class ColmapReconstructor(Reconstructor):
    """SIFT + matching + incremental mapping (pycolmap 4.x, CPU): windows cut out of chunks of
    the sequence, or (``chunk_frames=0``) each window alone."""

    name = "colmap"
    flags = ColmapFlags
    plans_sequences = True  # windows are cut out of their sequence's chunks
    mixed_sizes = True  # one camera per image size

    def __init__(self, options: ColmapOptions | None = None) -> None:
        self.options = options or ColmapOptions()
        remove_dead_temps(TEMP_PREFIXES)  # what runs that were killed left
        self._own: CpuPool | None = None
        """Its own workers, when no executor's pool is attached (``reconstruct_batch`` called
        directly)."""
        self._shared: CpuPool | None = None
        self._sequence: _Sequence | None = None

    @classmethod
    def check_flags(cls, config: Any) -> None:
        """``--camera-params``: as many values as ``--camera-type`` takes, finite, positive
        focal lengths and a principal point that is not negative."""
        if config.camera_params is None:
            return
        expected = CAMERA_PARAMS.get(config.camera_type, ())
        params = tuple(config.camera_params)
        if len(params) != len(expected):
            raise InputError(f"--camera-params for {config.camera_type} needs {len(expected)} "
                             f"values ({', '.join(expected)}), got {len(params)}")
        for name, value in zip(expected, params):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"--camera-params: {name} must be a finite number, "
                                 f"got {value!r}")
            if name in ("f", "fx", "fy") and value <= 0:
                raise InputError(f"--camera-params: the focal length {name} must be positive, "
                                 f"got {value:g}")
            if name in ("cx", "cy") and value < 0:
                raise InputError(f"--camera-params: the principal point {name} must not be "
                                 f"negative, got {value:g}")

    @classmethod
    def check_frames(cls, config: Any, frames: Sequence[Frame]) -> None:
        """``--camera-params``: the principal point must lie within every frame (a point
        outside the image is a value for other frames, or a swapped cx/cy, and every window
        would fail to pose)."""
        if config.camera_params is None:
            return
        names = CAMERA_PARAMS.get(config.camera_type, ())
        values = dict(zip(names, config.camera_params))
        for width, height in sorted({(f.width, f.height) for f in frames}):
            for name, limit in (("cx", width), ("cy", height)):
                if name in values and values[name] > limit:
                    raise InputError(
                        f"--camera-params: the principal point {name}={values[name]:g} lies "
                        f"outside the {width}x{height} frames (0 to {limit}); give the "
                        "intrinsics of these frames, in their pixels")

    @classmethod
    def options_from_config(cls, config: Any) -> ColmapOptions:
        return ColmapOptions(camera_type=config.camera_type, shared_camera=config.shared_camera,
                             camera_params=config.camera_params,
                             chunk_frames=config.chunk_frames,
                             min_registered_fraction=config.min_registered_fraction,
                             colmap_log_level=colmap_log_level(config),
                             reuse_kept=not config.overwrite)

    def signature_options(self) -> dict[str, Any]:
        """The options' signature with the matcher that makes the raw matches (see
        :func:`pipeline.algo.sift_matching.matcher_name`): windows matched another way are
        redone."""
        options = super().signature_options()
        options["matcher"] = sift_matching.matcher_name(self.options.matching)
        return options

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"name": self.name, "device": self.device, "camera_type": o.camera_type,
                "shared_camera": o.shared_camera, "camera_params": o.camera_params,
                "chunk_frames": o.chunk_frames, "num_workers": o.num_workers,
                "num_threads": o.num_threads, "pairing_overlap": o.pairing_overlap,
                "quadratic_overlap": o.quadratic_overlap,
                "min_registered_fraction": o.min_registered_fraction,
                "pycolmap": pycolmap.__version__}

    # ---- the sequence -------------------------------------------------------------------------

    def plan_sequence(self, frames: Sequence[Frame], windows: Sequence[Window[Frame]],
                      work_dir: Path | None) -> None:
        """Cut the sequence into chunks and note which chunk each window is cut from. COLMAP
        works in a local temporary folder (SQLite is unsafe on network filesystems, and COLMAP
        aborts inside it on a full disk); the store and chunk models are kept for reruns in
        ``work_dir/colmap_sequence`` (not kept when ``work_dir`` is ``None``)."""
        if not self.options.chunk_frames:
            return
        o = self.options
        chunks = seq.plan_chunks(len(frames), max(len(w) for w in windows), o.chunk_frames)
        pairs = set().union(*(seq.sequential_pairs(range(c.start, c.stop), o.pairing_overlap,
                                                   o.quadratic_overlap) for c in chunks))
        key = seq.store_key(frames, sorted(pairs), options_signature(_store_options(o)))
        kept = None if work_dir is None else Path(work_dir) / seq.SEQUENCE_DIR
        if kept is not None and not o.reuse_kept and kept.exists():
            logger.info("--overwrite: the feature store and chunk models in %s are made again",
                        kept)
            shutil.rmtree(kept, ignore_errors=True)  # what cannot go is not used (usable_root)
        root = seq.usable_root(kept)
        self._close_sequence()
        self._sequence = _Sequence(
            frames=list(frames), chunks=chunks, calibrate=o.camera_params is None,
            pairs=sorted(pairs), key=key, root=root,
            chunk_of={w.index: seq.chunk_of(w, chunks) for w in windows})

    def window_context(self, window: Window[Frame]) -> str | None:
        """The frames whose content decides the window's poses: every frame of the sequence
        when the focal length is estimated from all of them, else those of its chunk."""
        s = self._sequence
        if s is None or window.index not in s.chunk_of:
            return None
        chunk = s.chunk_of[window.index]
        key = -1 if s.calibrate else chunk.index
        if key not in s.contexts:
            s.contexts[key] = frames_hash(s.frames if s.calibrate
                                            else s.frames[chunk.start:chunk.stop])
        return s.contexts[key]

    def start(self, windows: Sequence[Window[Frame]]) -> None:
        """Start the work the windows to do need, in the workers: the feature store, then the
        mapping of the chunks: every chunk of the sequence when the focal length is calibrated
        (the chunks are checked against each other before any window is cut), else those the
        windows lie in (the first batch waits only for its own chunk)."""
        s = self._sequence
        if s is None or not windows:
            return
        needed = {s.chunk_of[w.index].index: s.chunk_of[w.index] for w in windows}
        s.needed = list(s.chunks) if s.calibrate else [needed[i] for i in sorted(needed)]
        logger.info("colmap: %d frames in %d chunk(s) of up to %d frames; %d to map",
                    len(s.frames), len(s.chunks), max(c.stop - c.start for c in s.chunks),
                    len(s.needed))
        self._submit_store()

    def _submit_store(self) -> None:
        """Restore the store from the output folder, or start building it."""
        s = self._sequence
        if s.store_job is not None:
            return
        if s.cache is not None:
            seq.remove_other_stores(s.root, s.cache.name)
        if s.cache is not None and seq.restore_store(s.cache, s.store, s.frames):
            logger.info("colmap: reusing the feature store %s", s.cache)
            s.store_job = completed(None)
            s.cached.add("store")
            return
        names = [f.name for f in s.frames]
        frames = [(f.name, str(f.path), f.size) for f in s.frames]
        options = replace(self.options, num_threads=self.options.num_threads or cores())
        logger.info("colmap: features of %d frames, %d pairs to match", len(frames),
                    len(s.pairs))
        seq.progress_path(s.store).unlink(missing_ok=True)  # a killed build's
        s.store_job = self._get_pool(self._workers(len(s.needed))).submit(
            seq.build_store, s.store, frames, [(names[i], names[j]) for i, j in s.pairs],
            options)

    def _calibrate(self) -> None:
        """Give the store's cameras the focal lengths mapping starts from
        (:func:`pipeline.algo.calibration.initial_focal`: EXIF, else the estimate from the
        fundamental matrices of all the store's image pairs when it is supported, else COLMAP's
        default); bundle adjustment refines them in every chunk, and :meth:`_check_calibration`
        checks the chunks' results."""
        s = self._sequence
        if s.mapping_key:
            return
        initial: dict[int, float] = {}
        if s.calibrate:
            s.cameras = calib.read_cameras(s.store / "database.db")
            estimates = seq.read_calibration(s.cache) if s.cache is not None else None
            if estimates is None:
                meter, stages = PeakMeter(), {}
                with meter.stage("calibration", stages):
                    estimates = calib.estimate_focal(s.store / "database.db")
                self.last_report.stages += list(stages.items())
                if s.cache is not None:
                    seq.save_calibration(s.cache, estimates)
            s.estimates = estimates
            initial = {c: calib.initial_focal(camera, estimates.get(c))[0]
                       for c, camera in s.cameras.items()}
            calib.set_focal_lengths(s.store / "database.db", initial)
            logger.info("colmap: mapping starts from focal length %s; bundle adjustment "
                        "refines it", _initial_text(s))
        s.mapping_key = _mapping_key(self.options, initial)

    def _submit_chunks(self) -> None:
        """Map every needed chunk not mapped yet (once the store is built and calibrated)."""
        s = self._sequence
        workers = self._workers(len(s.needed))
        options = replace(self.options, num_threads=self.options.num_threads
                          or max(1, cores() // workers))
        for chunk in s.needed:
            if chunk.index in s.chunk_jobs:
                continue
            hold = s.hold if chunk.name in s.remap else None
            cached = self._chunk_cache(chunk)
            if cached is not None and seq.readable_file(cached / "chunk.json"):
                s.chunk_jobs[chunk.index] = completed(None)
                continue
            names = [f.name for f in s.frames[chunk.start:chunk.stop]]
            s.chunk_jobs[chunk.index] = self._get_pool(workers).submit(
                seq.map_chunk, s.store, names, self._chunk_work(chunk), options,
                hold_focal=hold)

    def _chunk_key(self, chunk: seq.Chunk) -> str:
        """The chunk folder's name: the chunk, the mapping options and the focal lengths it
        started from, or those it held when it was mapped again (:meth:`_check_calibration`)."""
        s = self._sequence
        if chunk.name in s.remap:
            return f"{chunk.name}-{stable_hash([s.mapping_key, sorted(s.hold.items())])[:12]}"
        return f"{chunk.name}-{s.mapping_key}"

    def _chunk_work(self, chunk: seq.Chunk) -> Path:
        return self._sequence.store / self._chunk_key(chunk)

    def _chunk_cache(self, chunk: seq.Chunk) -> Path | None:
        s = self._sequence
        return None if s.cache is None else s.cache / self._chunk_key(chunk)

    def _check_calibration(self) -> None:
        """Once every chunk is mapped with its focal length refined, judge the calibration
        (:func:`pipeline.algo.calibration.decide`): chunks that disagree with the others, or whose
        value no camera has, are mapped again with the chunks' consensus held. The decision
        goes to the log and to ``run.json`` (``calibration``)."""
        s = self._sequence
        if not s.calibrate or s.decisions is not None:
            return
        evidence = {}
        for chunk in s.chunks:
            if chunk.index not in s.chunk_jobs:  # dropped with a pool that broke
                self._submit_chunks()
            try:
                self._wait(s.chunk_jobs[chunk.index], self._mapping_text(chunk),
                           self._chunk_key(chunk), progress=self._chunks_mapped)
            except RuntimeError:  # no evidence; its windows fail with the reason
                continue
            evidence[chunk.name] = self._chunk_record(chunk).get("evidence") or {}
        s.decisions = calib.decide(s.cameras, s.estimates, evidence)
        remap = sorted({name for d in s.decisions for name in d.remap})
        if remap:
            for chunk in s.chunks:  # a rerun's decision reads them again
                if chunk.name in remap:
                    self._keep_chunk(chunk)
            s.hold = {d.camera_id: d.focal if d.focal is not None else d.initial["focal"]
                      for d in s.decisions}
            s.remap = set(remap)
            for chunk in s.chunks:
                if chunk.name in s.remap:
                    s.chunk_jobs.pop(chunk.index, None)
                    s.models.pop(chunk.index, None)
            self._submit_chunks()
        log = logger.warning if any(d.support == "weak" for d in s.decisions) else logger.info
        log("colmap: focal length %s", calib.summary_line(s.decisions))
        for decision in s.decisions:
            for warning in decision.warnings:
                logger.warning("colmap: %s", warning)
        self.last_report.records["calibration"] = self.calibration_record()

    def calibration_record(self) -> dict[str, Any] | None:
        """The sequence's calibration as ``run.json`` keeps it (``None``: not calibrated)."""
        s = self._sequence
        if s is None or s.decisions is None:
            return None
        weak = any(d.support == "weak" for d in s.decisions)
        return {"support": "weak" if weak else "strong",
                "hint": calib.weak_support_hint(self.options.camera_type) if weak else None,
                "cameras": [d.to_json() for d in s.decisions]}

    def _chunk_record(self, chunk: seq.Chunk) -> dict[str, Any]:
        """The chunk's ``chunk.json`` (from the output folder's cache, else the work folder)."""
        for folder in (self._chunk_work(chunk), self._chunk_cache(chunk)):
            if folder is not None and seq.readable_file(folder / "chunk.json"):
                try:
                    return json.loads((folder / "chunk.json").read_text())
                except (OSError, ValueError):
                    continue
        return {}

    def _chunk_models(self, chunk: seq.Chunk) -> list[pycolmap.Reconstruction]:
        """The models of ``chunk``, mapping it (and the store) first when needed.

        Raises:
            RuntimeError: the store or the chunk could not be made (the message says which).
        """
        s = self._sequence
        if chunk.index in s.models:
            return s.models[chunk.index]
        if chunk not in s.needed:
            s.needed.append(chunk)
        self._submit_store()
        self._wait(s.store_job, "building the feature store", "store",
                   progress=lambda: seq.read_progress(s.store))
        if s.cache is not None and "store" not in s.cached:
            s.cached.add("store")
            seq.save_store(s.store, s.cache)
        self._calibrate()
        self._submit_chunks()
        self._check_calibration()
        self._wait(s.chunk_jobs[chunk.index], self._mapping_text(chunk), self._chunk_key(chunk),
                   progress=self._chunks_mapped)
        while len(s.models) >= 2:  # a chunk's model holds every keypoint: keep two at most
            s.models.pop(next(iter(s.models)))
        s.models[chunk.index] = self._load_chunk(chunk)
        return s.models[chunk.index]

    def _mapping_text(self, chunk: seq.Chunk) -> str:
        """What the progress bar says while a chunk is awaited."""
        return (f"mapping chunk {chunk.index + 1}/{len(self._sequence.chunks)} "
                f"(frames {chunk.start}-{chunk.stop - 1})")

    def _chunks_mapped(self) -> str:
        """How many chunks are mapped so far (they map in parallel workers)."""
        s = self._sequence
        return f"{sum(_succeeded(j) for j in s.chunk_jobs.values())}/{len(s.chunks)} mapped"

    def _load_chunk(self, chunk: seq.Chunk) -> list[pycolmap.Reconstruction]:
        """Load a chunk's models: from the output folder's cache when it has them, else from
        the work folder (then keep them in the cache)."""
        cached, work = self._chunk_cache(chunk), self._chunk_work(chunk)
        if (cached is not None and seq.readable_file(cached / "chunk.json")
                and not work.is_dir()):
            try:
                return seq.load_models(cached)
            except Exception as exc:  # noqa: BLE001 - a damaged cache is mapped again
                logger.warning("colmap: the kept models of %s do not load (%s); mapping again",
                               chunk.name, exc)
                shutil.rmtree(cached, ignore_errors=True)
                self._sequence.chunk_jobs.pop(chunk.index, None)
                self._submit_chunks()
                self._wait(self._sequence.chunk_jobs[chunk.index], self._mapping_text(chunk),
                           self._chunk_key(chunk), progress=self._chunks_mapped)
        models = seq.load_models(work)
        self._keep_chunk(chunk)
        return models

    def _keep_chunk(self, chunk: seq.Chunk) -> None:
        """Move a chunk's freshly mapped folder into the output folder's cache, for reruns."""
        cached, work = self._chunk_cache(chunk), self._chunk_work(chunk)
        if cached is not None and work.is_dir() and seq.save_folder(work, cached):
            shutil.rmtree(work, ignore_errors=True)  # kept in the output folder: free /tmp

    def _wait(self, job: Future, what: str, key: str,
               progress: Callable[[], str | None] | None = None) -> None:
        """Wait for ``job`` (``progress`` says how far it is: polled, shown after ``what``);
        report its stages once; turn its failure into one RuntimeError."""
        if not job.done():
            self.report_progress(what)
            shown = None
            while progress is not None and not job.done():
                with contextlib.suppress(FutureTimeout, CancelledError):
                    job.exception(timeout=PROGRESS_POLL_S)
                text = progress()
                if text and text != shown and not job.done():
                    shown = text
                    self.report_progress(f"{what}: {text}")
        try:
            stages = job.result()
        except BrokenProcessPool:
            self._shutdown_pool()  # the next job gets a new pool
            raise RuntimeError(explain(f"the worker process {what} crashed")) from None
        except Exception as exc:  # noqa: BLE001 - the windows of this chunk fail, not the run
            raise RuntimeError(explain(f"{what} failed: {type(exc).__name__}: {exc}")) from exc
        if stages and key not in self._sequence.reported:
            self._sequence.reported.add(key)
            self.last_report.stages += list(stages.items())

    def _plan_batch_alone(self, windows: Sequence[Window[Frame]]) -> None:
        """Library use without a planned sequence: the batch's frames are the sequence."""
        frames = sorted({f.index: f for w in windows for f in w.items}.values(),
                        key=lambda f: f.index)
        position = {f.index: i for i, f in enumerate(frames)}
        rebased = [replace(w, start=position[w.items[0].index]) for w in windows]
        self.plan_sequence(frames, rebased, None)
        self._sequence.chunk_of = {w.index: seq.chunk_of(r, self._sequence.chunks)
                                   for w, r in zip(windows, rebased)}
        self.start(windows)

    # ---- batches ------------------------------------------------------------------------------

    def reconstruct_batch(self, windows: Sequence[Window[Frame]],
                          staging_dirs: Sequence[Path]) -> list[WindowResult]:
        self.last_report = BatchReport()
        if not self.options.chunk_frames:
            return self._windows_alone(windows, staging_dirs)
        if self._sequence is None or any(w.index not in self._sequence.chunk_of
                                         for w in windows):
            self._plan_batch_alone(windows)
        elif self._sequence.store_job is None:  # planned, but not started (library use)
            self.start(windows)
        return [self._cut(window, Path(staging)) for window, staging in zip(windows,
                                                                           staging_dirs)]

    def _cut(self, window: Window[Frame], staging: Path) -> WindowResult:
        """Window ``window`` cut out of its chunk's models into ``staging/sparse``."""
        chunk = self._sequence.chunk_of[window.index]
        names = [f.name for f in window.items]
        try:
            models = self._chunk_models(chunk)
        except RuntimeError as exc:
            return WindowResult.failure(str(exc))
        stages: dict[str, dict[str, float]] = {}
        meter = PeakMeter()
        options = _window_options(window, self.options)
        self.report_progress("export", window)
        with meter.stage("export", stages):
            rec, registered = seq.cut_window(models, names, shared_camera=options.shared_camera)
            if rec is None:
                result = WindowResult.failure(
                    f"COLMAP posed {len(registered)} of the window's {len(names)} frames "
                    f"within frames {chunk.start}-{chunk.stop - 1} of the sequence: too few "
                    "matches, or too little camera motion")
            else:
                result = write_and_judge(rec, names, staging / "sparse", options)
        result.details.update(chunk=[chunk.start, chunk.stop - 1], chunk_models=len(models))
        record = self.calibration_record()
        if record is not None:
            result.details["calibration"] = {"support": record["support"],
                                             "held": chunk.name in self._sequence.remap}
        result.stages = stages
        result.timings = {name: span["seconds"] for name, span in stages.items()}
        result.memory = {"peak_rss_mb": stages["export"]["rss_peak_mb"]}
        return result

    def _windows_alone(self, windows: Sequence[Window[Frame]],
                       staging_dirs: Sequence[Path]) -> list[WindowResult]:
        """Each window from its own frames only, in parallel workers."""
        workers = self._workers(len(windows))
        threads = self.options.num_threads or max(1, cores() // workers)
        options = replace(self.options, num_threads=threads)
        jobs = [([f.name for f in w.items], Path(d), _window_options(w, options))
                for w, d in zip(windows, staging_dirs)]
        pool = self._get_pool(workers)
        futures = [pool.submit(reconstruct_window, *job) for job in jobs]
        self.report_progress(f"features, matching, mapping of {len(jobs)} window(s)")
        results = []
        for window, future in zip(windows, futures):
            results.append(self._collect(future))
            self.report_progress(f"{len(results)}/{len(jobs)} done", window)
        return results

    def attach_pool(self, pool: CpuPool) -> None:
        """Run the store, the chunks and windows alone in the executor's workers (called before
        :meth:`start`, while no work of its own runs). The store and the chunks work in this
        machine's temporary folder, so a pool whose workers may be on other machines (Ray's:
        ``local_disk`` false) is not attached: they run in workers of its own on this machine,
        and only windows alone go to that pool."""
        if not pool.inline and pool.local_disk:
            self._shared = pool

    def start_batch(self, windows: Sequence[Window[Frame]], staging_dirs: Sequence[Path],
                    pool: CpuPool) -> list[Pending]:
        """Windows alone go to ``pool``'s workers as jobs and the call returns at once;
        windows cut out of chunks (and any batch with an inline pool) as
        :meth:`reconstruct_batch` does."""
        if pool.inline or self.options.chunk_frames:
            return super().start_batch(windows, staging_dirs, pool)
        from ..exec.executor import submit_job

        self.last_report = BatchReport()
        threads = self.options.num_threads or max(1, cores() // pool.workers)
        options = replace(self.options, num_threads=threads)
        self.report_progress(f"features, matching, mapping of {_count(windows)}")
        return [submit_job(pool, ColmapWindowJob(names=[f.name for f in w.items],
                                                 staging=Path(d),
                                                 options=_window_options(w, options)))
                for w, d in zip(windows, staging_dirs)]

    def _workers(self, jobs: int) -> int:
        if self._shared is not None:
            return self._shared.workers
        return self.options.num_workers or max(1, min(jobs, cores()))

    def _collect(self, future: Future) -> WindowResult:
        try:
            return future.result()
        except BrokenProcessPool:
            self._shutdown_pool()  # a worker died (e.g. killed for memory); the next batch
            # gets a new pool
            return WindowResult.failure(explain("the worker process reconstructing this window "
                                                "crashed"))
        except Exception as exc:  # noqa: BLE001 - one window never stops the others
            return WindowResult.failure(explain(f"{type(exc).__name__}: {exc}"))

    def _get_pool(self, workers: int) -> ProcessPoolExecutor:
        """The executor's workers when attached, else its own pool of ``workers`` (a larger one
        serves as well)."""
        if self._shared is not None:
            return self._shared.executor()
        if self._own is None or self._own.workers < workers:
            self._shutdown_pool()
            self._own = CpuPool(workers)
        return self._own.executor()

    def _shutdown_pool(self) -> None:
        if self._shared is not None:
            self._shared.restart()
        if self._own is not None:
            self._own.close(cancel=True)
            self._own = None
        if self._sequence is not None:  # jobs of a broken pool are resubmitted when needed
            s = self._sequence
            if s.store_job is not None and not _succeeded(s.store_job):
                s.store_job = None
            s.chunk_jobs = {i: j for i, j in s.chunk_jobs.items() if _succeeded(j)}

    def close(self) -> None:
        self._shared = None  # the executor's pool: it closes it
        self._shutdown_pool()
        self._close_sequence()
        remove_dead_temps(TEMP_PREFIXES)  # what workers killed in this run left

    def _close_sequence(self) -> None:
        if self._sequence is not None:
            shutil.rmtree(self._sequence.work, ignore_errors=True)
            self._sequence = None

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None and self._own is not None:  # interrupted: stop the workers now
            self._own.stop()
            self._own = None
        self.close()


def _count(windows: Sequence[Window[Frame]]) -> str:
    return f"{len(windows)} window" + ("" if len(windows) == 1 else "s")


@dataclass(kw_only=True)
class _Sequence:
    """The classical reconstructor's state for one sequence (see
    :mod:`pipeline.algo.classical_sfm`)."""

    frames: list[Frame]
    chunks: list[seq.Chunk]
    calibrate: bool
    """Estimate the focal length from the whole sequence (no known intrinsics were given)."""
    pairs: list[tuple[int, int]]
    """Sequence-index pairs the store matches."""
    key: str
    """Digest of what the store depends on (frames, pairs, options)."""
    chunk_of: dict[int, seq.Chunk]
    """Window index -> the chunk it is cut from."""
    root: Path | None
    """``OUT/colmap_sequence``, where the store and chunk models are kept for reruns (``None``:
    not kept)."""
    work: Path = field(default_factory=seq.temporary_root)
    """Local temporary folder where COLMAP works (removed on close)."""
    mapping_key: str = ""
    """Digest of the mapping options and the focal lengths mapping starts from, part of each
    chunk folder's name (set once those are known)."""
    cameras: dict[int, calib.CameraInfo] = field(default_factory=dict)
    """The store's cameras, as extracted (calibrating only)."""
    estimates: dict[int, calib.FocalEstimate] = field(default_factory=dict)
    """The fundamental-matrix focal length estimates (calibrating only)."""
    decisions: list[calib.CameraCalibration] | None = None
    """The calibration's judgement, once every chunk is mapped (calibrating only)."""
    remap: set[str] = field(default_factory=set)
    """Chunks mapped again with :attr:`hold` held."""
    hold: dict[int, float] = field(default_factory=dict)
    """The focal lengths the chunks of :attr:`remap` hold."""
    contexts: dict[int, str] = field(default_factory=dict)
    """Digests of the frames that decide a window (by chunk; -1: the whole sequence)."""
    needed: list[seq.Chunk] = field(default_factory=list)
    store_job: Future | None = None
    chunk_jobs: dict[int, Future] = field(default_factory=dict)
    models: dict[int, list[pycolmap.Reconstruction]] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    cached: set[str] = field(default_factory=set)

    @property
    def store(self) -> Path:
        """The feature store COLMAP reads and writes (in :attr:`work`)."""
        return self.work / "store"

    @property
    def cache(self) -> Path | None:
        """Where the store is kept for reruns (``root/store-<key>``)."""
        return None if self.root is None else self.root / f"store-{self.key}"


def _store_options(options: ColmapOptions) -> dict[str, Any]:
    """The options the feature store depends on."""
    return {"camera_type": options.camera_type, "camera_params": options.camera_params,
            "extraction": options.extraction, "matching": options.matching,
            "verification": options.verification,
            "matcher": sift_matching.matcher_name(options.matching),
            "pairing_overlap": options.pairing_overlap,
            "quadratic_overlap": options.quadratic_overlap}


def _mapping_key(options: ColmapOptions, focal: dict[int, float]) -> str:
    return stable_hash([options.chunk_mapper, options.global_min_frames,
                        options_signature(mapping_options(options)),
                        options_signature(global_mapping_options(options)),
                        sorted(focal.items())])[:12]


def _initial_text(s: _Sequence) -> str:
    """Each camera's starting focal length and its source, for the log."""
    starts = [calib.initial_focal(camera, s.estimates.get(c)) for c, camera in
              sorted(s.cameras.items())]
    return ", ".join(f"{focal:.1f} px ({source})" for focal, source in starts)


def _succeeded(job: Future) -> bool:
    return job.done() and not job.cancelled() and job.exception() is None


def _window_options(window: Window[Frame], options: ColmapOptions) -> ColmapOptions:
    """The options for one window: a shared camera needs frames of one size, so a window whose
    frames differ in size gets one camera per frame (said in the log and in its details)."""
    if options.shared_camera and len({f.size for f in window.items}) > 1:
        logger.warning("window %d: frames differ in size, so each gets its own camera",
                       window.index)
        return replace(options, shared_camera=False)
    return options
