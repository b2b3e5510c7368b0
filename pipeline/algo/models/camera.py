"""Camera conversions for VGGT outputs: pose encoding <-> extrinsics/intrinsics, depth -> world
points.

Conventions: extrinsics are camera-from-world ``[R | t]`` (3x4, OpenCV axes x right, y down,
z forward; ``x_cam = R x_world + t``); quaternions are (x, y, z, w), scalar last; intrinsics are
3x3 in pixels of the network image with the principal point at ``(W/2, H/2)``, i.e. the image
centre in COLMAP's convention (pixel centres at +0.5). Pose encoding ``[..., 9]`` =
``t (3), quaternion (4), fov_h, fov_w`` (radians), ``fov_h = 2 atan(H / (2 fy))``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(x, y, z, w) quaternions ``[..., 4]`` (any norm) -> rotation matrices ``[..., 3, 3]``."""
    x, y, z, w = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    rows = (
        1 - s * (y * y + z * z),
        s * (x * y - z * w),
        s * (x * z + y * w),
        s * (x * y + z * w),
        1 - s * (x * x + z * z),
        s * (y * z - x * w),
        s * (x * z - y * w),
        s * (y * z + x * w),
        1 - s * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> unit (x, y, z, w) quaternions with ``w >= 0``.

    Uses the best-conditioned of the four closed forms (largest of ``|w|, |x|, |y|, |z|``).
    """
    m = R.reshape(*R.shape[:-2], 9).unbind(-1)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    four = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1
    )
    root = torch.sqrt(torch.clamp(four, min=0.0))  # 2|w|, 2|x|, 2|y|, 2|z|
    cands = torch.stack(
        [
            torch.stack([m21 - m12, m02 - m20, m10 - m01, four[..., 0]], -1),
            torch.stack([four[..., 1], m01 + m10, m02 + m20, m21 - m12], -1),
            torch.stack([m01 + m10, four[..., 2], m12 + m21, m02 - m20], -1),
            torch.stack([m02 + m20, m12 + m21, four[..., 3], m10 - m01], -1),
        ],
        dim=-2,
    ) / (2.0 * root.clamp(min=0.1)[..., None])
    best = root.argmax(dim=-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., 3:4] < 0, -q, q)


def pose_encoding_to_extri_intri(
    pose_enc: torch.Tensor, image_hw: tuple[int, int], *, build_intrinsics: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pose encoding ``[..., 9]`` -> (extrinsics ``[..., 3, 4]``, intrinsics ``[..., 3, 3]`` or
    None).

    ``fx = (W/2) / tan(fov_w/2)``, ``fy = (H/2) / tan(fov_h/2)``, principal point ``(W/2, H/2)``.
    """
    R = quaternion_to_matrix(pose_enc[..., 3:7])
    extrinsics = torch.cat([R, pose_enc[..., :3, None]], dim=-1)
    if not build_intrinsics:
        return extrinsics, None
    h, w = image_hw
    K = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    K[..., 0, 0] = (w / 2.0) / torch.tan(pose_enc[..., 8] / 2.0)
    K[..., 1, 1] = (h / 2.0) / torch.tan(pose_enc[..., 7] / 2.0)
    K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = w / 2.0, h / 2.0, 1.0
    return extrinsics, K


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`pose_encoding_to_extri_intri` (the principal point is not encoded)."""
    h, w = image_hw
    quat = matrix_to_quaternion(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((h / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((w / 2) / intrinsics[..., 0, 0])
    return torch.cat(
        [extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1
    ).float()


def invert_extrinsics(extrinsics: np.ndarray) -> np.ndarray:
    """Camera-from-world ``(..., 3, 4)`` -> world-from-camera ``(..., 3, 4)``: ``[R^T | -R^T
    t]``."""
    R, t = extrinsics[..., :3, :3], extrinsics[..., :3, 3:]
    Rt = np.swapaxes(R, -1, -2)
    return np.concatenate([Rt, -Rt @ t], axis=-1)


def depth_to_world_points(
    depth: ArrayLike, extrinsics: ArrayLike, intrinsics: ArrayLike, *, pixel_center: float = 0.0
) -> np.ndarray:
    """Unproject depth maps to world points, as the reference ``unproject_depth_map_to_point_map``.

    Args:
        depth: ``(S, H, W)`` or ``(S, H, W, 1)`` z-depth along the optical axis.
        extrinsics: ``(S, 3, 4)`` camera-from-world.
        intrinsics: ``(S, 3, 3)`` pinhole, zero skew.
        pixel_center: coordinate of pixel (i, j)'s sample in the intrinsics' frame is
            ``(j + pixel_center, i + pixel_center)``; 0.0 reproduces the reference ("index"),
            0.5 is exact for COLMAP-convention intrinsics.
    Returns:
        ``(S, H, W, 3)`` float32 world points.
    """
    to_np = lambda a: a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    depth, extrinsics, intrinsics = to_np(depth), to_np(extrinsics), to_np(intrinsics)
    depth = depth[..., 0] if depth.ndim == 4 else depth
    s, h, w = depth.shape
    u, v = np.meshgrid(np.arange(w) + pixel_center, np.arange(h) + pixel_center)
    fx, fy = intrinsics[:, 0, 0, None, None], intrinsics[:, 1, 1, None, None]
    cx, cy = intrinsics[:, 0, 2, None, None], intrinsics[:, 1, 2, None, None]
    cam = np.stack([(u - cx) * depth / fx, (v - cy) * depth / fy, depth], axis=-1).astype(
        np.float32
    )
    pose = invert_extrinsics(extrinsics.astype(np.float64))
    world = np.einsum("sij,shwj->shwi", pose[:, :, :3], cam) + pose[:, None, None, :, 3]
    return world.astype(np.float32)
