"""Frames extracted from a video, once, upright and evenly sampled in video time.

A video becomes a folder of JPEG frames (``frame_NNNNNN.jpg``) beside a manifest
(``video.json``: the source, the settings, each frame's video time and content hash). A later
run with the same video and settings reuses the files; anything else extracts them again.

Two things every player does are done here too, so that the frames are what a user saw:

- **Upright frames.** Phones record portrait video as landscape pictures with a rotation in the
  container (the display matrix); the frames are turned by it, as ``ffmpeg`` does by default.
- **Sampling in video time.** With ``fps`` the frame shown at each instant ``t0 + k / fps`` is
  taken, ``t0`` being the first frame's time (streams cut from broadcasts or cameras start at
  any time), and a gap in a variable-frame-rate video skips its instants rather than filling
  them with a burst of neighbouring frames.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from ..core.errors import InputError
from ..infra.files import write_json
from .frames import file_digest

logger = logging.getLogger(__name__)

MANIFEST = "video.json"
"""In the extraction folder: the source, settings, frame names, times and content hashes."""

EXTRACTION = 2
"""How frames are extracted (2: turned upright, sampled from the first frame's time); part of
the settings a manifest must match, so frames extracted by an older rule are extracted again."""

_TURNS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
          270: Image.Transpose.ROTATE_270}
"""Counter-clockwise display rotations (degrees) and the PIL transpose that applies each."""


def check_input_video(video_path: str | Path) -> Path:
    """``video_path``, when it is an existing file.

    Raises:
        InputError: it is missing or a folder.
    """
    video_path = Path(video_path)
    if video_path.is_dir():
        raise InputError(f"input video is a folder: {video_path} (use --input-dir for a folder "
                         "of frames)")
    if not video_path.is_file():
        raise InputError(f"input video does not exist: {video_path}")
    return video_path


def extract_video_frames(
    video_path: Path,
    out_dir: Path,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    jpeg_quality: int = 95,
    show_progress: bool = True,
) -> list[Path]:
    """Decode a video with PyAV into ``out_dir/frame_NNNNNN.jpg``, once.

    Frames are sampled at ``fps`` frames per second of video time (all frames when ``None``),
    from the first frame's time on, and turned upright by the video's display rotation. A
    manifest (``out_dir/video.json``) records the source and settings; a later call with the
    same video and settings reuses the extracted files instead of decoding again.

    Returns:
        The extracted frame files in order.

    Raises:
        InputError: the video is missing or cannot be decoded, or ``fps`` is not positive.
    """
    video_path = check_input_video(video_path)
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise InputError(f"--fps must be a positive number, got {fps}")
    out_dir = Path(out_dir)
    stat = video_path.stat()
    settings = {"source": str(video_path.resolve()), "size": stat.st_size,
                "mtime": stat.st_mtime, "fps": fps, "max_frames": max_frames,
                "jpeg_quality": jpeg_quality, "extraction": EXTRACTION}
    manifest = out_dir / MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        files = [out_dir / name for name in saved.get("frames", [])]
        if saved.get("settings") == settings and files \
                and len(saved.get("times") or []) == len(files):
            changed = _changed_files(files, saved.get("digests"))
            if not changed:
                logger.info("reusing %d frames already extracted to %s", len(files), out_dir)
                return files
            logger.warning("extracting the video again: %s in %s changed since it was "
                           "extracted (or is missing)", changed, out_dir)
        manifest.unlink()  # the files are about to change: never pair them with old settings
    files, times, rotation = _decode_video(video_path, out_dir, fps, max_frames, jpeg_quality,
                                           show_progress)
    write_json(manifest, {"settings": settings, "frames": [f.name for f in files],
                          "times": times, "rotation": rotation,
                          "digests": [file_digest(f.read_bytes()) for f in files]},
               indent=1)
    return files


def _changed_files(files: Sequence[Path], digests: Any) -> str | None:
    """The first of ``files`` that is missing or whose content hash is not its recorded one
    (``digests``, in order); ``None`` when all are as written."""
    if not isinstance(digests, list) or len(digests) != len(files):
        return "the record of the extracted frames"
    for path, expected in zip(files, digests):
        try:
            if file_digest(path.read_bytes()) != expected:
                return path.name
        except OSError:
            return path.name
    return None


def video_frame_times(out_dir: Path) -> list[float] | None:
    """Video time in seconds of each frame :func:`extract_video_frames` wrote into ``out_dir``
    (from its ``video.json``), or ``None`` when not recorded."""
    try:
        times = json.loads((Path(out_dir) / MANIFEST).read_text()).get("times")
    except (OSError, ValueError, AttributeError):
        return None
    return [float(t) for t in times] if isinstance(times, list) else None


def display_turn(rotation: float | None) -> int:
    """The counter-clockwise turn, 0, 90, 180 or 270 degrees, that shows a frame upright, from
    PyAV's ``VideoFrame.rotation`` (degrees counter-clockwise in [-180, 180]; ``None`` or 0
    when the video has no display matrix). Angles between quarter turns are rounded to the
    nearest one, as players show them."""
    if not rotation:
        return 0
    return int(round(float(rotation) / 90.0)) % 4 * 90


def sample_slot(time: float, first_time: float, fps: float) -> int:
    """Index ``k`` of the sampling instant ``first_time + k / fps`` at or before ``time``
    (a microsecond of slack for times stored as rounded fractions)."""
    return math.floor((time - first_time) * fps + 1e-6)


SHORT_DECODE = 0.9
"""A video whose decoded frames span less than this fraction of the duration its container
states is named in a warning (a file cut short: a copy or download that did not finish)."""


def _stated_duration(container: Any, stream: Any) -> float | None:
    """Seconds the video stream (else the container) says it lasts, when it says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return None


def _warn_if_cut_short(video_path: Path, stated: float | None, decoded: float,
                       frame_time: float) -> None:
    """Name a video whose decoded frames span (``decoded`` seconds, frames ``frame_time``
    apart) less than :data:`SHORT_DECODE` of the duration it ``stated``."""
    if stated is not None and decoded < SHORT_DECODE * stated - frame_time:
        logger.warning("video %s says it lasts %.1f s, but decoding stopped after %.1f s: the "
                       "file is probably truncated or damaged; the frames after that are "
                       "missing", video_path.name, stated, decoded)


def _decode_video(video_path: Path, out_dir: Path, fps: float | None, max_frames: int | None,
                  jpeg_quality: int, show_progress: bool
                  ) -> tuple[list[Path], list[float], int]:
    """Decode and write the sampled frames; return them with their video times (seconds) and
    the display turn applied (degrees counter-clockwise); see :func:`extract_video_frames`."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is in requirements.txt
        raise InputError("video input needs PyAV: pip install av") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    times: list[float] = []
    first_time: float | None = None
    last_time, stated, complete = 0.0, None, True
    next_slot, turn = 0, 0
    try:
        with av.open(str(video_path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or fps or 1.0)
            stated = _stated_duration(container, stream)
            bar = tqdm(desc="extracting frames", unit="frame",
                       disable=None if show_progress else True, leave=False)
            for decoded, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else decoded / rate
                first_time = t if first_time is None else first_time
                last_time = t
                if fps is not None:
                    slot = sample_slot(t, first_time, fps)
                    if slot < next_slot:
                        continue
                    next_slot = slot + 1
                turn = display_turn(getattr(frame, "rotation", 0))
                image = frame.to_image()
                if turn:
                    image = image.transpose(_TURNS[turn])
                path = out_dir / f"frame_{len(files):06d}.jpg"
                image.save(path, format="JPEG", quality=jpeg_quality)
                files.append(path)
                times.append(round(t, 6))
                bar.update()
                if max_frames is not None and len(files) >= max_frames:
                    complete = False
                    break
            bar.close()
    except (av.error.FFmpegError, IndexError) as exc:
        raise InputError(f"cannot decode video {video_path}: {exc}") from exc
    if not files:
        raise InputError(f"no frames decoded from video {video_path}")
    if complete:  # decoded to the end of the file
        _warn_if_cut_short(video_path, stated, last_time - (first_time or 0.0) + 1.0 / rate,
                           1.0 / rate)
    if turn:
        logger.info("video %s is shown turned by %d degrees: frames turned upright",
                    video_path.name, turn)
    return files, times, turn
