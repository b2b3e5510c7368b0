"""The CPU part of a network window, as a record a worker process runs (see
:mod:`pipeline.exec.executor`): tracks into a COLMAP model, bundle adjustment, filtering, the
window's files. This module imports no torch, so that workers start quickly; the records hold
arrays only, never the network.

Pixel conventions are COLMAP's: the centre of the top-left pixel is ``(0.5, 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.results import STATUS_OK, WindowResult
from ..infra.memory import PeakMeter, array_bytes
from .exports import ExportOptions, write_exports
from .network_sfm import SfmOptions, Tracks, WindowPredictions, run_sfm, write_sfm_result


@dataclass(kw_only=True)
class SfmJob:
    """The CPU part of one network window, run in a worker process (or inline): tracks into a
    COLMAP model, bundle adjustment (``sfm.use_ba``) or points from depth, filtering and the
    window's files in ``staging``. It holds arrays only (it is pickled), never the network."""

    preds: WindowPredictions
    """The window's cameras, depth and frames on the original pixel grid."""
    tracks: Tracks | None
    """Tracks measured on the device, or None (none needed, or made by :meth:`make_tracks`)."""
    staging: Path
    """The window's staging folder: ``sparse/`` (and ``depth/``, ``exports/``) go there."""
    sfm: SfmOptions
    """Bundle adjustment and filtering."""
    save_depth: bool = False
    """Write ``depth/<frame>.npz``."""
    process_res: int = 0
    """The network resolution the window ran at (recorded in its details)."""
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    """Stages measured before (on the device side), as :class:`pipeline.infra.memory.PeakSpan`
    JSON."""
    timings: dict[str, float] = field(default_factory=dict)
    """Batch-wide seconds (``preprocess``, ``forward``) that lead its result's timings."""
    memory: dict[str, float] = field(default_factory=dict)
    """Memory peaks of its batch, MiB (see :attr:`WindowResult.memory`)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Facts for ``window_info.json`` known before the job runs."""
    report: Any = None
    """Progress callback when run inline (dropped when pickled)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "report": None}

    def nbytes(self) -> int:
        """Host memory of its arrays, bytes."""
        return array_bytes(self.preds, self.tracks)

    def _progress(self, stage: str) -> None:
        if self.report is not None:
            self.report(stage)

    def make_tracks(self, meter: PeakMeter, stages: dict[str, dict[str, float]]
                    ) -> Tracks | None:
        """The tracks for bundle adjustment: :attr:`tracks` here (da3 matches features)."""
        return self.tracks

    def export_extras(self) -> list[str]:
        """Further exports, as paths relative to :attr:`staging` (da3's formats)."""
        return []

    def run(self) -> WindowResult:
        """Finish the window: its model in ``staging/sparse`` and its result."""
        meter, stages, preds = PeakMeter(), dict(self.stages), self.preds
        tracks = self.make_tracks(meter, stages) if self.sfm.use_ba else self.tracks
        self._progress("bundle adjustment" if self.sfm.use_ba else "points")
        with meter.stage("bundle_adjustment", stages):
            result = run_sfm(preds, tracks, self.sfm)
        self._progress("export")
        with meter.stage("export", stages):
            write_sfm_result(result, self.staging / "sparse")
            if self.save_depth:
                save_depth_maps(self.staging / "depth", preds)
            exports = self.export_extras()
        details = {**result.details(), **self.details}
        if exports:
            details["exports"] = exports
        details["num_tracks"] = 0 if tracks is None else int(tracks.xy.shape[1])
        details["process_res"] = self.process_res
        return WindowResult(status=STATUS_OK, registered_frames=result.registered_frames,
                            num_points3D=result.num_points3D,
                            mean_reprojection_error=result.error_after or result.error_before,
                            timings={**self.timings,
                                     **{k: v["seconds"] for k, v in stages.items()},
                                     **result.timings},
                            memory=self.memory, details=details, stages=stages)


@dataclass(kw_only=True)
class Da3Job(SfmJob):
    """A DA3 window's CPU part: tracks from SIFT matching, then the shared SfM stage and the
    ``--export-format`` files."""

    features: Any = None
    """pycolmap.FeatureExtractionOptions of the matched features."""
    ratio_test: float = 0.8
    """Lowe's ratio for a match."""
    exports: ExportOptions = field(default_factory=ExportOptions)
    """What goes to ``exports/`` besides ``sparse/``."""

    def make_tracks(self, meter: Any, stages: dict[str, dict[str, float]]) -> Tracks:
        self._progress("matching")
        with meter.stage("matching", stages):
            return matched_tracks(self.preds.colors, self.features, self.ratio_test)

    def export_extras(self) -> list[str]:
        """The ``--export-format`` files of the window (``colmap`` is ``sparse/`` itself)."""
        written = write_exports(self.staging, self.preds, self.exports)
        return [str(p.relative_to(self.staging)) for p in written]


def sift_features(image: np.ndarray, options: Any) -> tuple[np.ndarray, np.ndarray]:
    """SIFT of an ``(H, W, 3)`` uint8 image: positions ``(N, 2)`` float64 in COLMAP pixels and
    descriptors ``(N, 128)`` (pycolmap's, on the CPU); ``options`` is a
    ``pycolmap.FeatureExtractionOptions``."""
    import pycolmap

    extractor = pycolmap.FeatureExtractor.create(options, pycolmap.Device.cpu)
    gray = np.asarray(np.round(image.astype(np.float32) @ [0.299, 0.587, 0.114]), np.uint8)
    keypoints, descriptors = extractor.extract_from_uint8_array(gray)
    xy = np.array([[k.x, k.y] for k in keypoints], dtype=np.float64).reshape(-1, 2)
    data = np.asarray(getattr(descriptors, "data", descriptors))
    return xy, (data.reshape(len(xy), -1) if len(xy) else np.zeros((0, 128), np.uint8))


def sift_keypoints(image: np.ndarray, options: Any) -> np.ndarray:
    """SIFT keypoint positions ``(N, 2)`` of an ``(H, W, 3)`` uint8 image, COLMAP pixels."""
    return sift_features(image, options)[0]


def save_depth_maps(folder: Path, preds: WindowPredictions) -> None:
    """``folder/<frame stem>.npz`` with float16 ``depth`` (z-depth, world units) and
    ``confidence``, on the original frame's pixel grid (0 where the network saw no pixel)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(preds.names):
        np.savez_compressed(folder / f"{Path(name).stem}.npz",
                            depth=preds.depth[i].astype(np.float16),
                            confidence=preds.depth_conf[i].astype(np.float16))


def match_descriptors(a: np.ndarray, b: np.ndarray, ratio: float) -> np.ndarray:
    """Mutual nearest neighbours of descriptors ``a`` ``(N, D)`` and ``b`` ``(M, D)`` (L2 on
    unit-normalised descriptors) whose best distance is below ``ratio`` times the second best,
    both ways. Returns ``(K, 2)`` index pairs ``(i in a, j in b)``."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), int)
    a = a.astype(np.float32) / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)
    b = b.astype(np.float32) / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-9)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * (a @ b.T), 0.0))
    best_ab, best_ba = dist.argmin(axis=1), dist.argmin(axis=0)
    two_ab = np.partition(dist, 1, axis=1)[:, :2]
    two_ba = np.partition(dist, 1, axis=0)[:2].T
    i = np.arange(len(a))
    j = best_ab
    keep = (
        (best_ba[j] == i)
        & (two_ab[:, 0] < ratio * two_ab[:, 1])
        & (two_ba[j, 0] < ratio * two_ba[j, 1])
    )
    return np.stack([i[keep], j[keep]], axis=1)


def matched_tracks(images: np.ndarray, features: Any, ratio: float) -> Tracks:
    """Tracks of a window from SIFT matching between every pair of its frames.

    Args:
        images: ``(S, H, W, 3)`` uint8 original frames.
        features: pycolmap.FeatureExtractionOptions.
        ratio: Lowe's ratio test threshold.

    Returns:
        :class:`Tracks`: pairwise matches joined into connected components; a track holding
        two keypoints of one frame is dropped; ``xy`` in original pixels (COLMAP convention; 0
        where unobserved), ``visibility`` 1 where observed and 0 elsewhere, ``query_frame`` the
        first
        observed frame.

    Raises:
        ValueError: no track spans two frames (e.g. textureless frames: no keypoint matches).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    feats = [sift_features(img, features) for img in images]
    offsets = np.cumsum([0] + [len(xy) for xy, _ in feats])
    edges = [
        match_descriptors(feats[s][1], feats[t][1], ratio) + offsets[[s, t]]
        for s in range(len(feats))
        for t in range(s + 1, len(feats))
    ]
    edges = np.concatenate(edges).reshape(-1, 2) if edges else np.zeros((0, 2), int)
    graph = coo_matrix(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(offsets[-1], offsets[-1])
    )
    _, components = connected_components(graph, directed=False)
    return _tracks_from_components(feats, offsets, components)


def _tracks_from_components(
    feats: list[tuple[np.ndarray, np.ndarray]], offsets: np.ndarray, roots: np.ndarray
) -> Tracks:
    """:class:`Tracks` of the match-graph components ``roots`` (a label per keypoint)."""
    frame_of = np.repeat(np.arange(len(feats)), np.diff(offsets))
    ids, track_of, sizes = np.unique(roots, return_inverse=True, return_counts=True)
    pairs = np.unique(np.stack([track_of, frame_of], axis=1), axis=0).reshape(-1, 2)
    frames_per_track = np.bincount(pairs[:, 0], minlength=len(ids))
    good = (sizes >= 2) & (frames_per_track == sizes)  # >= 2 frames, one keypoint per frame
    if not good.any():
        raise ValueError("no keypoint matches between the frames of the window (textureless?)")
    new_index = np.full(len(ids), -1)
    new_index[good] = np.arange(good.sum())
    s, n = len(feats), int(good.sum())
    xy, vis = np.zeros((s, n, 2)), np.zeros((s, n))
    all_xy = np.concatenate([f[0] for f in feats])
    member = new_index[track_of] >= 0
    xy[frame_of[member], new_index[track_of[member]]] = all_xy[member]
    vis[frame_of[member], new_index[track_of[member]]] = 1.0
    return Tracks(xy=xy, visibility=vis, query_frame=np.argmax(vis > 0, axis=0))
