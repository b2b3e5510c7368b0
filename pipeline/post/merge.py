"""Joining overlapping windows into one reconstruction per connected segment.

1. Each pair of windows that share registered frames is aligned by a robust Sim(3)
   (:func:`pipeline.core.geometry.robust_sim3`: weighted Umeyama with iterative reweighting) from
   correspondences made of the shared frames' cameras: centres and axis tips (see
   :func:`correspondences`), plus, where the reconstructor saved depth maps (vggt with
   ``--save-depth``), the same pixels back-projected by both windows
   (:func:`depth_correspondences`).
2. Pairs with too few shared frames, or whose alignment leaves the shared cameras far apart
   (relative to the scene depth), are not joined. Connected windows form a *segment*; failed
   windows and weak overlaps split the sequence, and every segment is written and reported
   separately, never bridged silently.
3. In a segment, transforms are chained along a spanning tree from its first window (whose world
   frame, the camera of its first frame, becomes the segment's) and then refined jointly, a
   Sim(3) pose graph solved with ``scipy.optimize.least_squares``.
4. Output per segment: ``sparse/`` (one COLMAP model, every frame once, pose averaged over the
   windows that hold it, points voxel-downsampled with the observations of the points they
   join), ``images/`` (as the windows have theirs), ``trajectory.txt`` (TUM), ``points.ply``
   and ``trajectory.png``. One segment goes straight into ``OUT/merged/``; several go into
   ``OUT/merged/segment_XXX/``. ``OUT/merged/merge.json`` reports segments and pairs.

``python -m pipeline.merge OUT`` merges an existing output folder.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from ..core.errors import DiskFullError, InputError, PipelineError
from ..core.geometry import Sim3, camera_centers, robust_sim3, tum_lines
from ..infra.files import NO_SPACE, write_json
from ..io.merged_record import MERGED_DIR, refuse_foreign_merged, window_sources
from ..io.output import open_window_model, planned_windows, read_plan
from ..io.window_folders import discard_staging, remove_stale_staging, staging_for, swap_into_place
from .merge_options import MergeOptions

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class WindowModel:
    """One finished window, as the merge sees it (all in the window's own world frame)."""

    index: int
    """Global window index."""
    frames: list[str]
    """Registered frame names, in sequence order."""
    frame_index: dict[str, int]
    """Sequence index of each registered frame."""
    poses: dict[str, np.ndarray]
    """Camera-from-world (3, 4) pose of each registered frame."""
    cameras: dict[str, pycolmap.Camera]
    """Camera (intrinsics) of each registered frame."""
    points: np.ndarray
    """(M, 3) 3D points."""
    colors: np.ndarray
    """(M, 3) uint8 RGB colours of the points."""
    scene_scale: float = 1.0
    """Median distance of the points from the cameras (normalises residuals)."""
    depth_dir: Path | None = None
    """``depth/`` folder of per-frame depth maps (``<stem>.npz``: ``depth``, ``confidence`` on
    the original pixel grid), when the reconstructor wrote one."""
    tracks: list[list[tuple[str, np.ndarray]]] = field(default_factory=list)
    """The observations of each of :attr:`points`: ``(frame name, pixel (2,))``, in the order
    of its COLMAP track."""
    images: dict[str, Path] = field(default_factory=dict)
    """The file of each registered frame in the window's ``images/`` (absent with
    ``--images none``)."""
    observations: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict)
    """Per registered frame: ``(point2D indices (K,), their pixels (K, 2), their 3D points
    (K, 3))`` of the keypoints that observe a triangulated point, indices ascending."""

    def depth(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(depth, confidence)`` ``(H, W)`` float32 of frame ``name``, or ``None``."""
        path = self.depth_dir / f"{Path(name).stem}.npz" if self.depth_dir else None
        if path is None or not path.is_file():
            return None
        with np.load(path) as data:
            return data["depth"].astype(np.float32), data["confidence"].astype(np.float32)


@dataclass(kw_only=True)
class PairAlignment:
    """The Sim(3) taking window ``b``'s world onto window ``a``'s, and how well it fits."""

    a: int
    b: int
    sim3: Sim3 | None
    shared_frames: int
    correspondences: int = 0
    dense_correspondences: int = 0
    track_correspondences: int = 0
    inliers: int = 0
    camera_error: float = float("nan")
    src: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False)
    dst: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False)
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    accepted: bool = False
    reason: str = ""

    def report(self) -> dict[str, Any]:
        return {"windows": [self.a, self.b], "shared_frames": self.shared_frames,
                "correspondences": self.correspondences,
                "dense_correspondences": self.dense_correspondences,
                "track_correspondences": self.track_correspondences, "inliers": self.inliers,
                "camera_error": None if np.isnan(self.camera_error) else self.camera_error,
                "accepted": self.accepted, "reason": self.reason,
                "scale": None if self.sim3 is None else self.sim3.scale}


def load_window_model(window_dir: Path, info: dict[str, Any]) -> WindowModel:
    """Read a finished window's COLMAP model into a :class:`WindowModel`."""
    rec = open_window_model(window_dir)
    order = {name: info["start_frame"] + i for i, name in enumerate(info["frames"])}
    point_ids = sorted(rec.point3D_ids())
    points = np.array([rec.points3D[p].xyz for p in point_ids]).reshape(-1, 3)
    colors = np.array([rec.points3D[p].color for p in point_ids], dtype=np.uint8).reshape(-1, 3)
    tracks = [[(rec.images[e.image_id].name, np.array(rec.images[e.image_id].points2D[
        e.point2D_idx].xy, dtype=float)) for e in rec.points3D[p].track.elements]
        for p in point_ids]
    poses, cameras, observations = {}, {}, {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        poses[image.name] = image.cam_from_world().matrix()
        cameras[image.name] = rec.cameras[image.camera_id]
        observations[image.name] = _observations(rec, image)
    frames = sorted(poses, key=order.__getitem__)
    centres = camera_centers(np.array([poses[n] for n in frames]))
    if len(points):
        scale = float(np.median(np.linalg.norm(points[:, None] - centres[None], axis=2)))
    else:  # no points: the camera path's extent stands in for the scene depth
        scale = float(np.linalg.norm(np.ptp(centres, axis=0)))
    depth_dir = Path(window_dir) / "depth"
    images = {n: Path(window_dir) / "images" / n for n in frames
              if (Path(window_dir) / "images" / n).is_file()}
    return WindowModel(index=info["window_index"], frames=frames,
                       depth_dir=depth_dir if depth_dir.is_dir() else None,
                       frame_index={n: order[n] for n in frames}, poses=poses, cameras=cameras,
                       points=points, colors=colors, tracks=tracks, images=images,
                       observations=observations, scene_scale=scale or 1.0)


def _observations(rec: pycolmap.Reconstruction,
                  image: pycolmap.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """See :attr:`WindowModel.observations`."""
    found = [(k, p.xy, rec.points3D[p.point3D_id].xyz)
             for k, p in enumerate(image.points2D) if p.has_point3D()]
    if not found:
        return np.zeros(0, int), np.zeros((0, 2)), np.zeros((0, 3))
    index, xy, xyz = zip(*found)
    return np.array(index), np.array(xy, dtype=float), np.array(xyz, dtype=float)


def load_windows(output_dir: Path) -> tuple[list[WindowModel], list[dict[str, Any]],
                                           list[str]]:
    """The whole, successful windows of the current run's plan; a record (``window``,
    ``error``) of every other planned window; the window folders the plan does not hold.

    Raises:
        InputError: the folder holds no run plan (see :func:`pipeline.io.output.read_plan`).
    """
    models, failed = [], []
    planned, leftovers = planned_windows(output_dir)
    for window in planned:
        if window.problem is not None:
            failed.append({"window": window.index, "error": window.problem})
            continue
        models.append(load_window_model(window.path, window.info))
    return models, failed, [str(p.relative_to(output_dir)) for p in leftovers]


def correspondences(a: WindowModel, b: WindowModel,
                    shared: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """3D-3D pairs (src in ``b``'s world, dst in ``a``'s) from the shared frames' cameras.

    Per shared frame: its camera centre, and the tips of its three camera axes drawn with a
    length ``L`` (in ``a``'s units; ``L / s0`` in ``b``'s, with ``s0`` the ratio of the shared
    centres' spreads). The axis tips carry each camera's orientation, so that the rotation is
    determined even when the shared centres lie on a line. Points each window triangulated on its
    own are not used: with the short baselines of a window, their depth depends on that window's
    focal length estimate and disagrees between windows by a few percent (points both windows
    took from the same keypoints are: see :func:`track_correspondences`).

    Returns:
        ``src`` and ``dst``, both ``(4 * len(shared), 3)``.
    """
    pa = np.array([a.poses[n] for n in shared])
    pb = np.array([b.poses[n] for n in shared])
    ca, cb = camera_centers(pa), camera_centers(pb)
    spread_a = float(np.sqrt(np.sum((ca - ca.mean(0)) ** 2)))
    spread_b = float(np.sqrt(np.sum((cb - cb.mean(0)) ** 2)))
    length_a = max(spread_a, 0.1 * a.scene_scale)
    length_b = length_a * (spread_b / spread_a if spread_a > 0 and spread_b > 0
                           else b.scene_scale / a.scene_scale)
    # rows of R are the camera axes in world coordinates
    tips_a = ca[:, None] + length_a * pa[:, :, :3]
    tips_b = cb[:, None] + length_b * pb[:, :, :3]
    return (np.concatenate([cb, tips_b.reshape(-1, 3)]),
            np.concatenate([ca, tips_a.reshape(-1, 3)]))


def depth_correspondences(a: WindowModel, b: WindowModel, shared: Sequence[str],
                          grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense 3D-3D pairs (src in ``b``, dst in ``a``): the same pixels of the shared frames
    back-projected with each window's depth, camera and pose.

    Pixels are taken on a regular grid where both windows have depth and a confidence at least
    the frame's median. Depth maps hold z-depth on the original pixel grid; pixel ``(col, row)``
    has its centre at ``(col + 0.5, row + 0.5)`` (COLMAP convention).
    """
    src, dst = [], []
    for name in shared:
        da, db = a.depth(name), b.depth(name)
        if da is None or db is None or da[0].shape != db[0].shape:
            continue
        h, w = da[0].shape
        rows, cols = np.meshgrid(np.linspace(0, h - 1, max(2, grid * h // w)).astype(int),
                                 np.linspace(0, w - 1, grid).astype(int), indexing="ij")
        ok = np.ones(rows.shape, bool)
        for depth, conf in (da, db):
            ok &= (depth[rows, cols] > 0) & (conf[rows, cols] >= np.median(conf[conf > 0]))
        pixels = np.stack([cols[ok] + 0.5, rows[ok] + 0.5, np.ones(ok.sum())], axis=1)
        for model, (depth, _), out in ((a, da, dst), (b, db, src)):
            rays = pixels @ np.linalg.inv(model.cameras[name].calibration_matrix()).T
            cam_points = rays * depth[rows[ok], cols[ok]][:, None]
            pose = model.poses[name]
            out.append((cam_points - pose[:, 3]) @ pose[:, :3])  # R^T (X - t)
    if not src:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(src), np.concatenate(dst)


def track_correspondences(a: WindowModel, b: WindowModel, shared: Sequence[str],
                          max_pixel_distance: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """3D-3D pairs (src in ``b``, dst in ``a``): the points that both windows triangulated from
    the same keypoint of a shared frame.

    A keypoint is the same when its index and its pixel (within ``max_pixel_distance``) agree:
    windows whose keypoints come from the same extraction (the classical reconstructor's
    feature store) share them, windows with keypoints of their own (network tracks) do not, and
    then no pair is found. Such points were triangulated over whole chunks of the sequence, so
    they fix the scale between windows far better than a few close camera centres.
    """
    src, dst = [], []
    for name in shared:
        (ia, xa, pa), (ib, xb, pb) = a.observations.get(name, _NO_OBS), b.observations.get(
            name, _NO_OBS)
        common, at_a, at_b = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
        same = np.linalg.norm(xa[at_a] - xb[at_b], axis=1) <= max_pixel_distance
        src.append(pb[at_b][same])
        dst.append(pa[at_a][same])
    if not src:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(src), np.concatenate(dst)


_NO_OBS = (np.zeros(0, int), np.zeros((0, 2)), np.zeros((0, 3)))


def overlapping_pairs(models: Sequence[WindowModel]) -> list[tuple[WindowModel, WindowModel]]:
    """Pairs of windows (in window order) that share at least one registered frame."""
    pairs = []
    for i, a in enumerate(models):
        last = max(a.frame_index.values())
        for b in models[i + 1:]:
            if min(b.frame_index.values()) > last:
                break
            if a.frame_index.keys() & b.frame_index.keys():
                pairs.append((a, b))
    return pairs


def align_pair(a: WindowModel, b: WindowModel, options: MergeOptions) -> PairAlignment:
    """Estimate the Sim(3) from ``b``'s world to ``a``'s and judge whether to trust it."""
    shared = [n for n in a.frames if n in b.poses]
    pair = PairAlignment(a=a.index, b=b.index, sim3=None, shared_frames=len(shared))
    if len(shared) < options.min_shared_frames:
        pair.reason = f"{len(shared)} shared registered frames (< {options.min_shared_frames})"
        return pair
    src, dst = correspondences(a, b, shared)
    weights = np.ones(len(src))
    cameras = len(weights)
    dense_src, dense_dst = depth_correspondences(a, b, shared, options.depth_grid)
    track_src, track_dst = track_correspondences(a, b, shared)
    for extra_src, extra_dst in ((dense_src, dense_dst), (track_src, track_dst)):
        if len(extra_src):  # each kind of point together weighs as much as the cameras
            src, dst = np.concatenate([src, extra_src]), np.concatenate([dst, extra_dst])
            weights = np.concatenate([weights, np.full(len(extra_src), cameras / len(extra_src))])
    try:
        fit = robust_sim3(src, dst, weights, loss="cauchy")
    except ValueError as exc:
        pair.reason = f"alignment failed: {exc}"
        return pair
    n = len(shared)
    cam_res = fit.residuals[:n]
    pair.sim3, pair.src, pair.dst, pair.weights = fit.sim3, src, dst, weights * fit.weights
    pair.correspondences, pair.inliers = len(src), int(fit.inliers.sum())
    pair.dense_correspondences = len(dense_src)
    pair.track_correspondences = len(track_src)
    pair.camera_error = float(np.sqrt(np.mean(cam_res ** 2)) / a.scene_scale)
    pair.accepted = pair.camera_error <= options.max_camera_error
    if not pair.accepted:
        pair.reason = (f"shared cameras differ by {100 * pair.camera_error:.1f}% of the scene "
                       f"depth after alignment (> {100 * options.max_camera_error:.1f}%)")
    return pair


def find_segments(models: Sequence[WindowModel],
                  pairs: Sequence[PairAlignment]) -> list[list[int]]:
    """Connected groups of windows (by accepted pairs), each sorted, in window order."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    slot = {m.index: i for i, m in enumerate(models)}
    edges = np.array([(slot[p.a], slot[p.b]) for p in pairs if p.accepted], int).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])),
                       shape=(len(models), len(models)))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for m, label in zip(models, labels):
        groups.setdefault(label, []).append(m.index)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def chain_transforms(segment: Sequence[int], pairs: Sequence[PairAlignment]) -> dict[int, Sim3]:
    """Window-to-segment transforms along a breadth-first spanning tree from ``segment[0]``."""
    edges: dict[int, list[tuple[int, Sim3]]] = {i: [] for i in segment}
    for pair in pairs:
        if pair.accepted and pair.a in edges and pair.b in edges:
            edges[pair.a].append((pair.b, pair.sim3))            # b -> a
            edges[pair.b].append((pair.a, pair.sim3.inverse()))  # a -> b
    transforms = {segment[0]: Sim3.identity()}
    queue = [segment[0]]
    while queue:
        current = queue.pop(0)
        for neighbour, neighbour_to_current in sorted(edges[current], key=lambda e: e[0]):
            if neighbour not in transforms:
                transforms[neighbour] = transforms[current].compose(neighbour_to_current)
                queue.append(neighbour)
    return transforms


def _pack(sim: Sim3) -> np.ndarray:
    return np.concatenate([Rotation.from_matrix(sim.rotation).as_rotvec(), [np.log(sim.scale)],
                           sim.translation])


def _matrix(x: np.ndarray) -> np.ndarray:
    """(4, 4) matrix of packed Sim(3) parameters (rotation vector, log scale, translation)."""
    m = np.eye(4)
    m[:3, :3] = np.exp(x[3]) * Rotation.from_rotvec(x[:3]).as_matrix()
    m[:3, 3] = x[4:7]
    return m


def _unpack(x: np.ndarray) -> Sim3:
    return Sim3(scale=float(np.exp(x[3])), rotation=Rotation.from_rotvec(x[:3]).as_matrix(),
                translation=x[4:7])


def _jacobian_sparsity(pairs: Sequence[PairAlignment], slot: dict[int, int]):
    """Which parameters each residual depends on: the 7 of window ``a`` and of window ``b``."""
    from scipy.sparse import lil_matrix

    rows = sum(3 * len(p.src) for p in pairs)
    pattern = lil_matrix((rows, 7 * len(slot)), dtype=np.int8)
    row = 0
    for p in pairs:
        n = 3 * len(p.src)
        for w in (p.a, p.b):
            if w in slot:
                pattern[row:row + n, 7 * slot[w]:7 * slot[w] + 7] = 1
        row += n
    return pattern


def refine_transforms(segment: Sequence[int], transforms: dict[int, Sim3],
                      pairs: Sequence[PairAlignment],
                      scales: dict[int, float]) -> dict[int, Sim3]:
    """Jointly refine window transforms: a Sim(3) pose graph over the pairs' correspondences.

    Each pair contributes, per correspondence, ``(T_a^-1 T_b)(x_b) - x_a`` in window ``a``'s
    units divided by its scene scale, with the pair's robust weights and a soft-L1 loss. The
    first window stays fixed (gauge). Returns the refined transforms.
    """
    free = list(segment[1:])
    used = [p for p in pairs if p.accepted and p.a in transforms and p.b in transforms]
    if not free or len(used) < len(segment):  # a tree: chaining is already optimal
        return transforms
    slot = {w: i for i, w in enumerate(free)}
    fixed = {w: transforms[w].as_matrix() for w in segment if w not in slot}
    src = [np.c_[p.src, np.ones(len(p.src))] for p in used]  # homogeneous (n, 4)
    sqrt_w = [np.sqrt(p.weights)[:, None] / scales[p.a] for p in used]

    def residuals(x: np.ndarray) -> np.ndarray:
        mats = {**fixed, **{w: _matrix(x[7 * i:7 * i + 7]) for w, i in slot.items()}}
        out = [(((np.linalg.inv(mats[p.a]) @ mats[p.b]) @ s.T).T[:, :3] - p.dst) * w
               for p, s, w in zip(used, src, sqrt_w)]
        return np.concatenate(out).ravel()

    x0 = np.concatenate([_pack(transforms[w]) for w in free])
    sol = least_squares(residuals, x0, loss="soft_l1", f_scale=0.01, max_nfev=100,
                        jac_sparsity=_jacobian_sparsity(used, slot), ftol=1e-6, xtol=1e-8)
    logger.info("pose graph: %d windows, %d pairs, cost %.3g -> %.3g in %d evaluations",
                len(segment), len(used), 0.5 * np.sum(residuals(x0) ** 2), sol.cost, sol.nfev)
    refined = {w: _unpack(sol.x[7 * i:7 * i + 7]) for w, i in slot.items()}
    return {w: refined.get(w, transforms[w]) for w in segment}


def average_poses(poses: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of camera-from-world poses: chordal mean orientation, mean camera centre."""
    poses = np.asarray(poses)
    rotation = Rotation.from_matrix(poses[:, :, :3]).mean().as_matrix()
    centre = camera_centers(poses).mean(axis=0)
    return np.concatenate([rotation, (-rotation @ centre)[:, None]], axis=1)


def voxel_downsample(points: np.ndarray, colors: np.ndarray, fraction: float
                     ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """One point per occupied voxel (mean position and colour); returns points, colours, the
    voxel size and, for each input point, the output point it went into ``(M,)``."""
    if len(points) == 0:
        return points, colors, 0.0, np.zeros(0, int)
    lo, hi = np.percentile(points, [1, 99], axis=0)
    size = float(np.linalg.norm(hi - lo)) * fraction
    if size <= 0:
        return points, colors, 0.0, np.arange(len(points))
    keys = np.floor((points - lo) / size).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, points)
    csum = np.zeros((len(counts), 3))
    np.add.at(csum, inverse, colors.astype(np.float64))
    return (sums / counts[:, None], np.round(csum / counts[:, None]).astype(np.uint8), size,
            inverse)


def merge_tracks(tracks: Sequence[list[tuple[str, np.ndarray]]], groups: np.ndarray,
                 count: int) -> list[list[tuple[str, np.ndarray]]]:
    """The observations of each of ``count`` merged points: those of the points that went
    into it (``groups``), one per frame (the first met: windows in order), so that no track
    sees a frame twice."""
    merged: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    for track, group in zip(tracks, groups):
        for name, xy in track:
            merged[group].setdefault(name, xy)
    return [list(m.items()) for m in merged]


@dataclass(kw_only=True)
class Segment:
    """One merged, connected part of the sequence, in the world frame of its first window."""

    windows: list[int]
    """Window indices joined in this segment."""
    names: list[str]
    """Frame names, in sequence order, each once."""
    frame_index: list[int]
    """Sequence index of each frame."""
    poses: np.ndarray
    """(N, 3, 4) camera-from-world poses."""
    cameras: list[pycolmap.Camera]
    """Camera of each frame."""
    points: np.ndarray
    """(M, 3) voxel-downsampled points."""
    colors: np.ndarray
    """(M, 3) uint8 colours."""
    tracks: list[list[tuple[str, np.ndarray]]] = field(default_factory=list)
    """The observations of each point: ``(frame name, pixel)``, each frame once."""
    images: dict[str, Path] = field(default_factory=dict)
    """A window's file of each frame (see :attr:`WindowModel.images`)."""
    voxel_size: float = 0.0
    """Voxel edge used for downsampling (segment units)."""


def build_segment(models: dict[int, WindowModel], transforms: dict[int, Sim3],
                  options: MergeOptions) -> Segment:
    """Frames (each once, pose averaged over its windows) and points of one segment."""
    per_frame: dict[str, list[np.ndarray]] = {}
    camera, index = {}, {}
    for w, sim in sorted(transforms.items()):
        model = models[w]
        for name in model.frames:
            per_frame.setdefault(name, []).append(sim.transform_poses(model.poses[name]))
            camera.setdefault(name, model.cameras[name])
            index[name] = model.frame_index[name]
    names = sorted(per_frame, key=index.__getitem__)
    windows = sorted(transforms)
    points = np.concatenate([transforms[w].apply(models[w].points) for w in windows])
    colors = np.concatenate([models[w].colors for w in windows])
    tracks = [track for w in windows for track in models[w].tracks]
    images: dict[str, Path] = {}
    for w in windows:
        for name, path in models[w].images.items():
            images.setdefault(name, path)
    points, colors, voxel, groups = voxel_downsample(points, colors, options.voxel_fraction)
    return Segment(windows=windows, names=names, frame_index=[index[n] for n in names],
                   poses=np.array([average_poses(per_frame[n]) for n in names]),
                   cameras=[camera[n] for n in names], points=points, colors=colors,
                   tracks=merge_tracks(tracks, groups, len(points)) if len(tracks) == len(groups)
                   else [[] for _ in points], images=images, voxel_size=voxel)


def segment_reconstruction(segment: Segment) -> pycolmap.Reconstruction:
    """A COLMAP model of the segment: one camera and image per frame, and points whose tracks
    keep the observations of the window points they merge (each image's keypoints are those
    observations, in point order)."""
    image_id = {name: i + 1 for i, name in enumerate(segment.names)}
    keypoints: dict[str, list[np.ndarray]] = {name: [] for name in segment.names}
    elements = []
    for track in segment.tracks or [[] for _ in segment.points]:
        elements.append([])
        for name, xy in track:
            if name in keypoints:
                elements[-1].append((image_id[name], len(keypoints[name])))
                keypoints[name].append(xy)
    rec = pycolmap.Reconstruction()
    for i, (name, pose, cam) in enumerate(zip(segment.names, segment.poses, segment.cameras)):
        camera = pycolmap.Camera(model=cam.model_name, width=cam.width, height=cam.height,
                                 params=cam.params, camera_id=i + 1)
        rec.add_camera_with_trivial_rig(camera)
        xy = np.array(keypoints[name], dtype=float).reshape(-1, 2)
        image = pycolmap.Image(name=name, keypoints=xy, camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pose))
    for xyz, rgb, observed in zip(segment.points, segment.colors, elements):
        track = pycolmap.Track()
        for element in observed:
            track.add_element(*element)
        rec.add_point3D(xyz, track, rgb)
    rec.update_point_3d_errors()
    return rec


def write_images(images: dict[str, Path], folder: Path) -> None:
    """``images/`` of a merged scene as the windows have theirs: a link to the same frame
    where the window links (``--images link``), a copy where it copied; nothing for frames
    the windows keep no file of (``--images none``)."""
    for name, path in sorted(images.items()):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            target.symlink_to(path.resolve())
        else:
            shutil.copy2(path, target)


def write_segment(segment: Segment, out_dir: Path,
                  timestamps: dict[str, float] | None = None, *, name: str | None = None) -> None:
    """``sparse/``, ``images/``, ``points.ply``, ``trajectory.txt`` (+ names) and
    ``trajectory.png`` (titled ``name``, default the folder's: the name it will have once in
    place, when ``out_dir`` is a staging folder).

    ``timestamps`` (frame name -> index in the input folder, or video time in seconds, from the
    run plan) stamp the trajectory; without them, the position in the run's sequence does."""
    from ..io.plots import plot_trajectory

    out_dir.mkdir(parents=True, exist_ok=True)
    rec = segment_reconstruction(segment)
    (out_dir / "sparse").mkdir(exist_ok=True)
    rec.write(out_dir / "sparse")
    write_images(segment.images, out_dir / "images")
    rec.export_PLY(out_dir / "points.ply")
    stamps: list[float] = list(segment.frame_index)
    meaning = "position in the run's sequence"
    if timestamps and all(timestamps.get(n) is not None for n in segment.names):
        stamps = [timestamps[n] for n in segment.names]
        meaning = ("index of the frame in the input folder" if
                   all(float(t).is_integer() for t in stamps) else "video time in seconds")
        stamps = [int(t) if float(t).is_integer() else float(t) for t in stamps]
    (out_dir / "trajectory.txt").write_text(
        "\n".join(tum_lines(stamps, segment.poses, meaning=meaning)) + "\n")
    (out_dir / "trajectory_names.txt").write_text("\n".join(segment.names) + "\n")
    plot_trajectory(out_dir / "trajectory.png", camera_centers(segment.poses),
                    title=f"{name or out_dir.name}: {len(segment.names)} frames, windows "
                          f"{segment.windows[0]}-{segment.windows[-1]}",
                    units="scene units")


def merge_output(output_dir: Path, options: MergeOptions | None = None) -> dict[str, Any]:
    """Merge the finished windows of ``output_dir`` into ``output_dir/merged``.

    Returns:
        The report also written to ``merged/merge.json``.

    Raises:
        InputError: the folder holds no successful window, or a ``merged/`` no merge made.
    """
    options = options or MergeOptions()
    output_dir = Path(output_dir)
    refuse_foreign_merged(output_dir)  # the user's own folder is never replaced
    sources = window_sources(output_dir)  # what merged/ is made from, for later runs to check
    models, failed, leftovers = load_windows(output_dir)
    if not models:
        raise InputError(f"no successful windows to merge in {output_dir}")
    pairs = [align_pair(a, b, options) for a, b in overlapping_pairs(models)]
    segments = find_segments(models, pairs)
    merged = output_dir / MERGED_DIR
    remove_stale_staging(output_dir)  # what a killed merge left
    staging = staging_for(merged)  # built whole, then swapped in: never a partial merged/
    discard_staging(staging)
    try:
        report = _write_merged(output_dir, staging, models, failed, leftovers, pairs,
                               segments, options, sources)
        swap_into_place(staging, merged)
    except OSError as exc:
        discard_staging(staging)
        if exc.errno in NO_SPACE and not isinstance(exc, DiskFullError):
            raise DiskFullError(merged, exc) from exc
        if isinstance(exc, PipelineError):
            raise
        raise InputError(f"cannot write {exc.filename or merged}: {exc.strerror or exc}") \
            from exc
    except BaseException:  # Ctrl-C, SIGTERM, a defect: merged/ stays as it was, nothing left
        discard_staging(staging)
        raise
    if len(segments) > 1:
        logger.warning("the windows form %d separate segments (failed windows or weak overlaps); "
                       "each is written to %s/segment_XXX", len(segments), merged)
    return report


def _write_merged(output_dir: Path, staging: Path, models: list[Any], failed: Any,
                  leftovers: Any, pairs: list[Any], segments: list[list[int]],
                  options: MergeOptions, sources: dict[str, str | None]) -> dict[str, Any]:
    """Write every segment and ``merge.json`` into ``staging`` (``merged/`` to be); the report
    names the folders as they will be once ``staging`` is in place."""
    timestamps = {f.get("name"): f.get("timestamp") for f in read_plan(output_dir)["frames"]
                  if isinstance(f, dict)}
    by_index = {m.index: m for m in models}
    scales = {m.index: m.scene_scale for m in models}
    report: dict[str, Any] = {"options": asdict(options), "failed_windows": failed,
                              "ignored_folders": leftovers,
                              "pairs": [p.report() for p in pairs], "segments": [],
                              "sources": sources}
    for k, windows in enumerate(segments):
        transforms = chain_transforms(windows, pairs)
        if options.refine:
            transforms = refine_transforms(windows, transforms, pairs, scales)
        segment = build_segment(by_index, transforms, options)
        relative = Path() if len(segments) == 1 else Path(f"segment_{k:03d}")
        write_segment(segment, staging / relative, timestamps,
                      name=str(MERGED_DIR / relative))
        report["segments"].append({
            "path": str(MERGED_DIR / relative), "windows": windows,
            "frames": len(segment.names), "first_frame": segment.names[0],
            "last_frame": segment.names[-1], "points": len(segment.points),
            "voxel_size": segment.voxel_size})
    write_json(staging / "merge.json", report)
    return report
