"""Resizing frames to VGGT's input grid, and the exact inverse map back to each original image.

Same arithmetic as the reference ``load_and_preprocess_images`` (VGGT), but on decoded frames:
``uint8`` RGB arrays ``(H, W, 3)`` (``(H, W, 4)`` RGBA is composited onto white first).

* ``mode="crop"``: width becomes ``target_size`` (518), height ``round(H * 518 / W / 14) * 14``
  (PIL bicubic), then a centred crop to 518 rows if taller.
* ``mode="pad"``: the longer side becomes 518, the other ``round(... / 14) * 14``, then white (1.0)
  padding to a centred 518 x 518 square.
* Frames that still differ in size are padded with white, centred, to the largest height and width.

Depth Anything 3's methods (``mode`` set to one of :data:`DA3_METHODS`, size ``process_res``,
default 504), as the reference ``InputProcessor`` computes the sizes:

* ``upper_bound_*``: the longer side becomes ``process_res``; ``lower_bound_*``: the shorter side
  does; the other side is ``max(1, round(side * scale))`` (Python ``round``); a frame whose
  bounding side already equals ``process_res`` is not resized.
* ``*_resize``: each side is then resized to its nearest multiple of 14 (a tie goes up);
  ``*_crop``: each side is floored to a multiple of 14 by a centred crop (``(w - w14) // 2``
  columns cut on the left, the rest on the right; rows likewise). No square crop.
* Frames that still differ in size are centre-cropped to the smallest height and width.

Pixel values: as the reference, with OpenCV (``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when
enlarging: the boundary resize by its scale, the multiple-of-14 resize when a side grows) on the
uint8 frame, so the network input equals the reference's.

Pixel conventions (both used below, always named explicitly):

* ``"colmap"``: continuous image coordinates whose origin is the top-left *corner* of the image;
  the centre of pixel (row i, column j) is ``(j + 0.5, i + 0.5)``. COLMAP and the network's
  intrinsics use it (VGGT puts the principal point at ``(W/2, H/2)``, the exact image centre).
* ``"index"``: integer ``(x, y)`` is the centre of pixel column x, row y (``= colmap - 0.5``).
  VGGT's query points, tracks, and the reference depth unprojection (``u = 0..W-1``) use it.

In ``"colmap"`` coordinates resizing is a pure scale and cropping/padding a pure shift, so each
frame's map is the affine ``x_net = sx * x_orig + ox``, ``y_net = sy * y_orig + oy`` (exact; ``sx``
and ``sy`` differ slightly because sides are rounded to multiples of 14).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


logger = logging.getLogger(__name__)

CONVENTIONS = ("colmap", "index")

VGGT_MODES = ("crop", "pad")
"""VGGT's ways of fitting frames to its grid."""

DA3_METHODS = ("upper_bound_resize", "lower_bound_resize", "upper_bound_crop", "lower_bound_crop")
"""Depth Anything 3's ways of fitting frames to its grid."""


@dataclass(kw_only=True)
class PreprocessOptions:
    """How frames are brought to the network grid."""

    mode: str = "crop"
    """"crop" (width 518, centre-crop height above 518) or "pad" (longer side 518, pad to square),
    VGGT's; or one of Depth Anything 3's :data:`DA3_METHODS` (sized by ``process_res``)."""
    process_res: int = 504
    """DA3 methods: the bounding side's length in pixels (``target_size`` is VGGT's)."""
    target_size: int = 518
    """Target width (crop) or longer side and square size (pad), pixels."""
    patch_size: int = 14
    """Network patch size; resized sides are rounded to multiples of it."""
    pad_value: float = 1.0
    """Value of padded pixels in [0, 1] (reference: white)."""


@dataclass(frozen=True, kw_only=True)
class FrameTransform:
    """Map between one original frame and its network image (all sizes ``(height, width)`` in
    pixels)."""

    original_hw: tuple[int, int]
    """Size of the original frame."""
    resized_hw: tuple[int, int]
    """Size after the bicubic resize, before cropping/padding."""
    offset_xy: tuple[float, float]
    """Position in the network image of the resized frame's top-left corner (negative when
    cropped)."""
    network_hw: tuple[int, int]
    """Size of the network image."""

    @property
    def scale_xy(self) -> tuple[float, float]:
        """``(sx, sy)`` = resized / original size per axis."""
        return self.resized_hw[1] / self.original_hw[1], self.resized_hw[0] / self.original_hw[0]

    @property
    def matrix(self) -> np.ndarray:
        """3x3 affine ``A`` (float64) taking original to network "colmap" coordinates."""
        (sx, sy), (ox, oy) = self.scale_xy, self.offset_xy
        return np.array([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]])

    def to_network(self, xy: np.ndarray, convention: str = "colmap") -> np.ndarray:
        """Original-image points ``(..., 2)`` -> network-image points, same convention."""
        return _affine(self.matrix, xy, convention)

    def to_original(self, xy: np.ndarray, convention: str = "colmap") -> np.ndarray:
        """Network-image points ``(..., 2)`` (e.g. tracks, with ``convention="index"``) -> original
        image."""
        return _affine(np.linalg.inv(self.matrix), xy, convention)

    def intrinsics_to_original(self, K: np.ndarray) -> np.ndarray:
        """Network intrinsics ``(..., 3, 3)`` ("colmap" convention) -> original-image intrinsics
        ``A^-1 K``."""
        return np.linalg.inv(self.matrix) @ np.asarray(K, dtype=np.float64)

    def intrinsics_to_network(self, K: np.ndarray) -> np.ndarray:
        """Original-image intrinsics ``(..., 3, 3)`` -> network-image intrinsics ``A K``."""
        return self.matrix @ np.asarray(K, dtype=np.float64)


def _affine(A: np.ndarray, xy: np.ndarray, convention: str) -> np.ndarray:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    shift = 0.5 if convention == "index" else 0.0
    xy = np.asarray(xy, dtype=np.float64) + shift
    out = xy @ A[:2, :2].T + A[:2, 2]
    return out - shift


@dataclass(frozen=True, kw_only=True)
class PreprocessResult:
    """Network input and per-frame transforms."""

    images: torch.Tensor
    """``[S, 3, H, W]`` float32 RGB in [0, 1]."""
    transforms: list[FrameTransform]
    """One :class:`FrameTransform` per frame, in input order."""


def _as_rgb(frame: np.ndarray, index: int) -> np.ndarray:
    """Validate a uint8 frame; RGBA is composited onto white."""
    frame = np.asarray(frame)
    if (
        frame.dtype != np.uint8
        or frame.ndim != 3
        or frame.shape[2] not in (3, 4)
        or min(frame.shape[:2]) < 1
    ):
        raise ValueError(
            f"frame {index}: expected a uint8 array (H, W, 3) or (H, W, 4), got {frame.dtype} "
            f"{frame.shape}"
        )
    if frame.shape[2] == 3:
        return frame
    rgb = frame[..., :3].astype(np.float32)
    alpha = frame[..., 3:].astype(np.float32) / 255.0
    return np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def _resized_size(h: int, w: int, opts: PreprocessOptions) -> tuple[int, int]:
    """(height, width) after the resize, as the reference computes it (Python ``round``)."""
    t, p = opts.target_size, opts.patch_size
    if opts.mode == "pad" and h > w:
        return t, round(w * (t / h) / p) * p
    return round(h * (t / w) / p) * p, t


def _resize(frame: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """PIL bicubic resize of uint8 RGB -> ``[3, h, w]`` float32 in [0, 1]."""
    import torch

    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("preprocessing needs Pillow: pip install pillow") from exc
    img = Image.fromarray(frame).resize((hw[1], hw[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _centre_offset(out: int, size: int) -> int:
    """Offset of a centred ``size`` span in ``out`` (pad: extra on the far side; crop: cut more at
    the far side)."""
    return (out - size) // 2 if out >= size else -((size - out) // 2)


def _place(
    img: torch.Tensor, out_hw: tuple[int, int], value: float
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Centre ``img`` ``[3, h, w]`` in an ``out_hw`` canvas (crop or pad per axis); returns it and
    (ox, oy)."""
    import torch

    h, w = img.shape[1:]
    oy, ox = _centre_offset(out_hw[0], h), _centre_offset(out_hw[1], w)
    canvas = torch.full((3, *out_hw), float(value), dtype=img.dtype)
    src = img[
        :,
        max(0, -oy) : max(0, -oy) + min(h, out_hw[0]),
        max(0, -ox) : max(0, -ox) + min(w, out_hw[1]),
    ]
    canvas[:, max(0, oy) : max(0, oy) + src.shape[1], max(0, ox) : max(0, ox) + src.shape[2]] = src
    return canvas, (ox, oy)


def _nearest_multiple(x: int, p: int) -> int:
    """The multiple of ``p`` nearest to ``x`` (a tie goes up), at least ``p``."""
    down = (x // p) * p
    return max(p, down + p if (down + p - x) <= (x - down) else down)


def _da3_sizes(h: int, w: int, opts: PreprocessOptions) -> tuple[tuple[int, int], tuple[int, int]]:
    """DA3 sizes ``(bounded_hw, resized_hw)``: after the boundary resize, and after the whole resize
    (``*_crop``: no second resize, the same size)."""
    method, res, p = opts.mode, opts.process_res, opts.patch_size
    side = max(h, w) if method.startswith("upper") else min(h, w)
    bounded = (h, w)
    if side != res:
        scale = res / float(side)
        bounded = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    if method.endswith("crop"):
        return bounded, bounded
    return bounded, (_nearest_multiple(bounded[0], p), _nearest_multiple(bounded[1], p))


def _resize_area_or_cubic(rgb: np.ndarray, hw: tuple[int, int], upscale: bool) -> np.ndarray:
    """OpenCV resize of uint8 RGB to ``hw``: bicubic when ``upscale``, else area (as DA3 does)."""
    if rgb.shape[:2] == tuple(hw):
        return rgb
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(
            "Depth Anything 3 preprocessing needs OpenCV: pip install opencv-python-headless"
        ) from exc
    mode = cv2.INTER_CUBIC if upscale else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(rgb), (hw[1], hw[0]), interpolation=mode)


def _da3_place(
    rgb: np.ndarray, opts: PreprocessOptions
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """One frame by a DA3 method -> (``[3, h, w]`` in [0, 1], resized_hw, (ox, oy) in the
    result)."""
    import torch

    h, w = rgb.shape[:2]
    bounded, resized = _da3_sizes(h, w, opts)
    side = max(h, w) if opts.mode.startswith("upper") else min(h, w)
    img = _resize_area_or_cubic(rgb, bounded, upscale=opts.process_res > side)
    img = _resize_area_or_cubic(
        img, resized, upscale=resized[0] > bounded[0] or resized[1] > bounded[1]
    )
    tensor = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
    p = opts.patch_size
    out_hw = (
        (max(p, resized[0] // p * p), max(p, resized[1] // p * p))
        if opts.mode.endswith("crop")
        else resized
    )
    tensor, offset = _place(tensor, out_hw, opts.pad_value)
    return tensor, resized, offset


def preprocess_frames(
    frames: Sequence[np.ndarray], options: PreprocessOptions | None = None
) -> PreprocessResult:
    """Bring decoded frames to the network grid (see the module docstring for the exact steps;
    ``options.mode`` picks VGGT's or Depth Anything 3's).

    Args:
        frames: uint8 RGB(A) arrays ``(H, W, 3|4)``; sizes may differ.
        options: :class:`PreprocessOptions`.
    Returns:
        :class:`PreprocessResult` with images ``[S, 3, H, W]`` (H, W multiples of ``patch_size``).
    """
    import torch

    opts = options or PreprocessOptions()
    if opts.mode not in VGGT_MODES + DA3_METHODS:
        raise ValueError(f"mode must be one of {VGGT_MODES + DA3_METHODS}, got {opts.mode!r}")
    if opts.mode in DA3_METHODS and opts.process_res < 1:
        raise ValueError(f"process_res must be a positive number of pixels, got {opts.process_res}")
    if len(frames) == 0:
        raise ValueError("at least one frame is required")
    placed, records = [], []
    for i, frame in enumerate(frames):
        rgb = _as_rgb(frame, i)
        if opts.mode in DA3_METHODS:
            img, hw, (ox, oy) = _da3_place(rgb, opts)
        else:
            hw = _resized_size(*rgb.shape[:2], opts)
            img = _resize(rgb, hw)
            t = opts.target_size
            stage_hw = (t, t) if opts.mode == "pad" else (min(hw[0], t), hw[1])
            img, (ox, oy) = _place(img, stage_hw, opts.pad_value)
        placed.append(img)
        records.append((rgb.shape[:2], hw, (ox, oy)))
    pick = (
        min if opts.mode in DA3_METHODS else max
    )  # DA3 crops to the smallest, VGGT pads to the largest
    out_hw = (pick(p.shape[1] for p in placed), pick(p.shape[2] for p in placed))
    if len({tuple(p.shape[1:]) for p in placed}) > 1:
        logger.warning(
            "frames of different shapes; %s all to %s",
            "cropping" if pick is min else "padding",
            out_hw,
        )
    images, transforms = [], []
    for img, (orig_hw, hw, (ox, oy)) in zip(placed, records):
        img, (dx, dy) = _place(img, out_hw, opts.pad_value)
        images.append(img)
        transforms.append(
            FrameTransform(
                original_hw=tuple(orig_hw),
                resized_hw=hw,
                offset_xy=(float(ox + dx), float(oy + dy)),
                network_hw=out_hw,
            )
        )
    return PreprocessResult(images=torch.stack(images), transforms=transforms)
