"""Trajectory geometry: similarity transforms, pose conversions, and trajectory error metrics.

Conventions (used by every function in this module):

* Camera frame: OpenCV axes, ``x`` right, ``y`` down, ``z`` forward (optical axis).
* A pose is *camera-from-world*, a (3, 4) matrix ``[R | t]`` with ``x_cam = R @ x_world + t``;
  a stack of N poses has shape (N, 3, 4). The camera centre is ``c = -R.T @ t``.
* A similarity ``S`` (:class:`Sim3`) maps points ``x -> s * Q @ x + u`` (scale ``s > 0``,
  proper rotation ``Q``, translation ``u``).
* Quaternions are unit quaternions; the component order is always in the function name:
  ``xyzw`` (scalar last, TUM and scipy) or ``wxyz`` (scalar first, COLMAP). Returned quaternions
  have a non-negative scalar part.
* Angles are in degrees.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.spatial.transform import Rotation

logger = logging.getLogger(__name__)

ALIGN_MODES = ("sim3", "se3", "none")
"""Alignments :func:`ate` accepts: similarity, rigid (no scale), or none."""

ROBUST_LOSSES = ("huber", "cauchy")
"""Losses :func:`robust_sim3` accepts."""

_LOSS_TUNING = {"huber": 1.345, "cauchy": 2.385}
_MAD_TO_SIGMA = 1.4826


# --------------------------------------------------------------------------------------------
# Sim(3)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Sim3:
    """A similarity transform ``x -> scale * rotation @ x + translation`` of 3D points."""

    scale: float = 1.0
    """Positive scale factor ``s``."""
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    """(3, 3) proper rotation ``Q`` (orthonormal, determinant +1)."""
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """(3,) translation ``u``."""

    def __post_init__(self) -> None:
        rot = np.asarray(self.rotation, dtype=float)
        trans = np.asarray(self.translation, dtype=float).reshape(-1)
        if rot.shape != (3, 3) or trans.shape != (3,):
            raise ValueError(f"Sim3 needs a (3, 3) rotation and a (3,) translation, "
                             f"got {rot.shape} and {trans.shape}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Sim3 scale must be positive and finite, got {self.scale}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "rotation", rot)
        object.__setattr__(self, "translation", trans)

    @classmethod
    def identity(cls) -> Sim3:
        """The identity transform."""
        return cls()

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Sim3:
        """From a (4, 4) or (3, 4) matrix ``[s Q | u]`` (the inverse of :meth:`as_matrix`)."""
        m = np.asarray(matrix, dtype=float)
        if m.shape not in ((3, 4), (4, 4)):
            raise ValueError(f"expected a (3, 4) or (4, 4) matrix, got {m.shape}")
        det = np.linalg.det(m[:3, :3])
        if not det > 0:
            raise ValueError("the linear part of a Sim3 matrix must have a positive determinant")
        scale = det ** (1.0 / 3.0)
        return cls(scale=scale, rotation=m[:3, :3] / scale, translation=m[:3, 3])

    def as_matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix ``[[s Q, u], [0, 1]]``."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points of shape (..., 3); returns the same shape."""
        p = np.asarray(points, dtype=float)
        if p.shape[-1:] != (3,):
            raise ValueError(f"points must have shape (..., 3), got {p.shape}")
        return self.scale * p @ self.rotation.T + self.translation

    def inverse(self) -> Sim3:
        """The inverse transform: ``x -> (Q.T @ (x - u)) / s``."""
        rot_t = self.rotation.T
        return Sim3(scale=1.0 / self.scale, rotation=rot_t,
                    translation=-(rot_t @ self.translation) / self.scale)

    def compose(self, other: Sim3) -> Sim3:
        """``self ∘ other``: the transform applying ``other`` first, then ``self``."""
        return Sim3(scale=self.scale * other.scale, rotation=self.rotation @ other.rotation,
                    translation=self.scale * self.rotation @ other.translation + self.translation)

    def transform_poses(self, cam_from_world: np.ndarray) -> np.ndarray:
        """Camera-from-world poses expressed in the transformed world ``x' = s Q x + u``.

        Derivation: ``x = Q.T (x' - u) / s``, so ``x_cam = R Q.T (x' - u) / s + t``. Camera
        coordinates are rescaled by ``s`` (``x_cam' = s x_cam``, which leaves every pixel
        unchanged because projection divides by depth) to keep the pose rigid:

            ``R' = R Q.T``,  ``t' = s t - R Q.T u``,

        hence the camera centre becomes ``c' = s Q c + u`` (it moves with the world) and the
        orientation rotates by ``Q``. Points ``S(X)`` seen by the new poses project to the same
        pixels as ``X`` seen by the old ones.

        Args:
            cam_from_world: (3, 4) or (N, 3, 4) poses ``[R | t]``.

        Returns:
            Poses of the same shape.
        """
        poses = _as_poses(cam_from_world)
        new_rot = poses[..., :3] @ self.rotation.T
        new_t = self.scale * poses[..., 3] - new_rot @ self.translation
        return np.concatenate([new_rot, new_t[..., None]], axis=-1)


# --------------------------------------------------------------------------------------------
# Umeyama and its robust variant
# --------------------------------------------------------------------------------------------

def _check_point_pairs(src: np.ndarray, dst: np.ndarray,
                       weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate (N, 3) point pairs and (N,) weights; returns float arrays (weights default 1)."""
    src = np.asarray(src, dtype=float)
    dst = np.asarray(dst, dtype=float)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"src and dst must both have shape (N, 3), got {src.shape} and "
                         f"{dst.shape}")
    if src.shape[0] < 3:
        raise ValueError(f"need at least 3 point pairs, got {src.shape[0]}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("src and dst must be finite (no NaN or inf)")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(src),):
        raise ValueError(f"weights must have shape ({len(src)},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    if np.count_nonzero(w) < 3:
        raise ValueError("need at least 3 point pairs with a positive weight")
    return src, dst, w


def umeyama_sim3(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, *,
                 with_scale: bool = True) -> Sim3:
    """Weighted least-squares similarity (Umeyama 1991) with ``dst ≈ s R src + t``.

    Minimises ``sum_i w_i ||dst_i - (s R src_i + t)||^2`` over proper rotations ``R`` (a
    reflection is never returned), ``t``, and ``s > 0`` (``s = 1`` when ``with_scale`` is false).
    Collinear ``src`` points are accepted: the rotation about their line is then not unique, but
    the returned transform is still a minimiser (the aligned points are unique).

    Args:
        src: (N, 3) points to move, N >= 3.
        dst: (N, 3) target points, paired with ``src`` row by row.
        weights: (N,) non-negative weights (at least 3 positive); uniform when ``None``.
        with_scale: Estimate the scale (Sim(3)); otherwise a rigid SE(3) fit.

    Raises:
        ValueError: on mismatched shapes, fewer than 3 (positively weighted) pairs, non-finite
            values, or degenerate input (all weighted ``src`` or ``dst`` points coincide).
    """
    src, dst, w = _check_point_pairs(src, dst, weights)
    w = w / w.sum()
    mu_src, mu_dst = w @ src, w @ dst
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = float(w @ np.einsum("ij,ij->i", src_c, src_c))
    var_dst = float(w @ np.einsum("ij,ij->i", dst_c, dst_c))
    tiny = 1e-24
    if var_src <= tiny * max(1.0, float(np.max(np.abs(src))) ** 2):
        raise ValueError("degenerate input: all (weighted) src points coincide")
    if var_dst <= tiny * max(1.0, float(np.max(np.abs(dst))) ** 2):
        raise ValueError("degenerate input: all (weighted) dst points coincide")
    cov = (dst_c * w[:, None]).T @ src_c
    u_mat, sing, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(u_mat) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rot = (u_mat * sign) @ vt
    scale = float(sing @ sign) / var_src if with_scale else 1.0
    if not scale > 0:
        raise ValueError("degenerate input: the best-fitting scale is not positive")
    return Sim3(scale=scale, rotation=rot, translation=mu_dst - scale * rot @ mu_src)


@dataclass(kw_only=True)
class RobustSim3Result:
    """Outcome of :func:`robust_sim3`."""

    sim3: Sim3
    """The final transform (``dst ≈ sim3.apply(src)``)."""
    weights: np.ndarray
    """(N,) final robust weights in [0, 1] (not multiplied by the prior weights)."""
    residuals: np.ndarray
    """(N,) final residual norms ``||dst_i - sim3.apply(src_i)||``."""
    inliers: np.ndarray
    """(N,) bool: ``residuals <= inlier_threshold``."""
    scale_param: float
    """The loss scale ``k`` of the last iteration (given, or the robust default)."""
    inlier_threshold: float
    """``3 * scale_param``."""
    iterations: int
    """Reweighting iterations run."""
    converged: bool
    """Whether the transform stopped changing (see ``tol``) within ``max_iters``."""


def _robust_weights(residuals: np.ndarray, k: float, loss: str) -> np.ndarray:
    """IRLS weights ``psi(r) / r`` of the Huber or Cauchy loss with scale ``k``."""
    if loss == "huber":
        return np.minimum(1.0, k / np.maximum(residuals, 1e-300))
    return 1.0 / (1.0 + (residuals / k) ** 2)


def robust_sim3(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None, *,
                loss: Literal["huber", "cauchy"] = "huber", scale_param: float | None = None,
                max_iters: int = 20, with_scale: bool = True, tol: float = 1e-9
                ) -> RobustSim3Result:
    """Robust similarity ``dst ≈ s R src + t`` by iteratively reweighted :func:`umeyama_sim3`.

    Starts from the weighted least-squares fit, then alternates: residual norms ``r_i`` ->
    robust weights ``psi(r_i) / r_i`` (times the prior ``weights``) -> weighted Umeyama.

    Loss scale ``k``: ``scale_param`` when given (residual norm where the loss stops being
    quadratic, in ``dst`` units); otherwise re-estimated every iteration as ``c * sigma`` with
    the robust spread ``sigma = 1.4826 * median(r)`` (median absolute residual) and ``c = 1.345``
    (Huber) or ``2.385`` (Cauchy), floored at ``1e-9 * (1 + extent of dst)`` so that an exact
    fit does not divide by zero.

    Args:
        src, dst, weights, with_scale: As in :func:`umeyama_sim3`.
        loss: ``"huber"`` (convex, outliers keep weight ``k / r``) or ``"cauchy"``
            (redescending, stronger rejection of gross outliers).
        scale_param: Fixed loss scale ``k`` > 0, or ``None`` for the robust default.
        max_iters: Maximum reweighting iterations (>= 1).
        tol: Stop when no transformed ``src`` point moves by more than
            ``tol * (1 + extent of dst)`` between iterations (extent: bounding-box diagonal).

    Raises:
        ValueError: on invalid options or the inputs :func:`umeyama_sim3` rejects.
    """
    if loss not in ROBUST_LOSSES:
        raise ValueError(f"loss must be one of {ROBUST_LOSSES}, got {loss!r}")
    if scale_param is not None and not (np.isfinite(scale_param) and scale_param > 0):
        raise ValueError(f"scale_param must be positive, got {scale_param}")
    if max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    src, dst, prior = _check_point_pairs(src, dst, weights)
    extent = 1.0 + bbox_diagonal(dst)
    floor = 1e-9 * extent
    sim = umeyama_sim3(src, dst, prior, with_scale=with_scale)
    moved = sim.apply(src)
    robust_w = np.ones(len(src))
    converged, it, k = False, 0, float(scale_param or floor)
    for it in range(1, max_iters + 1):  # noqa: B007 - the count is reported after the loop
        res = np.linalg.norm(dst - moved, axis=1)
        if scale_param is None:
            k = max(_LOSS_TUNING[loss] * _MAD_TO_SIGMA * float(np.median(res[prior > 0])), floor)
        robust_w = _robust_weights(res, k, loss)
        sim = umeyama_sim3(src, dst, prior * robust_w, with_scale=with_scale)
        new_moved = sim.apply(src)
        change = float(np.max(np.linalg.norm(new_moved - moved, axis=1)))
        moved = new_moved
        if change <= tol * extent:
            converged = True
            break
    res = np.linalg.norm(dst - sim.apply(src), axis=1)
    logger.debug("robust_sim3: %d iterations, converged=%s, k=%.3g", it, converged, k)
    return RobustSim3Result(sim3=sim, weights=robust_w, residuals=res, inliers=res <= 3.0 * k,
                            scale_param=k, inlier_threshold=3.0 * k, iterations=it,
                            converged=converged)


# --------------------------------------------------------------------------------------------
# Pose helpers
# --------------------------------------------------------------------------------------------

def _as_poses(cam_from_world: np.ndarray) -> np.ndarray:
    """Validate (..., 3, 4) poses; returns a float array."""
    poses = np.asarray(cam_from_world, dtype=float)
    if poses.shape[-2:] != (3, 4):
        raise ValueError(f"poses must have shape (3, 4) or (N, 3, 4), got {poses.shape}")
    return poses


def camera_centers(cam_from_world: np.ndarray) -> np.ndarray:
    """Camera centres ``c = -R.T @ t``: (N, 3, 4) poses -> (N, 3) (or (3, 4) -> (3,))."""
    poses = _as_poses(cam_from_world)
    rot, t = poses[..., :3], poses[..., 3]
    return -np.einsum("...ji,...j->...i", rot, t)


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of rigid (..., 3, 4) poses: ``[R | t] -> [R.T | -R.T t]``."""
    poses = _as_poses(pose)
    rot_t = np.swapaxes(poses[..., :3], -1, -2)
    return np.concatenate([rot_t, -(rot_t @ poses[..., 3:])], axis=-1)


def compose_poses(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rigid composition ``a ∘ b`` (apply ``b`` first) of (..., 3, 4) poses."""
    a, b = _as_poses(a), _as_poses(b)
    rot = a[..., :3] @ b[..., :3]
    t = (a[..., :3] @ b[..., 3:])[..., 0] + a[..., 3]
    return np.concatenate([rot, t[..., None]], axis=-1)


def relative_pose(cam_a_from_world: np.ndarray, cam_b_from_world: np.ndarray) -> np.ndarray:
    """``cam_b_from_cam_a`` (3, 4): maps camera-a coordinates to camera-b coordinates.

    Equals ``cam_b_from_world ∘ (cam_a_from_world)^-1``; broadcasts over leading dimensions.
    Its translation is ``-R_b (c_b - c_a)``, so its norm is the distance between the centres.
    """
    return compose_poses(cam_b_from_world, invert_pose(cam_a_from_world))


def rotation_angle_deg(rotation: np.ndarray) -> np.ndarray | float:
    """Rotation angle in degrees, in [0, 180], of (..., 3, 3) rotation matrices.

    Uses ``atan2(|axis vector|, trace - 1)`` (``= atan2(2 sin θ, 2 cos θ)``), accurate for tiny
    and near-180° angles alike, unlike ``arccos((trace - 1) / 2)``.
    """
    r = np.asarray(rotation, dtype=float)
    if r.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have shape (..., 3, 3), got {r.shape}")
    axis = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                     r[..., 1, 0] - r[..., 0, 1]], axis=-1)
    trace = np.trace(r, axis1=-2, axis2=-1)
    angle = np.degrees(np.arctan2(np.linalg.norm(axis, axis=-1), trace - 1.0))
    return float(angle) if angle.ndim == 0 else angle


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    """The proper rotation closest (Frobenius) to (..., 3, 3) matrices, via SVD."""
    u_mat, _, vt = np.linalg.svd(np.asarray(matrix, dtype=float))
    det = np.linalg.det(u_mat @ vt)
    u_mat = u_mat.copy()
    u_mat[..., :, 2] *= np.where(det < 0, -1.0, 1.0)[..., None]
    return u_mat @ vt


def rotmat_to_quat_xyzw(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions ``(x, y, z, w)`` with ``w >= 0``."""
    r = np.asarray(rotation, dtype=float)
    if r.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have shape (..., 3, 3), got {r.shape}")
    q = Rotation.from_matrix(r.reshape(-1, 3, 3)).as_quat()
    q *= np.where(q[:, 3:] < 0, -1.0, 1.0)
    return q.reshape(r.shape[:-2] + (4,))


def quat_xyzw_to_rotmat(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions ``(x, y, z, w)`` (normalised here) -> (..., 3, 3) rotations.

    Raises:
        ValueError: on a zero or non-finite quaternion.
    """
    q = np.asarray(quat, dtype=float)
    if q.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have shape (..., 4), got {q.shape}")
    norms = np.linalg.norm(q, axis=-1)
    if not np.isfinite(q).all() or (norms < 1e-12).any():
        raise ValueError("quaternions must be finite and non-zero")
    return Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat_wxyz(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions ``(w, x, y, z)`` with ``w >= 0``."""
    return np.roll(rotmat_to_quat_xyzw(rotation), 1, axis=-1)


def quat_wxyz_to_rotmat(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions ``(w, x, y, z)`` (normalised here) -> (..., 3, 3) rotations."""
    return quat_xyzw_to_rotmat(np.roll(np.asarray(quat, dtype=float), -1, axis=-1))


# --------------------------------------------------------------------------------------------
# Trajectory errors
# --------------------------------------------------------------------------------------------

def _stats(values: np.ndarray) -> dict[str, float]:
    """RMSE, mean, median and max of a non-empty 1-D array."""
    return {"rmse": float(np.sqrt(np.mean(values ** 2))), "mean": float(np.mean(values)),
            "median": float(np.median(values)), "max": float(np.max(values))}


def bbox_diagonal(points: np.ndarray) -> float:
    """Length of the diagonal of the axis-aligned bounding box of (N, 3) points."""
    p = np.asarray(points, dtype=float)
    return float(np.linalg.norm(np.ptp(p, axis=0))) if len(p) else 0.0


@dataclass(kw_only=True)
class AteResult:
    """Absolute trajectory error of camera centres (units of the ground truth)."""

    rmse: float
    """Root mean square of :attr:`errors`."""
    mean: float
    """Mean of :attr:`errors`."""
    median: float
    """Median of :attr:`errors`."""
    max: float
    """Largest of :attr:`errors`."""
    errors: np.ndarray
    """(N,) per-frame distance ``||alignment(pred_i) - gt_i||``."""
    alignment: Sim3
    """Transform applied to the predicted centres (pred -> ground-truth frame)."""
    align: str
    """``"sim3"``, ``"se3"`` or ``"none"``."""
    extent: float
    """Trajectory extent: diagonal of the axis-aligned bounding box of the GT centres."""
    rmse_fraction: float
    """``rmse / extent`` (NaN when the extent is 0)."""
    path_length: float = float("nan")
    """Length of the GT path: the sum of distances between consecutive GT centres, in the
    order given (sequence order)."""
    rmse_path_fraction: float = float("nan")
    """``rmse / path_length`` (NaN when the path has no length)."""

    def to_dict(self, *, per_frame: bool = False) -> dict:
        """JSON-ready summary (per-frame errors only when ``per_frame``)."""
        out = {"rmse": self.rmse, "mean": self.mean, "median": self.median, "max": self.max,
               "num_frames": int(len(self.errors)), "align": self.align, "extent": self.extent,
               "rmse_fraction": _json_float(self.rmse_fraction),
               "path_length": _json_float(self.path_length),
               "rmse_path_fraction": _json_float(self.rmse_path_fraction),
               "alignment": {"scale": self.alignment.scale,
                             "rotation": self.alignment.rotation.tolist(),
                             "translation": self.alignment.translation.tolist()}}
        if per_frame:
            out["errors"] = self.errors.tolist()
        return out


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def ate(pred_centers: np.ndarray, gt_centers: np.ndarray, *,
        align: Literal["sim3", "se3", "none"] = "sim3") -> AteResult:
    """Absolute trajectory error between paired camera centres.

    The predicted centres are first aligned onto the ground truth: ``"sim3"`` (Umeyama with
    scale, for scale-free reconstructions), ``"se3"`` (rotation and translation only) or
    ``"none"``. Errors are in ground-truth units.

    Args:
        pred_centers: (N, 3) predicted camera centres (any world frame).
        gt_centers: (N, 3) ground-truth camera centres, paired row by row.
        align: Alignment mode, see above (needs N >= 3 unless ``"none"``).

    Raises:
        ValueError: on bad shapes, an unknown mode, or a degenerate alignment.
    """
    pred = np.asarray(pred_centers, dtype=float)
    gt = np.asarray(gt_centers, dtype=float)
    if pred.ndim != 2 or pred.shape[1:] != (3,) or pred.shape != gt.shape or not len(pred):
        raise ValueError(f"centres must both have shape (N, 3), N >= 1, got {pred.shape} and "
                         f"{gt.shape}")
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
    sim = Sim3() if align == "none" else umeyama_sim3(pred, gt, with_scale=align == "sim3")
    errors = np.linalg.norm(sim.apply(pred) - gt, axis=1)
    extent = bbox_diagonal(gt)
    path = float(np.linalg.norm(np.diff(gt, axis=0), axis=1).sum())
    s = _stats(errors)
    return AteResult(**s, errors=errors, alignment=sim, align=align, extent=extent,
                     rmse_fraction=s["rmse"] / extent if extent > 0 else float("nan"),
                     path_length=path,
                     rmse_path_fraction=s["rmse"] / path if path > 0 else float("nan"))


@dataclass(kw_only=True)
class RpeResult:
    """Relative pose error over frame pairs ``(i, i + delta)``."""

    delta: int
    """Frame offset of the pairs."""
    trans_errors: np.ndarray
    """(M,) translational errors, ground-truth units (after scaling, see :attr:`scale`)."""
    rot_errors_deg: np.ndarray
    """(M,) rotational errors in degrees."""
    scale: float
    """Factor applied to the predicted relative translations."""
    trans: dict[str, float]
    """``rmse``, ``mean``, ``median``, ``max`` of :attr:`trans_errors`."""
    rot: dict[str, float]
    """``rmse``, ``mean``, ``median``, ``max`` of :attr:`rot_errors_deg`."""

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"delta": self.delta, "num_pairs": int(len(self.trans_errors)),
                "scale": self.scale, "trans": self.trans, "rot_deg": self.rot}


def rpe(pred_poses: np.ndarray, gt_poses: np.ndarray, *, delta: int = 1,
        scale: float | None = None) -> RpeResult:
    """Relative pose error (TUM style) between paired camera-from-world poses.

    For each pair ``(i, j = i + delta)`` the relative motion ``cam_j_from_cam_i`` (see
    :func:`relative_pose`) is compared: ``E = rel_gt^-1 ∘ rel_pred'``, where ``rel_pred'`` has
    its translation multiplied by ``scale``. The rotational error is the angle of ``E``
    (degrees); the translational error is ``||t_pred' - t_gt||`` (ground-truth units). Relative
    rotations do not depend on the world frame; relative translations scale with it, hence:

    ``scale=None`` uses the scale of the Sim(3) (Umeyama) alignment of the predicted centres
    onto the ground-truth centres (needs N >= 3, non-coincident centres); pass ``scale=1.0``
    for metric predictions.

    Args:
        pred_poses: (N, 3, 4) predicted camera-from-world poses.
        gt_poses: (N, 3, 4) ground-truth poses, paired row by row.
        delta: Frame offset, 1 <= delta < N.
        scale: See above.

    Raises:
        ValueError: on bad shapes, ``delta``, or a degenerate scale alignment.
    """
    pred, gt = _as_poses(pred_poses), _as_poses(gt_poses)
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(f"poses must both have shape (N, 3, 4), got {pred.shape} and {gt.shape}")
    if not 1 <= delta < len(pred):
        raise ValueError(f"delta must be in [1, {len(pred) - 1}], got {delta}")
    if scale is None:
        scale = umeyama_sim3(camera_centers(pred), camera_centers(gt)).scale
    elif not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive, got {scale}")
    rel_pred = relative_pose(pred[:-delta], pred[delta:])
    rel_gt = relative_pose(gt[:-delta], gt[delta:])
    rel_pred[..., 3] *= scale
    err = compose_poses(invert_pose(rel_gt), rel_pred)
    trans_err = np.linalg.norm(err[..., 3], axis=-1)
    rot_err = np.atleast_1d(rotation_angle_deg(err[..., :3]))
    return RpeResult(delta=delta, trans_errors=trans_err, rot_errors_deg=rot_err,
                     scale=float(scale), trans=_stats(trans_err), rot=_stats(rot_err))


def tum_lines(timestamps: Sequence[float], cam_from_world: np.ndarray, *,
              meaning: str = "frame index") -> list[str]:
    """TUM trajectory lines ``t tx ty tz qx qy qz qw`` (world-from-camera) of (N, 3, 4) poses,
    after a comment saying what the timestamps are (``meaning``)."""
    centres = camera_centers(cam_from_world)
    quats = rotmat_to_quat_xyzw(np.transpose(cam_from_world[:, :, :3], (0, 2, 1)))
    lines = [f"# timestamp tx ty tz qx qy qz qw (world-from-camera; timestamp = {meaning})"]
    for t, c, q in zip(timestamps, centres, quats):
        stamp = str(t) if isinstance(t, (int, np.integer)) else f"{t:.6f}"
        lines.append(f"{stamp} " + " ".join(f"{v:.9f}" for v in (*c, *q)))
    return lines
