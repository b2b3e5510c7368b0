"""Focal lengths of a sequence's cameras for the classical reconstructor: estimated, then checked.

A focal length estimated before mapping is a starting value, not a fact. Two estimates fail in
opposite places:

* the **fundamental matrices** of all verified image pairs (:func:`estimate_focal`) pin the focal
  length of hand-held video, whose short baselines defeat COLMAP's self-calibration in a short
  window; but with a narrow field of view their criterion is nearly flat (DTU, f = 1446 px at
  800 px: any value from 400 to 1600 px fits about as well), and the minimum lands anywhere;
* **bundle adjustment** (COLMAP's self-calibration during mapping) pins the focal length of wide
  baselines (DTU: 1437 px from a start at 512 or 960 px), and from a good start it also keeps
  that of video chunks (7-Scenes: 551 and 543 px on two chunks, started at 551).

So every chunk is mapped with its focal length refined by bundle adjustment, starting from the
best value known before mapping (:func:`initial_focal`: EXIF, else the fundamental matrices when
their criterion has a clear minimum, else COLMAP's default of 1.2 times the larger side), and
the chunks' results are checked (:func:`decide`): a field of view outside what cameras have, or
a chunk that disagrees with the others, is mapped again with the focal length the chunks agree
on held fixed. The candidates, the evidence (frames registered, reprojection error, the
standard deviation bundle adjustment gives the focal length, the chunks' agreement) and the
choice are recorded (``run.json`` → ``calibration``), and a calibration with little support says
so in the log and the digest, which then names ``--camera-params``.

Camera ids are those of the feature store's database (one camera per image size).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from ..core.cameras import CAMERA_PARAMS
from .colmap_database import open_shared

logger = logging.getLogger(__name__)

MIN_CALIBRATION_PAIRS = 20
"""Fundamental matrices a camera needs for :func:`estimate_focal` to estimate its focal length."""
MIN_SUPPORT = 0.5
"""The least relative rise of the fundamental-matrix criterion from its minimum to 1.5 times
and 1 / 1.5 times the focal length for that estimate to start mapping (DTU scan 65: 0.04;
7-Scenes video: 1.8; LLFF fern, VGGT's kitchen and the synthetic testdata: 1 to 6)."""
FOV_RANGE_DEG = (5.0, 140.0)
"""Fields of view (across the larger image side) that pinhole cameras have; a focal length
outside is implausible."""
AGREEMENT = 0.05
"""Chunks whose focal lengths differ from their median by more than this fraction disagree."""
MAX_RELATIVE_STD = 0.02
"""The largest standard deviation of a focal length (a fraction of it, from the bundle
adjustment's covariance at unit pixel noise) that counts as support."""
MIN_REGISTERED_FRACTION = 0.5
"""A chunk's model must register this share of a camera's frames to give evidence on it."""

SOURCE_EXIF = "exif"
SOURCE_FUNDAMENTAL = "fundamental matrices"
SOURCE_DEFAULT = "colmap default"
SOURCE_ADJUSTMENT = "bundle adjustment"
SOURCE_CONSENSUS = "chunks' consensus"


@dataclass(kw_only=True)
class FocalEstimate:
    """The fundamental-matrix estimate of one camera's focal length."""

    focal: float | None
    """Pixels; ``None`` when it could not be estimated (see :attr:`reason`)."""
    pairs: int
    """Fundamental matrices between frames of this camera."""
    cost: float | None = None
    """The criterion at :attr:`focal`: median ``(s1 - s2) / (s1 + s2)`` of the singular values
    of the essential matrices ``K^T F K`` (0 for perfect data)."""
    support: float | None = None
    """How clearly :attr:`focal` is the minimum: the smaller relative rise of the criterion at
    ``focal * 1.5`` and ``focal / 1.5`` (see :data:`MIN_SUPPORT`)."""
    reason: str | None = None
    """Why there is no estimate."""

    @property
    def supported(self) -> bool:
        return self.focal is not None and (self.support or 0.0) >= MIN_SUPPORT


def estimate_focal(
    database: Path, *, min_pairs: int = MIN_CALIBRATION_PAIRS, max_cost: float = 0.02
) -> dict[int, FocalEstimate]:
    """The focal length of each camera of a COLMAP database, from all its verified image pairs.

    For the right calibration ``K`` the essential matrix ``E = K^T F K`` of every pair has two
    equal singular values (Mendonça and Cipolla, 1999). With the principal point at the
    camera's (the image centre unless known), the focal length is the one that minimises the
    median of ``(s1 - s2) / (s1 + s2)`` over the fundamental matrices COLMAP verified between
    frames of that camera: a search over 0.3 to 3 times the image size, then refined. Gave
    535-583 px on subsets of 7-Scenes RedKitchen and 279.5 px on the synthetic testdata (true
    277.1); its :attr:`FocalEstimate.support` says when the minimum means little (DTU).

    Cameras with a focal length prior (EXIF) are not estimated, nor are cameras with fewer
    than ``min_pairs`` fundamental matrices or whose best cost exceeds ``max_cost``.

    Returns:
        ``{camera_id: FocalEstimate}`` of every camera of the database but those with a prior.
    """
    with open_shared(database) as db:
        camera_of = {image.image_id: image.camera_id for image in db.read_all_images()}
        cameras = {camera.camera_id: camera for camera in db.read_all_cameras()}
        pair_ids, geometries = db.read_two_view_geometries()
    matrices: dict[int, list[np.ndarray]] = {c: [] for c in cameras}
    for pair_id, geometry in zip(pair_ids, geometries):
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        if geometry.F is None or camera_of.get(a) != camera_of.get(b):
            continue
        matrices[camera_of[a]].append(np.asarray(geometry.F, float))
    found = {}
    for camera_id in sorted(cameras):
        camera, fs = cameras[camera_id], matrices[camera_id]
        if camera.has_prior_focal_length:
            continue
        if len(fs) < min_pairs:
            found[camera_id] = FocalEstimate(
                focal=None,
                pairs=len(fs),
                reason=f"{len(fs)} image pairs with a fundamental matrix (need {min_pairs})",
            )
            continue
        centre = (camera.principal_point_x, camera.principal_point_y)
        found[camera_id] = focal_from_fundamentals(
            np.stack(fs), max(camera.width, camera.height), centre, max_cost=max_cost
        )
    return found


def focal_from_fundamentals(
    fundamentals: np.ndarray, size: int, centre: tuple[float, float], *, max_cost: float = 0.02
) -> FocalEstimate:
    """The focal length that makes the essential matrices ``K^T F K`` of ``fundamentals``
    (``(M, 3, 3)``, pixels of an image whose larger side is ``size``, principal point ``centre``)
    closest to having two equal singular values: the median of ``(s1 - s2) / (s1 + s2)`` is
    searched over 0.3 to 3 times ``size``, then refined (see :func:`estimate_focal`)."""
    from scipy.optimize import minimize_scalar

    stack = np.stack([f / np.linalg.norm(f) for f in fundamentals])

    def cost(focal: float) -> float:
        k = np.array([[focal, 0.0, centre[0]], [0.0, focal, centre[1]], [0.0, 0.0, 1.0]])
        s = np.linalg.svd(k.T[None] @ stack @ k[None], compute_uv=False)
        return float(np.median((s[:, 0] - s[:, 1]) / (s[:, 0] + s[:, 1])))

    grid = np.geomspace(0.3 * size, 3.0 * size, 120)
    k = int(np.argmin([cost(f) for f in grid]))
    best = minimize_scalar(
        cost,
        bounds=(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]),
        method="bounded",
        options={"xatol": 1e-3 * size},
    )
    focal, value = float(best.x), float(best.fun)
    if value > max_cost:
        return FocalEstimate(
            focal=None,
            pairs=len(stack),
            cost=value,
            reason=f"no focal length explains the image pairs (cost {value:.3f})",
        )
    support = min(cost(focal * 1.5), cost(focal / 1.5)) / max(value, 1e-12) - 1.0
    return FocalEstimate(focal=focal, pairs=len(stack), cost=value, support=float(support))


@dataclass(kw_only=True)
class CameraInfo:
    """A camera of the feature store, as calibration needs it."""

    camera_id: int
    width: int
    height: int
    focal: float
    """The focal length the database holds: EXIF's when :attr:`exif`, else COLMAP's default."""
    exif: bool
    """The focal length comes from the frames' EXIF data."""

    @property
    def size(self) -> int:
        return max(self.width, self.height)


def read_cameras(database: Path) -> dict[int, CameraInfo]:
    """The database's cameras (before any calibration was written into it)."""
    with open_shared(database) as db:
        return {
            c.camera_id: CameraInfo(
                camera_id=c.camera_id,
                width=c.width,
                height=c.height,
                focal=_focal_of(c),
                exif=bool(c.has_prior_focal_length),
            )
            for c in db.read_all_cameras()
        }


def field_of_view(focal: float, size: int) -> float:
    """Degrees seen across ``size`` pixels with ``focal`` (pixels)."""
    return math.degrees(2.0 * math.atan(size / (2.0 * focal)))


def plausible(focal: float | None, size: int) -> bool:
    """A focal length whose field of view across ``size`` pixels lies in :data:`FOV_RANGE_DEG`."""
    if focal is None or not math.isfinite(focal) or focal <= 0:
        return False
    low, high = FOV_RANGE_DEG
    return low <= field_of_view(focal, size) <= high


def initial_focal(camera: CameraInfo, estimate: FocalEstimate | None) -> tuple[float, str]:
    """Where mapping starts: EXIF, else the fundamental-matrix estimate when it is supported
    and plausible, else COLMAP's default. Returns the focal length and its source."""
    if camera.exif:
        return camera.focal, SOURCE_EXIF
    if estimate is not None and estimate.supported and plausible(estimate.focal, camera.size):
        return float(estimate.focal), SOURCE_FUNDAMENTAL
    return camera.focal, SOURCE_DEFAULT


def set_focal_lengths(database: Path, focal: Mapping[int, float]) -> None:
    """Write these focal lengths into the database's cameras, marked as priors (the mapper
    starts from them; bundle adjustment refines them unless told to hold them)."""
    with open_shared(database) as db:
        for camera in db.read_all_cameras():
            if camera.camera_id in focal:
                params = np.array(camera.params, float)
                params[list(camera.focal_length_idxs())] = focal[camera.camera_id]
                camera.params = params
                camera.has_prior_focal_length = True
                db.update_camera(camera)


def _focal_of(camera: pycolmap.Camera) -> float:
    return float(np.mean([camera.params[i] for i in camera.focal_length_idxs()]))


# ---- evidence from a mapped chunk (computed in the worker that mapped it) ----------------------


def model_evidence(rec: pycolmap.Reconstruction, frames_of: Mapping[int, int]) -> dict[str, Any]:
    """What a chunk's model says about its cameras, as JSON: per camera id, the focal length,
    its relative standard deviation from the bundle adjustment's covariance (``None`` when it
    cannot be computed), and the frames registered of ``frames_of[camera_id]``; and the model's
    mean reprojection error (pixels)."""
    registered: dict[int, int] = {}
    for image_id in rec.reg_image_ids():
        camera_id = rec.images[image_id].camera_id
        registered[camera_id] = registered.get(camera_id, 0) + 1
    std = focal_std(rec)
    cameras = {}
    for camera_id, camera in rec.cameras.items():
        focal = _focal_of(camera)
        cameras[str(camera_id)] = {
            "focal": focal,
            "registered": registered.get(camera_id, 0),
            "frames": int(frames_of.get(camera_id, 0)),
            "relative_std": None if std.get(camera_id) is None else std[camera_id] / focal,
        }
    return {"cameras": cameras, "reprojection_error": float(rec.compute_mean_reprojection_error())}


def focal_std(rec: pycolmap.Reconstruction) -> dict[int, float | None]:
    """The standard deviation (pixels, unit pixel noise) of each camera's focal length at the
    model's current solution, from the covariance of a bundle adjustment over all its frames
    and points (no solve: the mapper's last adjustment left it at the optimum)."""
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_focal_length = True
    options.refine_principal_point = False
    options.refine_extra_params = False
    options.ceres.solver_options.num_threads = 1  # the same numbers every run
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in rec.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    found: dict[int, float | None] = {camera_id: None for camera_id in rec.cameras}
    try:
        adjuster = pycolmap.create_default_ceres_bundle_adjuster(options, config, rec)
        covariance = pycolmap.estimate_ba_covariance(pycolmap.BACovarianceOptions(), rec, adjuster)
    except Exception as exc:  # noqa: BLE001 - evidence only; a model without it is judged by the rest
        logger.debug("no covariance of the focal lengths: %s", exc)
        return found
    if covariance is None:
        return found
    for camera_id, camera in rec.cameras.items():
        block = covariance.get_other_params_cov(camera.params)
        if block is not None:
            variances = np.diag(np.asarray(block, float))
            focal_var = [variances[i] for i in camera.focal_length_idxs() if i < len(variances)]
            if focal_var and all(np.isfinite(focal_var)) and min(focal_var) >= 0:
                found[camera_id] = float(math.sqrt(np.mean(focal_var)))
    return found


# ---- the decision, once every chunk is mapped ---------------------------------------------------


@dataclass(kw_only=True)
class CameraCalibration:
    """What was found about one camera, and what was chosen (``run.json`` → ``calibration``)."""

    camera_id: int
    width: int
    height: int
    initial: dict[str, Any]
    """Where mapping started: ``focal`` and ``source``."""
    candidates: list[dict[str, Any]] = field(default_factory=list)
    """Every value considered, each with its ``source`` and evidence."""
    chunks: list[dict[str, Any]] = field(default_factory=list)
    """Each chunk's bundle-adjusted value and evidence, and whether it ``agrees``."""
    focal: float | None = None
    """The focal length chosen (pixels); ``None`` when none is plausible."""
    source: str = SOURCE_ADJUSTMENT
    """How it was chosen: each chunk keeps its own bundle-adjusted value (they agree), or the
    chunks' consensus is held where a chunk disagreed."""
    remap: list[str] = field(default_factory=list)
    """Chunks mapped again with :attr:`focal` held fixed."""
    support: str = "strong"
    """``strong``, or ``weak``: little evidence, chunks that disagree, or an implausible value."""
    warnings: list[str] = field(default_factory=list)

    @property
    def field_of_view(self) -> float | None:
        return (
            None if self.focal is None else field_of_view(self.focal, max(self.width, self.height))
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "field_of_view_deg": self.field_of_view}


def decide(
    cameras: Mapping[int, CameraInfo],
    estimates: Mapping[int, FocalEstimate],
    evidence: Mapping[str, Mapping[str, Any]],
) -> list[CameraCalibration]:
    """Judge every camera's calibration from the chunks mapped with it refined.

    Args:
        cameras: The store's cameras (:func:`read_cameras`).
        estimates: The fundamental-matrix estimates (:func:`estimate_focal`).
        evidence: ``{chunk name: model_evidence(...)}`` of every chunk, in chunk order.

    Returns:
        One decision per camera, in id order. A chunk whose value is implausible, or differs
        from the median of the plausible values of the chunks that registered enough of the
        camera's frames by more than :data:`AGREEMENT`, is listed in ``remap``.
    """
    return [_decide_camera(cameras[c], estimates.get(c), evidence) for c in sorted(cameras)]


def _decide_camera(
    camera: CameraInfo, estimate: FocalEstimate | None, evidence: Mapping[str, Mapping[str, Any]]
) -> CameraCalibration:
    focal, source = initial_focal(camera, estimate)
    result = CameraCalibration(
        camera_id=camera.camera_id,
        width=camera.width,
        height=camera.height,
        initial={"focal": focal, "source": source},
    )
    result.candidates = _candidates(camera, estimate)
    rows = [
        {
            "chunk": name,
            **ev["cameras"][str(camera.camera_id)],
            "reprojection_error": ev.get("reprojection_error"),
        }
        for name, ev in evidence.items()
        if str(camera.camera_id) in ev.get("cameras", {})
    ]
    useful = [
        r
        for r in rows
        # a camera with a single frame (a frame of a size no other has) votes when it joined
        if r["registered"] >= max(min(2, r["frames"]), math.ceil(MIN_REGISTERED_FRACTION
                                                                  * r["frames"]))
        and plausible(r["focal"], camera.size)
    ]
    values = [r["focal"] for r in useful]
    consensus = (
        float(np.median(values)) if values else (focal if plausible(focal, camera.size) else None)
    )
    result.focal = consensus
    for row in rows:
        row["agrees"] = (
            consensus is not None
            and plausible(row["focal"], camera.size)
            and abs(row["focal"] / consensus - 1.0) <= AGREEMENT
        )
        result.chunks.append(row)
        result.candidates.append(
            {
                "source": f"{SOURCE_ADJUSTMENT} ({row['chunk']})",
                "focal": row["focal"],
                "registered": row["registered"],
                "relative_std": row["relative_std"],
            }
        )
    _judge(result, estimate, useful, consensus)
    return result


def _candidates(camera: CameraInfo, estimate: FocalEstimate | None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if camera.exif:
        found.append({"source": SOURCE_EXIF, "focal": camera.focal})
    else:
        found.append({"source": SOURCE_DEFAULT, "focal": camera.focal})
    if estimate is not None:
        found.append(
            {
                "source": SOURCE_FUNDAMENTAL,
                "focal": estimate.focal,
                "pairs": estimate.pairs,
                "cost": estimate.cost,
                "support": estimate.support,
                "reason": estimate.reason,
            }
        )
    return found


def _judge(
    result: CameraCalibration,
    estimate: FocalEstimate | None,
    useful: Sequence[Mapping[str, Any]],
    consensus: float | None,
) -> None:
    """Fill in the chunks to map again, the support and the warnings."""
    size = max(result.width, result.height)
    name = f"camera {result.camera_id} ({result.width}x{result.height})"
    if consensus is None:
        result.support = "weak"
        result.warnings.append(
            f"{name}: no plausible focal length was found (fields of view "
            f"{FOV_RANGE_DEG[0]:g}-{FOV_RANGE_DEG[1]:g} degrees)"
        )
        return
    for row in result.chunks:
        if not plausible(row["focal"], size):
            result.warnings.append(
                f"{name}: {row['chunk']} adjusted the focal length to {row['focal']:.0f} px (a "
                f"{field_of_view(row['focal'], size) if row['focal'] > 0 else 180:.1f} degree "
                "field of view), which no camera has"
            )
    disagreeing = [row["chunk"] for row in result.chunks if not row["agrees"]]
    if disagreeing:
        result.remap, result.source = disagreeing, SOURCE_CONSENSUS
        values = ", ".join(f"{row['focal']:.0f}" for row in result.chunks)
        result.warnings.append(
            f"{name}: the chunks disagree on the focal length ({values} px); "
            f"{', '.join(disagreeing)} mapped again with {consensus:.0f} px "
            "held"
        )
    if not useful:
        result.warnings.append(
            f"{name}: no chunk registered enough of its frames to check the "
            f"focal length; {consensus:.0f} px ({result.initial['source']}) "
            "is unchecked"
        )
    supported = [
        r
        for r in useful
        if r["agrees"] and r["relative_std"] is not None and r["relative_std"] <= MAX_RELATIVE_STD
    ]
    if useful and not supported:
        result.warnings.append(
            f"{name}: bundle adjustment leaves the focal length uncertain "
            f"(standard deviation over {MAX_RELATIVE_STD:.0%})"
        )
    if (
        estimate is not None
        and estimate.supported
        and abs(estimate.focal / consensus - 1.0) > 3 * AGREEMENT
    ):
        result.warnings.append(
            f"{name}: the image pairs suggest {estimate.focal:.0f} px, "
            f"bundle adjustment {consensus:.0f} px"
        )
    if result.warnings:
        result.support = "weak"


def summary_line(decisions: Iterable[CameraCalibration]) -> str:
    """One line for the log: each camera's focal length, its source and support."""
    parts = []
    for d in decisions:
        if d.focal is None:
            parts.append(f"camera {d.camera_id}: none plausible")
            continue
        values = sorted({round(r["focal"]) for r in d.chunks if r["agrees"]})
        spread = f" (chunks {values[0]}-{values[-1]} px)" if len(values) > 1 else ""
        parts.append(
            f"{d.focal:.1f} px{spread}, {d.field_of_view:.0f} degree field of view, "
            f"started from {d.initial['focal']:.0f} px ({d.initial['source']}), "
            f"{d.support} support"
        )
    return "; ".join(parts)


def weak_support_hint(camera_type: str) -> str:
    """What the digest suggests when a calibration had little support."""
    return (
        "run.json -> calibration says why; if the intrinsics are known, give them: "
        f"--camera-params {','.join(CAMERA_PARAMS.get(camera_type, ('f', 'cx', 'cy')))}"
    )


# ---- kept beside the feature store for reruns ---------------------------------------------------


ESTIMATES_FILE = "calibration.json"
"""The fundamental-matrix estimates, kept beside a kept feature store."""
ESTIMATES_VERSION = 2


def read_estimates(folder: Path) -> dict[int, FocalEstimate] | None:
    """The estimates a previous run kept in ``folder`` (``None``: none, or another format)."""
    try:
        data = json.loads((folder / ESTIMATES_FILE).read_text())
        if data.get("version") != ESTIMATES_VERSION:
            return None
        return {int(k): FocalEstimate(**v) for k, v in data["cameras"].items()}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None


def estimates_json(estimates: Mapping[int, FocalEstimate]) -> dict[str, Any]:
    return {
        "version": ESTIMATES_VERSION,
        "cameras": {str(k): asdict(v) for k, v in sorted(estimates.items())},
    }
