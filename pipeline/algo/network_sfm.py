"""Structure from motion for neural reconstructors: predictions + tracks -> COLMAP scene.

A network (VGGT, later Depth Anything 3) predicts, for the S frames of a window, camera poses,
intrinsics, depth with confidence, and point tracks. This module turns them into a
``pycolmap.Reconstruction``, drops bad observations, and refines everything by bundle adjustment
(BA); or, without BA, writes a dense-ish point cloud from the predicted depth.

Conventions (used by every array of this module):

* Poses are *camera-from-world* (3, 4) matrices ``[R | t]`` in OpenCV camera axes (``x`` right,
  ``y`` down, ``z`` forward); the world frame of a window is its first frame's camera. Inputs
  whose first pose is not exactly the identity are re-anchored onto it (see
  :func:`anchor_predictions`), and the output keeps frame 0 at the identity.
* Intrinsics are (3, 3) matrices in pixels of the ORIGINAL image (not the network's grid).
* Pixels follow COLMAP: the top-left corner of the image is (0, 0), so the centre of pixel
  (col, row) is at (col + 0.5, row + 0.5) and its ray is ``K^-1 @ [col + 0.5, row + 0.5, 1]``.
* Depth is z-depth (the camera ``z`` coordinate of the surface), in the units of the poses.
* Frame ``i`` of the window (0-based) is image, camera (per-frame cameras), rig and frame id
  ``i + 1`` of the reconstruction; with a shared camera, every image uses camera 1.
* Keypoints of image ``i + 1`` are the *candidate* observations of frame ``i`` (tracks with
  ``visibility >= vis_thresh`` whose position lies inside the image), in increasing track order;
  only the inliers among them are attached to a 3D point. Keeping the outliers as keypoints lets
  a later round re-attach them once the cameras have improved.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from ..core.cameras import CAMERA_TYPES
from ..core.geometry import camera_centers, compose_poses, invert_pose

logger = logging.getLogger(__name__)

"""COLMAP camera models :class:`SfmOptions` accepts."""

_MIN_DEPTH = 1e-9
"""Camera ``z`` below which a point counts as behind the camera."""


# --------------------------------------------------------------------------------------------
# Inputs, options, results
# --------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class WindowPredictions:
    """What a network predicted for the S frames of one window, as plain arrays (no torch)."""

    names: list[str]
    """(S,) image names, as the frames are called in ``images/`` and ``sparse/``."""
    image_sizes: np.ndarray
    """(S, 2) int original image sizes ``(width, height)`` in pixels."""
    cam_from_world: np.ndarray
    """(S, 3, 4) float64 camera-from-world poses, OpenCV axes; world = frame 0's camera."""
    intrinsics: np.ndarray
    """(S, 3, 3) float64 intrinsics in ORIGINAL-image pixels, COLMAP pixel convention."""
    depth: np.ndarray | None = None
    """(S, H, W) z-depth; optional. Pixel (col, row) of a depth map with the original image's
    size is the original pixel (col, row); a map of another size must cover the whole image
    (its pixel centres map to ``(col + 0.5) * width / W``, ``(row + 0.5) * height / H``)."""
    depth_conf: np.ndarray | None = None
    """(S, H, W) confidence of ``depth`` (larger is better); optional."""
    colors: np.ndarray | None = None
    """(S, H, W, 3) uint8 RGB images on the depth grid (or the original grid when there is no
    depth), used to colour the points; optional (points are then black)."""

    def __post_init__(self) -> None:
        s = len(self.names)
        self.image_sizes = np.asarray(self.image_sizes, dtype=int)
        self.cam_from_world = np.asarray(self.cam_from_world, dtype=np.float64)
        self.intrinsics = np.asarray(self.intrinsics, dtype=np.float64)
        for name, arr, shape in (("image_sizes", self.image_sizes, (s, 2)),
                                 ("cam_from_world", self.cam_from_world, (s, 3, 4)),
                                 ("intrinsics", self.intrinsics, (s, 3, 3))):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        if s < 1 or not (np.isfinite(self.cam_from_world).all()
                         and np.isfinite(self.intrinsics).all()):
            raise ValueError("predictions need at least one frame and finite poses/intrinsics")
        if self.depth is not None and (self.depth.ndim != 3 or len(self.depth) != s):
            raise ValueError(f"depth must have shape (S={s}, H, W), got {self.depth.shape}")
        for name in ("depth_conf", "colors"):
            arr = getattr(self, name)
            if arr is not None and self.depth is not None and arr.shape[:3] != self.depth.shape:
                raise ValueError(f"{name} must share depth's (S, H, W) {self.depth.shape}, "
                                 f"got {arr.shape}")


@dataclass(kw_only=True)
class Tracks:
    """N point tracks across the S frames of a window."""

    xy: np.ndarray
    """(S, N, 2) float positions in ORIGINAL-image pixels, COLMAP convention."""
    visibility: np.ndarray
    """(S, N) float visibility score in [0, 1] (a track is observed in frame i when
    ``visibility[i] >= vis_thresh``)."""
    points3D: np.ndarray | None = None
    """(N, 3) initial world positions (world = the predictions' world); optional. Without it,
    points start from the depth at the query frame, or are triangulated."""
    query_frame: np.ndarray | None = None
    """(N,) int frame where each track was queried; default: its most visible frame."""

    def __post_init__(self) -> None:
        self.xy = np.asarray(self.xy, dtype=np.float64)
        self.visibility = np.asarray(self.visibility, dtype=np.float64)
        if self.xy.ndim != 3 or self.xy.shape[2] != 2:
            raise ValueError(f"xy must have shape (S, N, 2), got {self.xy.shape}")
        if self.visibility.shape != self.xy.shape[:2]:
            raise ValueError(f"visibility must have shape {self.xy.shape[:2]}, "
                             f"got {self.visibility.shape}")
        n = self.xy.shape[1]
        if self.points3D is not None and np.shape(self.points3D) != (n, 3):
            raise ValueError(f"points3D must have shape ({n}, 3), got {np.shape(self.points3D)}")
        if self.query_frame is not None and np.shape(self.query_frame) != (n,):
            raise ValueError(f"query_frame must have shape ({n},)")


def _default_ba_options() -> pycolmap.BundleAdjustmentOptions:
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_principal_point = False
    # one thread: Ceres on several sums in the order its threads finish (results would vary)
    options.ceres.solver_options.num_threads = 1
    return options


@dataclass(kw_only=True)
class SfmOptions:
    """Settings of the SfM stage. Which intrinsics BA refines is pycolmap's own choice in
    ``ba_options`` (``refine_focal_length``, ``refine_principal_point`` (off by default),
    ``refine_extra_params``)."""

    camera_type: str = "SIMPLE_PINHOLE"
    """COLMAP camera model: SIMPLE_PINHOLE (mean of fx, fy), PINHOLE, or SIMPLE_RADIAL (mean
    focal, k = 0 initially)."""
    shared_camera: bool = False
    """One camera for all frames (from the mean predicted intrinsics; all frames must have the
    same size) instead of one per frame."""
    vis_thresh: float = 0.2
    """Track observations with a visibility below this are dropped (never become keypoints)."""
    max_reproj_error: float = 8.0
    """Observations reprojecting farther than this (pixels) are dropped: when building from the
    predicted cameras, and after every BA round."""
    use_ba: bool = True
    """Bundle-adjust the tracks; otherwise write points from the predicted depth (no tracks)."""
    max_ba_rounds: int = 3
    """At most this many rounds of BA -> filter -> re-triangulate / re-attach observations."""
    settle_fraction: float = 0.005
    """Rounds stop once the number of observations and the mean error change by less than this
    fraction between rounds."""
    refine_intrinsics_from_round: int = 1
    """Rounds before this one adjust poses and points only; intrinsics (as ``ba_options``
    chooses) are refined from it on. From far-off predicted poses, per-frame intrinsics would
    otherwise wander along the focal-length/depth ambiguity (PINHOLE per frame: 1.2 degrees of
    relative-rotation error left instead of 0.03)."""
    max_focal_change: float = 0.2
    """A camera whose refined focal length moves more than this fraction from the prediction is
    taken as degenerate (e.g. PINHOLE per frame on a short window, where fx, fy and a stretch of
    the scene trade off): its intrinsics are reset and held fixed, and the round is re-solved."""
    min_inlier_tracks: int = 16
    """A frame with fewer inlier observations keeps its predicted pose (and intrinsics unless the
    camera is shared), is held constant in BA, and is flagged."""
    min_track_length: int = 2
    """Tracks with fewer inlier observations are dropped (at least 2)."""
    conf_thres_value: float = 5.0
    """No-BA path: depth pixels with a confidence below this are not turned into points."""
    max_points: int = 100_000
    """No-BA path: at most this many points (seeded random subsample)."""
    seed: int = 0
    """Seed of the random subsampling."""
    ba_options: pycolmap.BundleAdjustmentOptions = field(default_factory=_default_ba_options)
    """pycolmap's bundle adjustment options, passed through (default: quiet, principal point
    fixed, focal length and extra parameters refined, trivial loss)."""

    def __post_init__(self) -> None:
        if self.camera_type not in CAMERA_TYPES:
            raise ValueError(f"camera_type must be one of {CAMERA_TYPES}, got {self.camera_type!r}")
        if (not self.max_reproj_error > 0 or self.max_ba_rounds < 1
                or self.min_track_length < 2 or self.refine_intrinsics_from_round < 0):
            raise ValueError("need max_reproj_error > 0, max_ba_rounds >= 1, min_track_length "
                             ">= 2 and refine_intrinsics_from_round >= 0")
        if self.max_points < 1 or self.min_inlier_tracks < 0:
            raise ValueError("need max_points >= 1 and min_inlier_tracks >= 0")


@dataclass(kw_only=True)
class BaRound:
    """Statistics of one round of BA -> filter -> re-triangulate."""

    index: int
    """Round number, from 0."""
    constant_frames: list[int]
    """Frames (0-based) held constant in this round (frame 0's pose is always constant)."""
    error_after_ba: float | None
    """Mean reprojection error (px) of the adjusted observations right after the solve (None:
    no observation had a finite error)."""
    num_observations: int
    """Observations in the model after filtering and re-attaching."""
    num_points3D: int
    """Points in the model after filtering and re-triangulating."""
    mean_reprojection_error: float
    """Mean reprojection error (px) after filtering and re-attaching."""
    termination: str
    """Ceres' termination type."""
    seconds: float
    """Wall time of the round."""


@dataclass(kw_only=True)
class BaReport:
    """What :func:`bundle_adjust` did."""

    initial_error: float
    """Mean reprojection error (px) before BA."""
    final_error: float
    """Mean reprojection error (px) after the last round."""
    initial_observations: int
    """Observations before BA."""
    final_observations: int
    """Observations after the last round."""
    rounds: list[BaRound] = field(default_factory=list)
    """Per-round statistics."""
    flagged: dict[int, str] = field(default_factory=dict)
    """Frame (0-based) -> why it kept its predicted pose (held constant in the last round)."""
    fixed_intrinsics: list[int] = field(default_factory=list)
    """Camera ids whose intrinsics were reset to the prediction (focal length moved more than
    ``max_focal_change``)."""
    scale_factor: float = 1.0
    """Factor applied after BA to bring the model back to the starting (predicted) scale."""


@dataclass(kw_only=True)
class SfmResult:
    """A window's reconstruction and the facts worth recording."""

    reconstruction: pycolmap.Reconstruction
    """The model; world = frame 0's camera; intrinsics in original-image pixels."""
    registered_frames: list[str]
    """Names of the frames with a pose in the model (all of them: flagged ones keep the
    predicted pose)."""
    flagged_frames: dict[str, str] = field(default_factory=dict)
    """Frame name -> why its pose is the prediction and not adjusted."""
    error_before: float | None = None
    """Mean reprojection error (px) of the tracks' observations before BA (None: no tracks)."""
    error_after: float | None = None
    """Mean reprojection error (px) after BA (None: no BA)."""
    num_points3D: int = 0
    """Points in the model."""
    num_observations: int = 0
    """Observations in the model."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step: ``build``, ``ba``, ``points_from_depth``, ``write``."""
    ba_report: BaReport | None = None
    """Per-round BA statistics (None without BA)."""

    def details(self) -> dict[str, Any]:
        """JSON-ready summary for ``window_info.json``."""
        out: dict[str, Any] = {
            "flagged_frames": dict(self.flagged_frames), "error_before": self.error_before,
            "error_after": self.error_after, "num_points3D": self.num_points3D,
            "num_observations": self.num_observations}
        if self.ba_report is not None:
            out["ba_rounds"] = [{k: v for k, v in vars(r).items()} for r in self.ba_report.rounds]
        return out


# --------------------------------------------------------------------------------------------
# Cameras and the empty model
# --------------------------------------------------------------------------------------------

def anchor_predictions(cam_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the world onto frame 0's camera.

    Args:
        cam_from_world: (S, 3, 4) poses.

    Returns:
        ``(poses, new_from_old)``: (S, 3, 4) poses with ``poses[0]`` the identity, and the (3, 4)
        rigid transform mapping old world points to the new world (``cam_from_world[0]``).
    """
    new_from_old = cam_from_world[0].copy()
    return compose_poses(cam_from_world, invert_pose(new_from_old)), new_from_old


def _camera_params(k: np.ndarray, camera_type: str) -> list[float]:
    """COLMAP parameters of one (3, 3) ``k`` for ``camera_type``."""
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if camera_type == "PINHOLE":
        return [fx, fy, cx, cy]
    f = 0.5 * (fx + fy)
    return [f, cx, cy] + ([0.0] if camera_type == "SIMPLE_RADIAL" else [])


def _empty_reconstruction(preds: WindowPredictions, poses: np.ndarray, options: SfmOptions,
                          keypoints: list[np.ndarray]) -> pycolmap.Reconstruction:
    """A model with the predicted cameras and poses, and ``keypoints[i]`` (M_i, 2) per image."""
    sizes = preds.image_sizes
    if options.shared_camera and (sizes != sizes[0]).any():
        raise ValueError("shared_camera needs all frames of a window to have the same size")
    rec = pycolmap.Reconstruction()
    n_cams = 1 if options.shared_camera else len(preds.names)
    for c in range(n_cams):
        k = preds.intrinsics.mean(axis=0) if options.shared_camera else preds.intrinsics[c]
        rec.add_camera_with_trivial_rig(pycolmap.Camera(
            model=options.camera_type, width=int(sizes[c, 0]), height=int(sizes[c, 1]),
            camera_id=c + 1, params=_camera_params(k, options.camera_type)))
    for i, name in enumerate(preds.names):
        image = pycolmap.Image(name=name, keypoints=np.asarray(keypoints[i], dtype=np.float64),
                               camera_id=1 if options.shared_camera else i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(poses[i]))
    return rec


def _poses(rec: pycolmap.Reconstruction, num_frames: int) -> np.ndarray:
    """(S, 3, 4) camera-from-world poses of images 1..S."""
    return np.stack([rec.images[i + 1].cam_from_world().matrix() for i in range(num_frames)])


# --------------------------------------------------------------------------------------------
# Track table: candidate observations, projection, triangulation
# --------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class _TrackTable:
    """Candidate observations of N tracks in S frames, and where they sit in the model."""

    xy: np.ndarray
    """(S, N, 2) positions, COLMAP pixels."""
    candidate: np.ndarray
    """(S, N) bool: visible enough and inside the image."""
    keypoint: np.ndarray
    """(S, N) int index of the candidate among its image's keypoints (-1: none)."""

    @classmethod
    def from_tracks(cls, tracks: Tracks, sizes: np.ndarray, vis_thresh: float) -> _TrackTable:
        xy = tracks.xy
        inside = ((xy >= 0) & (xy <= sizes[:, None, :])).all(axis=2)
        cand = np.isfinite(xy).all(axis=2) & inside & (tracks.visibility >= vis_thresh)
        keypoint = np.where(cand, np.cumsum(cand, axis=1) - 1, -1)
        return cls(xy=xy, candidate=cand, keypoint=keypoint)

    @classmethod
    def from_reconstruction(cls, rec: pycolmap.Reconstruction, num_frames: int) -> _TrackTable:
        """One track per existing 3D point; its candidates are its current observations."""
        ids = sorted(rec.point3D_ids())
        xy = np.full((num_frames, len(ids), 2), np.nan)
        keypoint = np.full((num_frames, len(ids)), -1)
        for j, pid in enumerate(ids):
            for el in rec.points3D[pid].track.elements:
                i = el.image_id - 1
                keypoint[i, j] = el.point2D_idx
                xy[i, j] = rec.images[el.image_id].points2D[el.point2D_idx].xy
        return cls(xy=xy, candidate=keypoint >= 0, keypoint=keypoint)

    def keypoints(self) -> list[np.ndarray]:
        """Per image, the (M_i, 2) candidate positions in keypoint order."""
        return [self.xy[i, self.candidate[i]] for i in range(len(self.xy))]

    def read_points(self, rec: pycolmap.Reconstruction
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The model's points per track: (N, 3) positions (NaN: no point), (N, 3) uint8
        colours, and the (S, N) bool mask of the observations attached to them."""
        s, n = self.candidate.shape
        lookup = [dict(zip(self.keypoint[i][c], np.flatnonzero(c)))
                  for i, c in enumerate(self.candidate)]
        xyz, rgb = np.full((n, 3), np.nan), np.zeros((n, 3), np.uint8)
        attached = np.zeros((s, n), bool)
        for point in rec.points3D.values():
            for el in point.track.elements:
                j = lookup[el.image_id - 1].get(el.point2D_idx)
                if j is not None:
                    xyz[j], rgb[j] = point.xyz, point.color
                    attached[el.image_id - 1, j] = True
        return xyz, rgb, attached


def _errors(rec: pycolmap.Reconstruction, table: _TrackTable, xyz: np.ndarray) -> np.ndarray:
    """(S, N) reprojection errors (px) of the candidates; inf for non-candidates, missing
    points and points behind the camera."""
    err = np.full(table.candidate.shape, np.inf)
    poses = _poses(rec, len(table.xy))
    for i, pose in enumerate(poses):
        cam_pts = xyz @ pose[:, :3].T + pose[:, 3]
        ok = table.candidate[i] & np.isfinite(cam_pts).all(axis=1) & (cam_pts[:, 2] > _MIN_DEPTH)
        if ok.any():
            camera = rec.cameras[rec.images[i + 1].camera_id]
            proj = camera.img_from_cam(cam_pts[ok], check_cheirality=False)
            err[i, ok] = np.linalg.norm(proj - table.xy[i, ok], axis=1)
    return err


def _triangulate(rec: pycolmap.Reconstruction, table: _TrackTable, mask: np.ndarray) -> np.ndarray:
    """(N, 3) DLT triangulation from the observations in ``mask`` (S, N) (NaN: < 2 views or at
    infinity), on undistorted normalised coordinates of the model's current cameras."""
    s, n = mask.shape
    rows = np.zeros((n, 2 * s, 4))
    poses = _poses(rec, s)
    for i, pose in enumerate(poses):
        if not mask[i].any():
            continue
        camera = rec.cameras[rec.images[i + 1].camera_id]
        uv = np.zeros((n, 2))
        uv[mask[i]] = camera.cam_from_img(table.xy[i, mask[i]])
        w = mask[i][:, None].astype(float)
        rows[:, 2 * i] = w * (uv[:, :1] * pose[2] - pose[0])
        rows[:, 2 * i + 1] = w * (uv[:, 1:] * pose[2] - pose[1])
    rows /= np.maximum(np.linalg.norm(rows, axis=2, keepdims=True), 1e-12)
    hom = np.linalg.svd(rows)[2][:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        xyz = hom[:, :3] / hom[:, 3:]
    bad = (mask.sum(axis=0) < 2) | (np.abs(hom[:, 3]) < 1e-12)
    xyz[bad] = np.nan
    return xyz


def _robust_triangulate(rec: pycolmap.Reconstruction, table: _TrackTable, tracks_idx: np.ndarray,
                        max_error: float) -> np.ndarray:
    """Triangulate the tracks ``tracks_idx`` from their candidates, repeatedly dropping the
    observations far above their track's median error (gross outliers). Returns (len, 3)."""
    sub = _TrackTable(xy=table.xy[:, tracks_idx], candidate=table.candidate[:, tracks_idx],
                      keypoint=table.keypoint[:, tracks_idx])
    mask = sub.candidate.copy()
    xyz = _triangulate(rec, sub, mask)
    for _ in range(4):
        err = _errors(rec, sub, xyz)
        med = np.nanmedian(np.where(mask, err, np.nan), axis=0)
        keep = sub.candidate & (err <= np.maximum(max_error, 2.5 * med)[None])
        enough = keep.sum(axis=0) >= 2
        mask = np.where(enough[None], keep, mask)
        xyz = _triangulate(rec, sub, mask)
    return xyz


def _update_points(rec: pycolmap.Reconstruction, table: _TrackTable, xyz: np.ndarray,
                   options: SfmOptions) -> np.ndarray:
    """Keep the observations of ``xyz`` (N, 3) within ``max_reproj_error`` and re-triangulate
    tracks left with too few. Returns the (S, N) inlier mask (tracks too short: all False)."""
    err = _errors(rec, table, xyz)
    inlier = err <= options.max_reproj_error
    short = np.flatnonzero((inlier.sum(axis=0) < options.min_track_length)
                           & (table.candidate.sum(axis=0) >= options.min_track_length))
    if len(short):
        xyz[short] = _robust_triangulate(rec, table, short, options.max_reproj_error)
        err[:, short] = _errors(rec, _TrackTable(
            xy=table.xy[:, short], candidate=table.candidate[:, short],
            keypoint=table.keypoint[:, short]), xyz[short])
        inlier[:, short] = err[:, short] <= options.max_reproj_error
    inlier &= (inlier.sum(axis=0) >= options.min_track_length)[None]
    return inlier


def _set_points(rec: pycolmap.Reconstruction, table: _TrackTable, xyz: np.ndarray,
                inlier: np.ndarray, rgb: np.ndarray) -> None:
    """Replace the model's points by the tracks with any inlier (observations: ``inlier``)."""
    for pid in list(rec.point3D_ids()):
        rec.delete_point3D(pid)
    for j in np.flatnonzero(inlier.any(axis=0)):
        track = pycolmap.Track()
        for i in np.flatnonzero(inlier[:, j]):
            track.add_element(int(i + 1), int(table.keypoint[i, j]))
        rec.add_point3D(xyz[j], track, rgb[j])
    rec.update_point_3d_errors()


# --------------------------------------------------------------------------------------------
# Building the model from predictions and tracks
# --------------------------------------------------------------------------------------------

def _sample(grid: np.ndarray, xy: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Nearest-pixel lookup in ``grid`` (H, W, ...) covering an image of ``size`` (width,
    height), at (M, 2) COLMAP-pixel positions ``xy``."""
    h, w = grid.shape[:2]
    col = np.clip(np.floor(xy[:, 0] * w / size[0]), 0, w - 1).astype(int)
    row = np.clip(np.floor(xy[:, 1] * h / size[1]), 0, h - 1).astype(int)
    return grid[row, col]


def _query_frames(tracks: Tracks) -> np.ndarray:
    """(N,) frame of each track: the given query frame, else its most visible one."""
    if tracks.query_frame is not None:
        return np.asarray(tracks.query_frame, dtype=int)
    return np.argmax(tracks.visibility, axis=0)


def _initial_points(preds: WindowPredictions, tracks: Tracks, poses: np.ndarray,
                    new_from_old: np.ndarray) -> np.ndarray:
    """(N, 3) starting positions in the anchored world (NaN: triangulate later)."""
    n = tracks.xy.shape[1]
    if tracks.points3D is not None:
        return np.asarray(tracks.points3D, dtype=float) @ new_from_old[:, :3].T + new_from_old[:, 3]
    xyz = np.full((n, 3), np.nan)
    if preds.depth is None:
        return xyz
    query = _query_frames(tracks)
    for q in np.unique(query):
        j = np.flatnonzero(query == q)
        pix = tracks.xy[q, j]
        ok = np.isfinite(pix).all(axis=1)
        depth = np.full(len(j), np.nan)
        depth[ok] = _sample(preds.depth[q], pix[ok], preds.image_sizes[q])
        rays = np.c_[pix, np.ones(len(j))] @ np.linalg.inv(preds.intrinsics[q]).T
        cam = rays * np.where(depth > 0, depth, np.nan)[:, None]
        xyz[j] = (cam - poses[q, :, 3]) @ poses[q, :, :3]
    return xyz


def _track_colors(preds: WindowPredictions, tracks: Tracks) -> np.ndarray:
    """(N, 3) uint8 colour of each track at its query frame (black without ``colors``)."""
    n = tracks.xy.shape[1]
    rgb = np.zeros((n, 3), np.uint8)
    if preds.colors is None:
        return rgb
    query = _query_frames(tracks)
    pix = tracks.xy[query, np.arange(n)]
    for q in np.unique(query):
        j = np.flatnonzero((query == q) & np.isfinite(pix).all(axis=1))
        rgb[j] = _sample(preds.colors[q], pix[j], preds.image_sizes[q])
    return rgb


def build_reconstruction(preds: WindowPredictions, tracks: Tracks,
                         options: SfmOptions | None = None) -> pycolmap.Reconstruction:
    """A COLMAP model of the predicted cameras and the tracks' inlier observations.

    Cameras follow ``options.camera_type`` / ``shared_camera``; the world is moved onto frame
    0's camera. Observations below ``vis_thresh`` or outside the image are dropped; each track's
    point starts at ``tracks.points3D``, else the depth at its query frame, else a triangulation
    with the predicted cameras (re-triangulated when it leaves too few inliers); observations
    reprojecting farther than ``max_reproj_error`` are left unattached (they stay keypoints), and
    tracks with fewer than ``min_track_length`` inliers get no point.

    Raises:
        ValueError: tracks and predictions disagree on the number of frames.
    """
    options = options or SfmOptions()
    if tracks.xy.shape[0] != len(preds.names):
        raise ValueError(f"tracks cover {tracks.xy.shape[0]} frames, predictions "
                         f"{len(preds.names)}")
    poses, new_from_old = anchor_predictions(preds.cam_from_world)
    table = _TrackTable.from_tracks(tracks, preds.image_sizes, options.vis_thresh)
    rec = _empty_reconstruction(preds, poses, options, table.keypoints())
    xyz = _initial_points(preds, tracks, poses, new_from_old)
    inlier = _update_points(rec, table, xyz, options)
    _set_points(rec, table, xyz, inlier, _track_colors(preds, tracks))
    logger.debug("built %d points, %d observations from %d tracks", rec.num_points3D(),
                 rec.compute_num_observations(), tracks.xy.shape[1])
    return rec


# --------------------------------------------------------------------------------------------
# Bundle adjustment
# --------------------------------------------------------------------------------------------

def _weak_frames(rec: pycolmap.Reconstruction, num_frames: int, min_inliers: int) -> list[int]:
    """Frames (0-based) with fewer than ``min_inliers`` observations of 3D points."""
    return [i for i in range(num_frames) if rec.images[i + 1].num_points3D < min_inliers]


def _solve(rec: pycolmap.Reconstruction, options: SfmOptions, constant: list[int], *,
           refine_intrinsics: bool, fixed_cameras: list[int] = ()) -> str:
    """One BA solve; frame 0's pose and the ``constant`` frames (pose, and their own camera's
    intrinsics) stay fixed, and every camera when not ``refine_intrinsics`` (else the cameras
    of the ``fixed_cameras`` frames). The scale gauge is
    left free (Ceres' damping keeps it near the start; PYCOLMAP4.md: fixing it on two cameras
    drifts). Returns Ceres' termination type ("SKIPPED" when there is nothing to adjust)."""
    used = [i for i in range(rec.num_images()) if rec.images[i + 1].num_points3D > 0]
    if not used or rec.num_points3D() == 0:
        return "SKIPPED"
    config = pycolmap.BundleAdjustmentConfig()
    for i in used:
        config.add_image(i + 1)
    for i in set(constant) | {0}:
        if i in used:
            config.set_constant_rig_from_world_pose(rec.images[i + 1].frame_id)
    for i in used:
        if (not refine_intrinsics or i in fixed_cameras
                or (i in constant and not options.shared_camera)):
            config.set_constant_cam_intrinsics(rec.images[i + 1].camera_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.UNSPECIFIED)
    summary = pycolmap.create_default_bundle_adjuster(options.ba_options, config, rec).solve()
    return summary.termination_type.name


def _solve_guarded(rec: pycolmap.Reconstruction, options: SfmOptions, constant: list[int],
                   start_params: dict[int, np.ndarray], frozen: set[int], *,
                   refine_intrinsics: bool) -> str:
    """:func:`_solve`, then undo the intrinsics of every camera whose focal length left
    ``max_focal_change`` of its starting value (a degenerate, weakly constrained camera) and
    solve again with those cameras fixed. ``frozen`` (camera ids) collects them across rounds."""
    fixed = [i for i in range(rec.num_images()) if rec.images[i + 1].camera_id in frozen]
    termination = _solve(rec, options, constant, refine_intrinsics=refine_intrinsics,
                         fixed_cameras=fixed)
    bad = []
    for cid, cam in rec.cameras.items():
        idx = cam.focal_length_idxs()
        change = np.abs(np.asarray(cam.params)[idx] / start_params[cid][idx] - 1.0)
        if change.max() > options.max_focal_change:
            bad.append(cid)
            logger.debug("camera %d: focal length moved by %.0f%%; kept fixed", cid,
                         100 * change.max())
            cam.params = start_params[cid]
    if not bad:
        return termination
    frozen.update(bad)
    fixed = [i for i in range(rec.num_images()) if rec.images[i + 1].camera_id in frozen]
    return _solve(rec, options, constant, refine_intrinsics=refine_intrinsics,
                  fixed_cameras=fixed)


def _restore_scale(rec: pycolmap.Reconstruction, centres: np.ndarray) -> float:
    """Rescale the model about frame 0's camera (the origin) so that its camera centres are as
    far from frame 0 as the (S, 3) ``centres`` (sum of distances). Returns the factor."""
    now = np.linalg.norm(np.stack([rec.images[i + 1].projection_center()
                                   for i in range(len(centres))]), axis=1).sum()
    target = np.linalg.norm(centres, axis=1).sum()
    if not (now > 1e-12 and target > 1e-12):
        return 1.0
    factor = float(target / now)
    rec.transform(pycolmap.Sim3d(factor, pycolmap.Rotation3d(), np.zeros(3)))
    return factor


def _table_for(rec: pycolmap.Reconstruction, tracks: Tracks | None,
               options: SfmOptions) -> _TrackTable:
    """The track table of ``rec``: from ``tracks`` (checked against the keypoints) or from the
    model's own points."""
    s = rec.num_images()
    if tracks is None:
        return _TrackTable.from_reconstruction(rec, s)
    sizes = np.array([[rec.images[i + 1].camera.width, rec.images[i + 1].camera.height]
                      for i in range(s)])
    table = _TrackTable.from_tracks(tracks, sizes, options.vis_thresh)
    counts = [rec.images[i + 1].num_points2D() for i in range(s)]
    if tracks.xy.shape[0] != s or counts != list(table.candidate.sum(axis=1)):
        raise ValueError("tracks do not match the model's keypoints: build it with "
                         "build_reconstruction from the same tracks and vis_thresh")
    return table


def _stats(rec: pycolmap.Reconstruction) -> tuple[int, float]:
    """(number of observations, mean reprojection error in px) of the model."""
    rec.update_point_3d_errors()
    return rec.compute_num_observations(), float(rec.compute_mean_reprojection_error())


def bundle_adjust(rec: pycolmap.Reconstruction, options: SfmOptions | None = None, *,
                  tracks: Tracks | None = None) -> BaReport:
    """Refine ``rec`` in place: rounds of BA -> filter -> re-triangulate until settled.

    Each round holds frame 0's pose (the world) and the weak frames (fewer than
    ``min_inlier_tracks`` inliers) constant, solves (intrinsics only from round
    ``refine_intrinsics_from_round`` on), then keeps every candidate observation within
    ``max_reproj_error`` of its adjusted point (dropping outliers and re-attaching observations
    that now fit) and re-triangulates tracks left with too few. Candidates come from ``tracks``
    (the ones ``rec`` was built from), else from the model's current observations. The model's
    scale is then restored to the starting one (see :func:`_restore_scale`) and frames held
    constant get back their starting pose exactly.

    Returns:
        The per-round report; ``flagged`` lists the frames held constant in the last round.
    """
    options = options or SfmOptions()
    table = _table_for(rec, tracks, options)
    start = _poses(rec, len(table.xy))
    start_params = {cid: np.array(cam.params) for cid, cam in rec.cameras.items()}
    num_obs, err = _stats(rec)
    report = BaReport(initial_error=err, final_error=err, initial_observations=num_obs,
                      final_observations=num_obs)
    constant: list[int] = []
    frozen: set[int] = set()
    for r in range(options.max_ba_rounds):
        t0 = time.perf_counter()
        constant = _weak_frames(rec, len(table.xy), options.min_inlier_tracks)
        termination = _solve_guarded(rec, options, constant, start_params, frozen,
                                     refine_intrinsics=r >= options.refine_intrinsics_from_round)
        xyz, rgb, attached = table.read_points(rec)
        err_ba = _errors(rec, table, xyz)[attached]
        err_ba = err_ba[np.isfinite(err_ba)]
        _set_points(rec, table, xyz, _update_points(rec, table, xyz, options), rgb)
        new_obs, new_err = _stats(rec)
        report.rounds.append(BaRound(
            index=r, constant_frames=constant, num_observations=new_obs,
            error_after_ba=float(err_ba.mean()) if err_ba.size else None,
            num_points3D=rec.num_points3D(), mean_reprojection_error=new_err,
            termination=termination, seconds=time.perf_counter() - t0))
        logger.debug("BA round %d: %s", r, report.rounds[-1])
        settled = (abs(new_obs - num_obs) <= options.settle_fraction * max(num_obs, 1)
                   and abs(new_err - err) <= options.settle_fraction * max(err, 1e-9))
        num_obs, err = new_obs, new_err
        if termination == "SKIPPED" or (settled and r >= options.refine_intrinsics_from_round):
            break
    report.scale_factor = _restore_scale(rec, camera_centers(start))
    for i in constant:  # frames held constant keep their starting pose exactly
        rec.frames[rec.images[i + 1].frame_id].rig_from_world = pycolmap.Rigid3d(start[i])
    report.final_observations, report.final_error = _stats(rec)
    report.flagged = {i: _flag_reason(rec, i, options) for i in constant}
    report.fixed_intrinsics = sorted(frozen)
    return report


def _flag_reason(rec: pycolmap.Reconstruction, frame: int, options: SfmOptions) -> str:
    return (f"{rec.images[frame + 1].num_points3D} inlier observations (< min_inlier_tracks="
            f"{options.min_inlier_tracks}): kept the predicted pose, held constant in BA")


# --------------------------------------------------------------------------------------------
# Without BA: points from the predicted depth
# --------------------------------------------------------------------------------------------

def points_from_depth(preds: WindowPredictions,
                      options: SfmOptions | None = None) -> pycolmap.Reconstruction:
    """A model of the predicted cameras and world points unprojected from the predicted depth.

    Uses the depth pixels with a finite positive depth and ``depth_conf >= conf_thres_value``
    (every valid pixel when there is no confidence), at most ``max_points`` of them (a random
    subset drawn with ``options.seed``). The pixel centre of depth pixel (col, row) is mapped to
    the original image (COLMAP convention, see :class:`WindowPredictions`) and unprojected with
    the predicted (3, 3) intrinsics. Each point is observed by the frame whose depth it came
    from, at that pixel (a track of one element; the frame's keypoints are its pixels used), so
    that every frame's observations count what its depth gave.

    Raises:
        ValueError: the predictions have no depth.
    """
    options = options or SfmOptions()
    if preds.depth is None:
        raise ValueError("points_from_depth needs predicted depth")
    poses, _ = anchor_predictions(preds.cam_from_world)
    depth = np.asarray(preds.depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    if preds.depth_conf is not None:
        valid &= np.asarray(preds.depth_conf) >= options.conf_thres_value
    idx = np.flatnonzero(valid)
    if len(idx) > options.max_points:
        rng = np.random.default_rng(options.seed)
        idx = np.sort(rng.choice(len(idx), options.max_points, replace=False))
        idx = np.flatnonzero(valid)[idx]
    frame, row, col = np.unravel_index(idx, depth.shape)  # sorted by frame
    grid = np.array(depth.shape[1:][::-1], dtype=float)  # (W, H) of the depth grid
    pix = (np.c_[col, row] + 0.5) * preds.image_sizes[frame] / grid
    rec = _empty_reconstruction(preds, poses, options,
                                [pix[frame == f] for f in range(len(preds.names))])
    keypoint = np.arange(len(idx)) - np.searchsorted(frame, frame)  # its place in its frame
    k_inv = np.linalg.inv(preds.intrinsics[frame])
    rays = np.einsum("nij,nj->ni", k_inv, np.c_[pix, np.ones(len(idx))])
    cam = rays * depth[frame, row, col][:, None]
    xyz = np.einsum("nji,nj->ni", poses[frame, :, :3], cam - poses[frame, :, 3])
    rgb = (np.zeros((len(idx), 3), np.uint8) if preds.colors is None
           else np.asarray(preds.colors)[frame, row, col].astype(np.uint8))
    for p, c, f, k in zip(xyz, rgb, frame, keypoint):
        track = pycolmap.Track()
        track.add_element(int(f + 1), int(k))
        rec.add_point3D(p, track, c)
    rec.update_point_3d_errors()
    logger.debug("points_from_depth: %d of %d valid pixels", len(idx), int(valid.sum()))
    return rec


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

def run_sfm(preds: WindowPredictions, tracks: Tracks | None = None,
            options: SfmOptions | None = None) -> SfmResult:
    """Predictions (+ tracks) -> reconstruction, with statistics.

    With ``use_ba``: :func:`build_reconstruction` then :func:`bundle_adjust` (needs ``tracks``).
    Without: :func:`points_from_depth` when there is depth, else the tracks' points with the
    predicted cameras. Every frame is registered; frames too weakly observed keep their
    predicted pose and are listed in ``flagged_frames``; a window never fails here for that.

    Raises:
        ValueError: BA asked for without tracks, or neither tracks nor depth given.
    """
    options = options or SfmOptions()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if options.use_ba and tracks is None:
        raise ValueError("bundle adjustment needs tracks (or set use_ba=False)")
    if not options.use_ba and preds.depth is not None:
        rec = points_from_depth(preds, options)
        timings["points_from_depth"] = time.perf_counter() - t0
        return _result(rec, preds, timings)
    if tracks is None:
        raise ValueError("need tracks or predicted depth")
    rec = build_reconstruction(preds, tracks, options)
    timings["build"] = time.perf_counter() - t0
    before = _stats(rec)[1] if rec.compute_num_observations() else None
    if not options.use_ba:
        weak = _weak_frames(rec, len(preds.names), options.min_inlier_tracks)
        flagged = {i: _flag_reason(rec, i, options) for i in weak}
        return _result(rec, preds, timings, before=before, flagged=flagged)
    t0 = time.perf_counter()
    report = bundle_adjust(rec, options, tracks=tracks)
    timings["ba"] = time.perf_counter() - t0
    return _result(rec, preds, timings, before=before, after=report.final_error,
                   flagged=report.flagged, report=report)


def _result(rec: pycolmap.Reconstruction, preds: WindowPredictions, timings: dict[str, float],
            *, before: float | None = None, after: float | None = None,
            flagged: dict[int, str] | None = None, report: BaReport | None = None) -> SfmResult:
    flagged = flagged or {}
    for i, reason in flagged.items():
        logger.info("frame %s: %s", preds.names[i], reason)
    return SfmResult(reconstruction=rec, registered_frames=list(preds.names),
                     flagged_frames={preds.names[i]: r for i, r in sorted(flagged.items())},
                     error_before=before, error_after=after, num_points3D=rec.num_points3D(),
                     num_observations=rec.compute_num_observations(), timings=timings,
                     ba_report=report)


def write_sfm_result(result: SfmResult, sparse_dir: str | Path) -> None:
    """Write the model to ``sparse_dir`` (COLMAP binary: cameras, images, points3D, rigs,
    frames) and its points to ``sparse_dir/points.ply``; adds ``timings["write"]``."""
    t0 = time.perf_counter()
    sparse_dir = Path(sparse_dir)
    sparse_dir.mkdir(parents=True, exist_ok=True)
    result.reconstruction.write(sparse_dir)
    result.reconstruction.export_PLY(sparse_dir / "points.ply")
    result.timings["write"] = time.perf_counter() - t0
