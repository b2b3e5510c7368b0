"""Deterministic synthetic test sequences with exact ground truth.

A small numpy ray caster renders a textured room (floor, four walls, ceiling) containing a few
textured boxes at different depths, seen by a pinhole camera moving along a smooth path.
Everything is procedural and seeded, so the same options always produce the same images.

Conventions (used by every array in this module):

* World frame: right-handed, metres, ``z`` up; the floor is the plane ``z = 0`` and the room is
  centred on the origin.
* Camera frame: OpenCV axes, ``x`` right, ``y`` down, ``z`` forward (optical axis).
* Poses are *camera-from-world*: ``x_cam = R @ x_world + t`` with ``cam_from_world = [R | t]``
  of shape (3, 4); the camera centre is ``-R.T @ t``.
* Pixels follow COLMAP: the top-left corner of the image is at (0, 0), so the centre of pixel
  (col, row) is at (col + 0.5, row + 0.5).  The ray of that pixel is
  ``K^-1 @ [col + 0.5, row + 0.5, 1]`` and the principal point is exactly (W / 2, H / 2).
* Depth is z-depth: the distance along the optical axis (camera ``z`` coordinate, metres) of the
  surface hit by the ray through the pixel centre (not anti-aliased, no invalid pixels).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..core.geometry import camera_centers, tum_lines

logger = logging.getLogger(__name__)

PATH_KINDS = ("arc", "loop")
"""Supported camera path kinds for :attr:`RenderOptions.path`."""

_EPS = 1e-9
_CHUNK = 1 << 15
"""Rays processed at once by :func:`render_frame`."""


@dataclass(kw_only=True, frozen=True)
class Box:
    """A solid box standing in the scene, rotated about the world ``z`` axis."""

    center: tuple[float, float, float]
    """Box centre in world coordinates (metres)."""
    size: tuple[float, float, float]
    """Full edge lengths along the box's local x, y, z axes (metres)."""
    yaw_deg: float = 0.0
    """Rotation of the box about the world ``z`` axis (degrees, counter-clockwise seen from
    above)."""


DEFAULT_BOXES: tuple[Box, ...] = (
    Box(center=(-0.6, 0.3, 0.45), size=(0.8, 0.8, 0.9), yaw_deg=20.0),
    Box(center=(0.8, -0.5, 0.25), size=(0.6, 1.0, 0.5), yaw_deg=-10.0),
    Box(center=(0.4, 0.9, 0.7), size=(0.5, 0.5, 1.4), yaw_deg=35.0),
    Box(center=(-1.1, -1.0, 0.2), size=(0.4, 0.4, 0.4), yaw_deg=0.0),
)
"""Default furniture: four boxes of different heights within 1.6 m of the room centre."""


@dataclass(kw_only=True)
class SceneOptions:
    """Geometry and appearance of the synthetic room."""

    seed: int = 0
    """Seed of every random texture; the geometry does not depend on it."""
    room_size: tuple[float, float, float] = (10.0, 10.0, 3.0)
    """Inner room extent along world x, y, z (metres); the floor is at z = 0, centred on the
    origin."""
    boxes: tuple[Box, ...] = DEFAULT_BOXES
    """Solid boxes inside the room (they give parallax and occlusions)."""
    texels_per_metre: float = 64.0
    """Texture resolution of the room's floor, walls and ceiling (texels per metre)."""
    box_texels_per_metre: float = 160.0
    """Texture resolution of the boxes, which are seen from closer (texels per metre)."""
    light_dir: tuple[float, float, float] = (0.4, -0.3, 0.85)
    """Direction towards the (directional) light, world frame; need not be normalised."""
    ambient: float = 0.55
    """Ambient part of the Lambertian shading, in [0, 1]; 1 disables shading."""


@dataclass(kw_only=True)
class RenderOptions:
    """Camera path and image formation of a synthetic sequence."""

    num_frames: int = 24
    """Number of frames N."""
    width: int = 320
    """Image width W (pixels)."""
    height: int = 240
    """Image height H (pixels)."""
    path: str = "arc"
    """Camera path kind: ``"arc"`` (open arc in front of the boxes) or ``"loop"`` (closed orbit)."""
    hfov_deg: float = 60.0
    """Horizontal field of view (degrees); focal length f = (W / 2) / tan(hfov / 2), fx = fy = f."""
    arc_degrees: float = 60.0
    """Angular span of the ``"arc"`` path around the room centre (degrees); unused for
    ``"loop"``."""
    orbit_radius: float = 3.2
    """Mean horizontal distance of the camera from the room centre (metres)."""
    camera_height: float = 1.5
    """Mean camera height above the floor (metres)."""
    supersample: int = 2
    """Anti-aliasing: s x s rays per pixel, averaged (1 disables it)."""
    scene: SceneOptions = field(default_factory=SceneOptions)
    """The scene to render."""


@dataclass(kw_only=True)
class SyntheticSequence:
    """A rendered sequence with its exact ground truth (conventions: see the module docstring)."""

    images: np.ndarray
    """(N, H, W, 3) uint8 RGB frames."""
    K: np.ndarray
    """(3, 3) float64 intrinsics shared by all frames, principal point (W / 2, H / 2)."""
    cam_from_world: np.ndarray
    """(N, 3, 4) float64 camera-from-world poses [R | t], OpenCV camera axes."""
    depth: np.ndarray
    """(N, H, W) float32 z-depth (metres) at pixel centres."""
    names: list[str]
    """N image file names, ``frame_000.png``, ``frame_001.png``, ..."""
    options: RenderOptions
    """Options that produced the sequence."""


@dataclass(kw_only=True)
class SceneTruth:
    """The whole truth of a rendered scene, read back from ``ground_truth.npz`` (intrinsics,
    poses, depth; see :func:`load_ground_truth`). :class:`pipeline.post.ground_truth.GroundTruth`
    is the poses any
    ground truth on disk gives."""

    K: np.ndarray
    """(3, 3) float64 intrinsics."""
    cam_from_world: np.ndarray
    """(N, 3, 4) float64 camera-from-world poses."""
    depth: np.ndarray
    """(N, H, W) float32 z-depth (metres); stored as float16, so relative error <= 2^-11."""
    names: list[str]
    """N image file names (relative to the ``images/`` folder)."""
    width: int
    """Image width W (pixels)."""
    height: int
    """Image height H (pixels)."""

    @property
    def camera_centers(self) -> np.ndarray:
        """(N, 3) camera centres in world coordinates (metres)."""
        return camera_centers(self.cam_from_world)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """(3, 3) pinhole K with fx = fy = (W / 2) / tan(hfov / 2) and principal point (W / 2, H /
    2)."""
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(centre: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """(3, 4) camera-from-world pose of a camera at ``centre`` looking at ``target`` (world z up).

    The camera x axis is horizontal (pointing right), y points down, z towards the target.
    """
    z = np.asarray(target, float) - np.asarray(centre, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    return np.concatenate([R, (-R @ centre)[:, None]], axis=1)


def camera_path(options: RenderOptions) -> np.ndarray:
    """(N, 3, 4) camera-from-world poses of the path described by ``options``.

    ``"arc"``: N frames evenly spread over ``arc_degrees`` of a circle of radius
    ``orbit_radius`` around the room centre (starting on the -y side), looking at the boxes,
    with a gentle height and radius variation.  ``"loop"``: a closed, slightly elliptical orbit;
    frame N would coincide with frame 0, so the last frame is one step before the start.
    """
    if options.path not in PATH_KINDS:
        raise ValueError(f"unknown path {options.path!r}, expected one of {PATH_KINDS}")
    n = options.num_frames
    if options.path == "arc":
        s = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
        theta = np.radians(options.arc_degrees) * (s - 0.5)
        radius = options.orbit_radius * (1.0 + 0.04 * np.sin(np.pi * s))
        height = options.camera_height + 0.15 * np.sin(2.0 * np.pi * s)
    else:
        theta = 2.0 * np.pi * np.arange(n) / n
        radius = options.orbit_radius * (1.0 + 0.08 * np.cos(2.0 * theta))
        height = options.camera_height + 0.15 * np.sin(3.0 * theta)
    centres = np.stack([radius * np.sin(theta), -radius * np.cos(theta), height], axis=1)
    targets = np.stack([0.25 * np.sin(theta), 0.25 * np.cos(theta), np.full(n, 0.6)], axis=1)
    return np.stack([look_at(c, g) for c, g in zip(centres, targets)])


def _box_frames(scene: SceneOptions) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
    """Per object (room first, then boxes): (local_from_world R (3,3), centre (3,), half size (3,),
    inside)."""
    w, d, h = scene.room_size
    frames = [(np.eye(3), np.array([0.0, 0.0, h / 2.0]), np.array([w, d, h]) / 2.0, True)]
    for box in scene.boxes:
        c, s = math.cos(math.radians(box.yaw_deg)), math.sin(math.radians(box.yaw_deg))
        world_from_local = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        frames.append(
            (world_from_local.T, np.array(box.center, float), np.array(box.size) / 2.0, False)
        )
    return frames


def distance_to_surfaces(points: np.ndarray, scene: SceneOptions | None = None) -> np.ndarray:
    """Approximate distance (metres) of (M, 3) world points to the nearest scene surface; (M,).

    Exact (zero) for points on a surface and for points near the interior of a face; meant for
    checking depth maps or reconstructed points against the ground-truth geometry.
    """
    scene = scene or SceneOptions()
    points = np.asarray(points, float).reshape(-1, 3)
    best = np.full(len(points), np.inf)
    for R, centre, half, _ in _box_frames(scene):
        local = (points - centre) @ R.T
        q = np.abs(local) - half
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        sdf = outside + np.minimum(q.max(axis=1), 0.0)
        best = np.minimum(best, np.abs(sdf))
    return best


# --------------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------------

_BLOB_SCALES_M = (0.6, 0.3, 0.15, 0.08, 0.04)
"""Feature sizes (metres) of the thresholded-noise blob layers, coarse to fine."""


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) band-limited noise: a random grid with spacing ``cell`` texels, cubic-interpolated."""
    cell = max(cell, 1.0)
    gh, gw = int(math.ceil(h / cell)) + 2, int(math.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    size = (int(round(gw * cell)), int(round(gh * cell)))
    return np.asarray(Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC))[:h, :w]


def _add_blobs(rng: np.random.Generator, tex: np.ndarray, cell: float) -> None:
    """Paint sharp-edged blobs of size ~``cell`` texels with one random colour each, in place."""
    h, w = tex.shape[:2]
    noise = _smooth_noise(rng, h, w, cell)
    mask = noise > np.quantile(noise, 0.7)
    labels, count = ndimage.label(mask)
    palette = rng.uniform(0.03, 0.97, (count + 1, 3)).astype(np.float32)
    tex[mask] = palette[labels[mask]]


def _add_rectangles(rng: np.random.Generator, tex: np.ndarray, texels_per_metre: float) -> None:
    """Paint random solid rectangles (5-50 cm, ~3 per square metre) in place."""
    h, w = tex.shape[:2]
    count = int(round(3.0 * h * w / texels_per_metre**2))
    sizes = np.exp(rng.uniform(math.log(0.05), math.log(0.5), (count, 2))) * texels_per_metre
    corners = rng.uniform(0.0, 1.0, (count, 2)) * [h, w]
    colours = rng.uniform(0.03, 0.97, (count, 3)).astype(np.float32)
    for (r0, c0), (sh, sw), colour in zip(corners.astype(int), sizes.astype(int) + 1, colours):
        tex[r0 : r0 + sh, c0 : c0 + sw] = colour


def make_texture(rng: np.random.Generator, h: int, w: int, texels_per_metre: float) -> np.ndarray:
    """(h, w, 3) float32 texture in [0, 1]: multi-scale sharp blobs and rectangles, noise, light
    blur."""
    base = rng.uniform(0.2, 0.8, 3).astype(np.float32)
    shade = _smooth_noise(rng, h, w, texels_per_metre)[..., None].astype(np.float32)
    tex = np.clip(base + 0.12 * shade, 0.0, 1.0)
    for scale in _BLOB_SCALES_M:
        _add_blobs(rng, tex, scale * texels_per_metre)
        if scale == 0.3:
            _add_rectangles(rng, tex, texels_per_metre)
    tex += rng.normal(0.0, 0.02, tex.shape).astype(np.float32)
    tex = ndimage.gaussian_filter(tex, sigma=(0.6, 0.6, 0.0))
    return np.clip(tex, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Scene and ray casting
# --------------------------------------------------------------------------------------------

_AXIS_U = np.array([1, 0, 0])
"""Local axis along the texture u (column) direction of a face perpendicular to axis 0, 1, 2."""
_AXIS_V = np.array([2, 2, 1])
"""Local axis along the texture v (row) direction of a face perpendicular to axis 0, 1, 2."""


@dataclass(kw_only=True)
class Scene:
    """Renderable scene built by :func:`build_scene`; faces are indexed ``6 * object + 2 * axis +
    side``."""

    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]
    """Per object (room first): (local_from_world R (3, 3), centre (3,), half size (3,), camera
    inside)."""
    atlas: np.ndarray
    """(T, 3) float32 texels of all face textures, flattened row-major one after the other."""
    tex_offset: np.ndarray
    """(F,) int64 start of each face's texture in ``atlas``."""
    tex_shape: np.ndarray
    """(F, 2) int64 texture (height, width) of each face."""
    shade: np.ndarray
    """(F,) float32 Lambertian shading factor of each face."""


def _face_normal(R: np.ndarray, axis: int, side: int, inside: bool) -> np.ndarray:
    """World normal of a face, pointing into free space (into the room for the room's faces)."""
    n_local = np.zeros(3)
    n_local[axis] = (1.0 if side else -1.0) * (-1.0 if inside else 1.0)
    return R.T @ n_local


def build_scene(scene: SceneOptions) -> Scene:
    """Generate the textures and shading of ``scene`` (deterministic given ``scene.seed``)."""
    start = time.perf_counter()
    light = np.asarray(scene.light_dir, float) / np.linalg.norm(scene.light_dir)
    frames = _box_frames(scene)
    textures, shade = [], []
    for obj, (R, _, half, inside) in enumerate(frames):
        density = scene.texels_per_metre if inside else scene.box_texels_per_metre
        for axis in range(3):
            h = max(2, int(math.ceil(2.0 * half[_AXIS_V[axis]] * density)))
            w = max(2, int(math.ceil(2.0 * half[_AXIS_U[axis]] * density)))
            for side in range(2):
                rng = np.random.default_rng([scene.seed, obj, 2 * axis + side])
                textures.append(make_texture(rng, h, w, density))
                lambert = max(0.0, float(_face_normal(R, axis, side, inside) @ light))
                shade.append(scene.ambient + (1.0 - scene.ambient) * lambert)
    sizes = np.array([t.shape[0] * t.shape[1] for t in textures])
    logger.debug(
        "built scene textures (%d texels) in %.2fs", sizes.sum(), time.perf_counter() - start
    )
    return Scene(
        frames=frames,
        atlas=np.concatenate([t.reshape(-1, 3) for t in textures]),
        tex_offset=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        tex_shape=np.array([t.shape[:2] for t in textures], dtype=np.int64),
        shade=np.array(shade, dtype=np.float32),
    )


def _intersect_box(origin, dirs_t, R, centre, half, inside) -> np.ndarray:
    """Slab test of rays (origin (3,), directions (3, M)) against one box: hit t (M,), inf where
    missed."""
    dtype = dirs_t.dtype
    o = (R @ (origin - centre)).astype(dtype)[:, None]
    d = R.astype(dtype) @ dirs_t
    d[np.abs(d) < _EPS] = _EPS
    inv = 1.0 / d
    t1 = (-half.astype(dtype)[:, None] - o) * inv
    t2 = (half.astype(dtype)[:, None] - o) * inv
    far = np.maximum(t1, t2)
    t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
    if inside:  # camera inside: the ray leaves through the first exit plane
        return np.where(t_far > 0, t_far, np.inf)
    near = np.minimum(t1, t2)
    t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
    return np.where((t_near > 0) & (t_near <= t_far), t_near, np.inf)


def cast_rays(
    scene: Scene, origin: np.ndarray, dirs_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hits of rays ``origin + t * d`` for the columns d of ``dirs_t`` (3, M), world frame.

    Returns (t (M,), object index (M,)), t in units of d and of the dtype of ``dirs_t``; with
    camera rays whose camera-frame z component is 1, t is the z-depth.  Object 0 is the room,
    object k >= 1 is box k - 1.  Raises ValueError if a ray escapes (camera outside the room).
    """
    m = dirs_t.shape[1]
    t_best = np.full(m, np.inf, dtype=dirs_t.dtype)
    obj = np.zeros(m, dtype=np.int64)
    for i, (R, centre, half, inside) in enumerate(scene.frames):
        t = _intersect_box(origin, dirs_t, R, centre, half, inside)
        better = t < t_best
        t_best[better] = t[better]
        obj[better] = i
    if not np.all(np.isfinite(t_best)):
        raise ValueError("some rays hit nothing: is the camera inside the room?")
    return t_best, obj


def _bilinear(scene: Scene, face: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample face textures at normalised coordinates u, v in [0, 1] (M,); returns (M, 3)
    float32."""
    h, w = scene.tex_shape[face, 0], scene.tex_shape[face, 1]
    x = np.clip(u * w - 0.5, 0.0, w - 1.0)
    y = np.clip(v * h - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(x.astype(np.int64), w - 2)
    y0 = np.minimum(y.astype(np.int64), h - 2)
    fx = (x - x0).astype(np.float32)[:, None]
    fy = (y - y0).astype(np.float32)[:, None]
    base = scene.tex_offset[face] + y0 * w + x0
    a = scene.atlas
    top = a[base] * (1 - fx) + a[base + 1] * fx
    bottom = a[base + w] * (1 - fx) + a[base + w + 1] * fx
    return top * (1 - fy) + bottom * fy


def shade_hits(scene: Scene, points_t: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """(M, 3) float32 RGB in [0, 1] of world points ``points_t`` (3, M) on the surfaces of objects
    ``obj`` (M,).

    The face of a point is the local axis along which it is farthest out relative to the half size.
    """
    m = points_t.shape[1]
    face = np.empty(m, dtype=np.int64)
    u = np.empty(m, dtype=points_t.dtype)
    v = np.empty(m, dtype=points_t.dtype)
    for i, (R, centre, half, _) in enumerate(scene.frames):
        sel = np.nonzero(obj == i)[0]
        local = R.astype(points_t.dtype) @ (
            points_t[:, sel] - centre[:, None].astype(points_t.dtype)
        )
        cols = np.arange(len(sel))
        axis = np.argmax(np.abs(local) / half[:, None], axis=0)
        face[sel] = 6 * i + 2 * axis + (local[axis, cols] > 0)
        au, av = _AXIS_U[axis], _AXIS_V[axis]
        u[sel] = (local[au, cols] + half[au]) / (2.0 * half[au])
        v[sel] = (local[av, cols] + half[av]) / (2.0 * half[av])
    return _bilinear(scene, face, u, v) * scene.shade[face][:, None]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def pixel_rays(K: np.ndarray, width: int, height: int, supersample: int = 1) -> np.ndarray:
    """(height * s, width * s, 3) camera-frame ray directions with z = 1 (s = ``supersample``).

    Sample (j, i) lies at image position (x, y) = ((i + 0.5) / s, (j + 0.5) / s) (COLMAP pixel
    convention: pixel (col, row) covers [col, col + 1) x [row, row + 1)), so with s = 1 the rays
    go through pixel centres (col + 0.5, row + 0.5); the direction is K^-1 [x, y, 1].
    """
    s = supersample
    x = (np.arange(width * s) + 0.5) / s
    y = (np.arange(height * s) + 0.5) / s
    xx, yy = np.meshgrid(x, y)
    pix = np.stack([xx, yy, np.ones_like(xx)], axis=-1)
    return pix @ np.linalg.inv(K).T


def render_frame(
    scene: Scene,
    K: np.ndarray,
    cam_from_world: np.ndarray,
    width: int,
    height: int,
    supersample: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: ((H, W, 3) uint8 RGB, (H, W) float32 z-depth at pixel centres).

    Colour is the mean of ``supersample`` x ``supersample`` rays per pixel; depth uses the single
    ray through the pixel centre.  ``cam_from_world`` is (3, 4), OpenCV camera axes.
    """
    R, t = cam_from_world[:, :3], cam_from_world[:, 3]
    origin = -R.T @ t
    s = supersample
    dirs_t = (R.T @ pixel_rays(K, width, height, s).reshape(-1, 3).T).astype(np.float32)
    rgb = np.empty((dirs_t.shape[1], 3), np.float32)
    for a in range(0, dirs_t.shape[1], _CHUNK):  # chunks keep the working set small
        d = dirs_t[:, a : a + _CHUNK]
        t_hit, obj = cast_rays(scene, origin, d)
        rgb[a : a + _CHUNK] = shade_hits(scene, origin[:, None].astype(np.float32) + t_hit * d, obj)
    rgb = rgb.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    image = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    centre_dirs_t = R.T @ pixel_rays(K, width, height, 1).reshape(-1, 3).T
    depth = np.concatenate(
        [
            cast_rays(scene, origin, centre_dirs_t[:, a : a + _CHUNK])[0]
            for a in range(0, width * height, _CHUNK)
        ]
    )
    return image, depth.reshape(height, width).astype(np.float32)


def _check_options(options: RenderOptions) -> None:
    """Raise ValueError for options that cannot be rendered."""
    if options.num_frames < 1 or options.width < 2 or options.height < 2:
        raise ValueError("num_frames must be >= 1 and width, height >= 2")
    if options.supersample < 1:
        raise ValueError("supersample must be >= 1")
    if not 1.0 < options.hfov_deg < 170.0:
        raise ValueError("hfov_deg must be in (1, 170)")


def render_sequence(options: RenderOptions | None = None) -> SyntheticSequence:
    """Render the sequence described by ``options`` (defaults: 24 frames, 320 x 240, arc path).

    Deterministic: the same options give bit-identical images and ground truth.
    """
    options = options or RenderOptions()
    _check_options(options)
    start = time.perf_counter()
    scene = build_scene(options.scene)
    K = intrinsics(options.width, options.height, options.hfov_deg)
    poses = camera_path(options)
    for centre in camera_centers(poses):
        if distance_to_surfaces(centre[None], options.scene)[0] < 0.05 or _inside_a_box(
            centre, scene
        ):
            raise ValueError(f"camera centre {centre} is inside or too close to a surface")
    n, h, w = options.num_frames, options.height, options.width
    images = np.empty((n, h, w, 3), np.uint8)
    depth = np.empty((n, h, w), np.float32)
    for i, pose in enumerate(poses):
        images[i], depth[i] = render_frame(scene, K, pose, w, h, options.supersample)
    logger.info("rendered %d frames of %dx%d in %.2fs", n, w, h, time.perf_counter() - start)
    names = [f"frame_{i:03d}.png" for i in range(n)]
    return SyntheticSequence(
        images=images, K=K, cam_from_world=poses, depth=depth, names=names, options=options
    )


def _inside_a_box(point: np.ndarray, scene: Scene) -> bool:
    """Whether ``point`` (3,) is inside a solid box or outside the room."""
    for R, centre, half, inside in scene.frames:
        in_box = bool(np.all(np.abs(R @ (point - centre)) < half))
        if in_box != inside:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

CONVENTIONS = {
    "world": "right-handed, metres, z up, floor at z = 0",
    "camera_axes": "OpenCV: x right, y down, z forward",
    "cam_from_world": "3x4 [R | t], x_cam = R @ x_world + t; camera centre = -R^T t",
    "pixels": "COLMAP: top-left pixel centre at (0.5, 0.5); ray of pixel (col, row) = K^-1 "
    "[col+0.5, row+0.5, 1]",
    "depth": "z-depth in metres along the optical axis, at pixel centres; stored as float16",
    "trajectory_tum": "timestamp tx ty tz qx qy qz qw: world-from-camera (camera centre, "
    "orientation)",
}
"""Human-readable conventions, also written into ``ground_truth.json``."""


def write_sequence(seq: SyntheticSequence, out_dir: str | Path) -> Path:
    """Write ``seq`` to ``out_dir``; returns ``out_dir`` as a Path.

    Layout: ``images/frame_000.png ...`` (RGB PNG), ``ground_truth.npz`` (K, cam_from_world,
    depth as float16, names, width, height, options_json), ``trajectory_tum.txt`` and a
    human-readable ``ground_truth.json`` (K, cam_from_world, names, conventions, options).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name, image in zip(seq.names, seq.images):
        Image.fromarray(image).save(out / "images" / name)
    n, h, w = seq.depth.shape
    options_json = json.dumps(dataclasses.asdict(seq.options))
    np.savez_compressed(
        out / "ground_truth.npz",
        K=seq.K,
        cam_from_world=seq.cam_from_world,
        depth=seq.depth.astype(np.float16),
        names=np.array(seq.names),
        width=w,
        height=h,
        options_json=options_json,
    )
    (out / "trajectory_tum.txt").write_text(
        "\n".join(tum_lines(range(len(seq.cam_from_world)), seq.cam_from_world)) + "\n"
    )
    summary = {
        "width": w,
        "height": h,
        "num_frames": n,
        "K": seq.K.tolist(),
        "names": list(seq.names),
        "cam_from_world": np.round(seq.cam_from_world, 12).tolist(),
        "conventions": CONVENTIONS,
        "options": json.loads(options_json),
    }
    (out / "ground_truth.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info("wrote %d frames to %s", n, out)
    return out


def load_ground_truth(path: str | Path) -> SceneTruth:
    """Read ``ground_truth.npz`` written by :func:`write_sequence` (``path``: the npz or its
    folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "ground_truth.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no ground truth at {path}")
    with np.load(path, allow_pickle=False) as data:
        return SceneTruth(
            K=data["K"].astype(np.float64),
            cam_from_world=data["cam_from_world"].astype(np.float64),
            depth=data["depth"].astype(np.float32),
            names=[str(n) for n in data["names"]],
            width=int(data["width"]),
            height=int(data["height"]),
        )


def load_images(folder: str | Path, names: list[str] | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 frames from ``folder/images`` (default names: those of the ground
    truth)."""
    folder = Path(folder)
    names = names if names is not None else load_ground_truth(folder).names
    return np.stack([np.asarray(Image.open(folder / "images" / n).convert("RGB")) for n in names])
