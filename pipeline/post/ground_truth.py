"""Ground-truth camera poses read from disk, matched to frames by name.

Ground truth formats (detected from the path by :func:`read_ground_truth`):

* synthetic: ``ground_truth.npz`` (or a folder holding it) with ``K`` (3, 3),
  ``cam_from_world`` (N, 3, 4) and ``names`` (N,);
* TUM: a trajectory file; frame names come from ``<stem>_names.txt`` or ``names.txt`` beside it
  (one name a line, same order), otherwise integer timestamps (or, failing that, the row order)
  are frame indices into the input folder (as the run's plan records each frame's index; a run
  without that record: into the naturally sorted list of the run's frame names);
* 7-Scenes: a folder of ``frame-NNNNNN.pose.txt`` (4 x 4 camera-to-world) beside
  ``frame-NNNNNN.color.jpg``; the frame name is the colour image's name;
* COLMAP: a model folder (``cameras``/``images`` as ``.txt`` or ``.bin``, such as DTU's
  ``gt_sparse/``), or a folder holding one as ``sparse/``, ``sparse/0`` or ``gt_sparse/``; poses
  are matched by image name (the file name, so ``images/000001.jpg`` in the model matches frame
  ``000001.jpg``).

Conventions: poses are camera-from-world (3, 4) ``[R | t]``, OpenCV camera axes; TUM files hold
world-from-camera poses (``timestamp tx ty tz qx qy qz qw``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import invert_pose, nearest_rotation, quat_xyzw_to_rotmat
from ..io.frames import natural_key

logger = logging.getLogger(__name__)

GT_NPZ = "ground_truth.npz"
"""Synthetic ground-truth file name."""
TUM_NAMES_FILES = ("{stem}_names.txt", "names.txt")
"""Names files looked for beside a TUM trajectory, in order."""
TUM_DEFAULT_FILES = ("trajectory_tum.txt", "groundtruth.txt", "trajectory.txt")
"""TUM files looked for when the ground-truth path is a folder."""
_SEVEN_SCENES_POSE = "frame-*.pose.txt"


@dataclass(kw_only=True)
class GroundTruth:
    """Ground-truth poses as read from disk."""

    kind: str
    """``"synthetic"``, ``"tum"``, ``"7scenes"`` or ``"colmap"``."""
    cam_from_world: np.ndarray
    """(N, 3, 4) camera-from-world poses."""
    names: list[str] | None
    """N frame names, or ``None`` when the source has none (see :attr:`indices`)."""
    indices: list[int] | None = None
    """N frame indices (into the sorted frame names of a run) when :attr:`names` is ``None``."""
    source: Path | None = None
    """File or folder read."""

    def as_dict(self, frame_names: Sequence[str] | None = None, *,
                index_names: Mapping[int, str] | None = None) -> dict[str, np.ndarray]:
        """``{frame name: (3, 4) pose}``. Unnamed poses (:attr:`indices`) take the frame of
        that index in the input folder, ``index_names[index]``, when the run recorded it (its
        plan: a run with ``--frame-step`` or ``--max-frames`` has some of the folder's frames
        only), else ``sorted(frame_names)[index]``.

        Raises:
            InputError: when the poses have no names and neither is given.
        """
        if self.names is not None:
            return {n: p for n, p in zip(self.names, self.cam_from_world)}
        if index_names is None and not frame_names:
            raise InputError(f"ground truth {self.source} has no frame names: put a names file "
                             f"beside it ({', '.join(TUM_NAMES_FILES)})")
        if index_names is None:
            index_names = dict(enumerate(sorted(frame_names, key=natural_key)))
        out = {index_names[i]: p for i, p in zip(self.indices, self.cam_from_world)
               if i in index_names}
        logger.debug("matched %d of %d unnamed GT poses by index", len(out), len(self.indices))
        return out


# --------------------------------------------------------------------------------------------
# Ground truth readers
# --------------------------------------------------------------------------------------------

def read_ground_truth(path: str | Path) -> GroundTruth:
    """Read ground truth in any supported format, detected from ``path`` (see module doc).

    Raises:
        InputError: when ``path`` is missing, unrecognised or malformed.
    """
    return _finite_only(_read_any(Path(path)))


def _finite_only(truth: GroundTruth) -> GroundTruth:
    """``truth`` without its poses that are not finite (each skipped with a warning).

    Raises:
        InputError: none is finite.
    """
    finite = np.isfinite(truth.cam_from_world).all(axis=(1, 2))
    if finite.all():
        return truth
    if not finite.any():
        raise InputError(f"ground truth {truth.source}: none of its {len(finite)} poses is "
                         "finite")
    labels = truth.names if truth.names is not None else truth.indices
    for label in np.asarray(labels, dtype=object)[~finite]:
        logger.warning("ground truth %s: the pose of %s is not finite; that frame is not "
                       "scored", truth.source, label)
    keep = np.flatnonzero(finite).tolist()
    return dataclasses.replace(
        truth, cam_from_world=truth.cam_from_world[finite],
        names=None if truth.names is None else [truth.names[i] for i in keep],
        indices=None if truth.indices is None else [truth.indices[i] for i in keep])


def _read_any(path: Path) -> GroundTruth:
    if not path.exists():
        raise InputError(f"ground truth not found: {path}")
    if path.is_file():
        return read_synthetic_gt(path) if path.suffix == ".npz" else read_tum_gt(path)
    if (path / GT_NPZ).is_file():
        return read_synthetic_gt(path / GT_NPZ)
    if any(path.glob(_SEVEN_SCENES_POSE)):
        return read_7scenes_gt(path)
    for model in (path, path / "sparse", path / "sparse" / "0", path / "gt_sparse"):
        if _is_colmap_model(model):
            return read_colmap_gt(model)
    for name in TUM_DEFAULT_FILES:
        if (path / name).is_file():
            return read_tum_gt(path / name)
    raise InputError(f"unrecognised ground truth {path}: expected {GT_NPZ} (synthetic), a TUM "
                     f"trajectory file, a 7-Scenes folder (frame-NNNNNN.pose.txt), or a COLMAP "
                     "model folder (cameras/images .txt or .bin)")


def load_ground_truth_poses(path: str | Path, *, frame_names: Sequence[str] | None = None,
                            index_names: Mapping[int, str] | None = None
                            ) -> dict[str, np.ndarray]:
    """``{frame name: (3, 4) camera-from-world}`` from any supported ground truth.

    ``index_names`` (input-folder index -> frame name) or ``frame_names`` (the run's frames)
    name the poses of a TUM file without a names file (see :meth:`GroundTruth.as_dict`).
    """
    return read_ground_truth(path).as_dict(frame_names, index_names=index_names)


def read_synthetic_gt(npz_path: Path) -> GroundTruth:
    """The project's synthetic ``ground_truth.npz`` (``cam_from_world``, ``names``; ``K`` and
    depth are not needed)."""
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            poses = np.asarray(data["cam_from_world"], dtype=float)
            names = [str(n) for n in data["names"]]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read synthetic ground truth {npz_path}: {exc}") from exc
    if poses.ndim != 3 or poses.shape[1:] != (3, 4) or len(names) != len(poses):
        raise InputError(f"{npz_path}: expected cam_from_world (N, 3, 4) and N names, got "
                         f"{poses.shape} and {len(names)} names")
    return GroundTruth(kind="synthetic", cam_from_world=poses, names=names, source=npz_path)


def read_tum_trajectory(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (N,) and camera-from-world poses (N, 3, 4) of a TUM file.

    Each non-empty line not starting with ``#`` is ``timestamp tx ty tz qx qy qz qw``
    (world-from-camera: ``t`` is the camera centre, ``q`` its orientation).

    Raises:
        InputError: on an unreadable file, a malformed line, or no poses.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read TUM trajectory {path}: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            values = []
        if len(values) != 8:
            raise InputError(f"{path}:{number}: expected 'timestamp tx ty tz qx qy qz qw'")
        if not all(map(math.isfinite, values)):
            logger.warning("%s:%d: the pose is not finite; that frame is not scored", path,
                           number)
            continue
        rows.append(values)
    if not rows:
        raise InputError(f"TUM trajectory {path} holds no poses")
    data = np.array(rows)
    try:
        world_rot = quat_xyzw_to_rotmat(data[:, 4:8])
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from exc
    world_from_cam = np.concatenate([world_rot, data[:, 1:4, None]], axis=2)
    return data[:, 0], invert_pose(world_from_cam)


def read_names_file(path: Path, expected: int) -> list[str]:
    """Frame names, one a line (blank lines skipped); there must be ``expected`` of them."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read names file {path}: {exc}") from exc
    if len(names) != expected:
        raise InputError(f"{path} lists {len(names)} names for {expected} poses")
    return names


def frame_indices(timestamps: np.ndarray) -> list[int] | None:
    """Timestamps as frame indices when they are distinct non-negative integers, else None."""
    if (timestamps >= 0).all() and (timestamps == np.round(timestamps)).all() \
            and len(np.unique(timestamps)) == len(timestamps):
        return [int(t) for t in timestamps]
    return None


def read_tum_gt(path: Path) -> GroundTruth:
    """A TUM ground-truth file, named by a names file beside it or by frame index."""
    stamps, poses = read_tum_trajectory(path)
    for pattern in TUM_NAMES_FILES:
        names_path = path.with_name(pattern.format(stem=path.stem))
        if names_path.is_file():
            names = read_names_file(names_path, len(poses))
            return GroundTruth(kind="tum", cam_from_world=poses, names=names, source=path)
    indices = frame_indices(stamps)
    if indices is None:
        logger.info("%s: timestamps are not frame indices; matching frames by row order", path)
        indices = list(range(len(poses)))
    return GroundTruth(kind="tum", cam_from_world=poses, names=None, indices=indices, source=path)


def _read_7scenes_pose(pose_path: Path) -> np.ndarray | None:
    """Camera-from-world (3, 4) of one 7-Scenes pose file, None when not finite."""
    try:
        m = np.loadtxt(pose_path, dtype=float)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read 7-Scenes pose {pose_path}: {exc}") from exc
    if m.shape != (4, 4):
        raise InputError(f"{pose_path}: expected a 4 x 4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        logger.warning("skipping %s: pose is not finite", pose_path.name)
        return None
    world_from_cam = np.concatenate([nearest_rotation(m[:3, :3]), m[:3, 3:]], axis=1)
    return invert_pose(world_from_cam)


def read_7scenes_gt(folder: Path) -> GroundTruth:
    """A 7-Scenes sequence folder: ``frame-NNNNNN.pose.txt`` are 4 x 4 camera-to-world (metres).

    Rotations are projected onto the nearest proper rotation (the files are rounded); the frame
    name is that of the colour image (``frame-NNNNNN.color.jpg``, or ``.png`` when only that
    exists).
    """
    names, poses = [], []
    for pose_path in sorted(folder.glob(_SEVEN_SCENES_POSE), key=lambda p: natural_key(p.name)):
        pose = _read_7scenes_pose(pose_path)
        if pose is None:
            continue
        stem = pose_path.name[: -len(".pose.txt")]
        png = folder / f"{stem}.color.png"
        names.append(png.name if png.exists() and not (folder / f"{stem}.color.jpg").exists()
                     else f"{stem}.color.jpg")
        poses.append(pose)
    if not poses:
        raise InputError(f"no usable 7-Scenes poses in {folder}")
    return GroundTruth(kind="7scenes", cam_from_world=np.stack(poses), names=names, source=folder)


def _is_colmap_model(folder: Path) -> bool:
    return any((folder / f"images{ext}").is_file() and (folder / f"cameras{ext}").is_file()
               for ext in (".txt", ".bin"))


def read_colmap_gt(folder: Path) -> GroundTruth:
    """The posed images of a COLMAP model folder (text or binary), named by file name.

    Raises:
        InputError: the model does not load, holds no posed image, or two images share a
            file name.
    """
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(folder))
    except Exception as exc:  # noqa: BLE001 - pycolmap raises its own error types
        raise InputError(f"cannot read the COLMAP model {folder}: {exc}") from exc
    names, poses = [], []
    for image_id in sorted(rec.reg_image_ids()):
        image = rec.images[image_id]
        pose = np.asarray(image.cam_from_world().matrix(), dtype=float)
        if not np.isfinite(pose).all():
            logger.warning("skipping %s: pose is not finite", image.name)
            continue
        names.append(Path(image.name).name)
        poses.append(pose)
    if not poses:
        raise InputError(f"the COLMAP model {folder} holds no posed image")
    if len(set(names)) != len(names):
        raise InputError(f"the COLMAP model {folder} names one image file twice (in two "
                         "folders): poses cannot be matched by name")
    return GroundTruth(kind="colmap", cam_from_world=np.stack(poses), names=names, source=folder)


# --------------------------------------------------------------------------------------------
# Pipeline output readers
# --------------------------------------------------------------------------------------------


def ground_truth_beside(source: str | Path) -> Path | None:
    """The ground truth found beside an input folder: in it, or in its parent; ``None``."""
    source = Path(source)
    for candidate in (source, source.parent):
        try:
            read_ground_truth(candidate)
        except InputError:
            continue
        return candidate
    return None
