"""Finding, validating, ordering and decoding frames (a video's are extracted by
:mod:`pipeline.io.video`).

A *frame* is one image of the ordered input sequence. Every frame handed to the later stages is a
plain 8-bit RGB JPEG or PNG file without an EXIF rotation, so that COLMAP, pycolmap and any
Gaussian-splatting or NeRF trainer read exactly the pixels the pipeline used. Frames that are not
(16-bit, grayscale, RGBA, palette, WebP/BMP/TIFF, or rotated by EXIF) are converted once into a
PNG in the run's frame cache (``OUTPUT/frames/``); the others are used in place.

Every frame carries a content hash of its file (:attr:`Frame.digest`), computed once per run from
the same bytes that are decoded; a window is reused by a rerun only when the hashes of its frames
are unchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import itertools
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from ..core.errors import InputError
from ..core.failures import plural
from ..infra.files import write_json

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""File name endings (case-insensitive) that are taken as frames."""

_PLAIN_FORMATS = ("JPEG", "PNG")
_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONVERTED_INDEX = "converted.json"
"""In the frame cache: ``{png name: content hash of its source}`` of the converted frames."""


@dataclass(frozen=True)
class Frame:
    """One frame of the sequence, ready for the reconstructors.

    Attributes:
        index: Position of the frame in the ordered sequence (0-based).
        name: Unique file name of the frame; the image name in every COLMAP model.
        path: The 8-bit RGB JPEG/PNG file to read (the original, or its converted copy).
        source: The original file (or the video the frame came from).
        width: Image width in pixels, after EXIF rotation.
        height: Image height in pixels, after EXIF rotation.
        digest: Content hash of ``source`` (BLAKE2b, 32 hex digits).
        timestamp: Where the frame sits in the input: its index in the input folder's order
            (before ``--frame-step``), or its time in seconds in the video; ``None`` when not
            known (frames made from plain paths).
    """

    index: int
    name: str
    path: Path
    source: Path
    width: int
    height: int
    digest: str
    timestamp: float | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return (self.width, self.height)


def natural_key(name: str) -> tuple[list, str]:
    """Sort key that orders digit runs by value: ``frame_2`` before ``frame_10``. Names equal
    but for case or zeros (``frame_1``, ``frame_01``; ``IMG_1.JPG``, ``img_1.jpg``) are ordered
    by the name itself, not left in the order the file system lists them."""
    parts = [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
    return parts, name


def is_frame_file(path: Path, pattern: str | None = None) -> bool:
    """Whether ``path`` is an image file (by its extension) whose name matches ``pattern``
    (a glob such as ``"*.color.jpg"``; ``None``: any name). Hidden files are none: macOS
    writes ``._frame_000.jpg`` beside each frame copied to a foreign disk (AppleDouble
    metadata, not a picture)."""
    return (path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
            and path.is_file() and (pattern is None or fnmatch.fnmatch(path.name, pattern)))


def check_input_folder(input_dir: str | Path) -> Path:
    """``input_dir`` as an absolute path, when it is an existing folder.

    Raises:
        InputError: it is missing or not a folder.
    """
    input_dir = Path(input_dir).absolute()
    if not input_dir.exists():
        raise InputError(f"input folder does not exist: {input_dir}")
    if not input_dir.is_dir():
        raise InputError(f"input path is not a folder: {input_dir}")
    return input_dir


def list_image_files(input_dir: Path, pattern: str | None = None) -> list[Path]:
    """The image files directly inside ``input_dir``, in natural order.

    Args:
        input_dir: The folder of frames.
        pattern: Only names matching this glob (e.g. ``"*.color.jpg"``), when given.

    Raises:
        InputError: the folder is missing, not a folder, or holds no image.
    """
    input_dir = check_input_folder(input_dir)
    try:
        paths = [p for p in input_dir.iterdir() if is_frame_file(p, pattern)]
    except OSError as exc:
        raise InputError(f"cannot read the input folder {input_dir}: "
                         f"{exc.strerror or exc}") from exc
    if not paths:
        wanted = pattern or ", ".join(IMAGE_EXTENSIONS)
        raise InputError(f"no images in {input_dir} (looked for {wanted})")
    return sorted(paths, key=lambda p: natural_key(p.name))


def broken_links(input_dir: Path, pattern: str | None = None) -> list[tuple[Path, str]]:
    """The entries of ``input_dir`` named like frames (an image extension, ``pattern``) that are
    links to nothing: ``(path, why)`` for a link to a missing file or a link loop."""
    found = []
    for path in sorted(Path(input_dir).iterdir(), key=lambda p: natural_key(p.name)):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_symlink() or (
                pattern is not None and not fnmatch.fnmatch(path.name, pattern)):
            continue
        try:
            path.stat()
        except FileNotFoundError:
            found.append((path, f"a link to {os.readlink(path)}, which does not exist"))
        except OSError as exc:
            found.append((path, f"a link that cannot be followed ({exc.strerror or exc})"))
    return found


_PIXEL_KINDS = {"1": "1-bit", "L": "grey 8-bit", "LA": "grey 8-bit", "I": "single-channel 32-bit",
                "F": "single-channel float"}
MIN_PATTERN_SHARE = 0.1
"""A second name pattern holding at least this share of the frames is worth a warning."""


def _pixel_kind(path: Path) -> str | None:
    """What a frame's pixels are (from its header only), or None when it cannot be read."""
    try:
        with Image.open(path) as img:
            mode = img.mode
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if mode.startswith("I;16"):
        return "single-channel 16-bit"
    return _PIXEL_KINDS.get(mode, "colour")


def _name_pattern(name: str) -> str:
    """``name`` with every run of digits as ``#`` (``frame-000012.color.jpg`` ->
    ``frame-#.color.jpg``)."""
    return re.sub(r"\d+", "#", name)


def check_one_kind(paths: list[Path]) -> None:
    """Refuse a folder that mixes kinds of images, before any work.

    7-Scenes, TUM and many capture tools keep depth maps, masks or thumbnails beside the colour
    frames; taken whole, every window fails with a misleading reason. Frames whose pixels are of
    different kinds (colour, grey, 16-bit single-channel, float) are an error naming the groups
    and a ``--frame-pattern`` that picks the colour frames. Grey frames named like the colour
    ones (a dark frame some encoder wrote in grey) are only a warning: they are converted like
    any grey frame. Frames of one kind named in several patterns (two cameras?) get a warning.
    Unreadable files are left to :func:`prepare_frames`.

    Raises:
        InputError: the frames are of several kinds.
    """
    groups: dict[str, list[Path]] = {}
    for path in paths:
        kind = _pixel_kind(path)
        if kind is not None:
            groups.setdefault(kind, []).append(path)
    if len(groups) > 1:
        _mixed_kinds(groups)
    patterns = Counter(_name_pattern(path.name) for path in paths)
    ranked_patterns = patterns.most_common()
    if len(ranked_patterns) > 1 and ranked_patterns[1][1] >= MIN_PATTERN_SHARE * len(paths):
        listed = ", ".join(f"{n} like {p}" for p, n in ranked_patterns[:3])
        logger.warning("the frames follow %d name patterns (%s); if only one of them is the "
                       "sequence, choose it with --frame-pattern", len(patterns), listed)


def _mixed_kinds(groups: dict[str, list[Path]]) -> None:
    """Raise (or warn) about frames of several pixel kinds; see :func:`check_one_kind`."""
    ranked = sorted(groups.items(), key=lambda item: (item[0] != "colour", -len(item[1])))
    listed = ", ".join(f"{len(group)} {kind} (e.g. {group[0].name})" for kind, group in ranked)
    others = [p for _, group in ranked[1:] for p in group]
    glob = _pattern_for(ranked[0][1], others)
    if glob is None and {kind for kind, _ in ranked[1:]} == {"grey 8-bit"}:
        logger.warning("the frames are of several kinds (%s), named alike: the grey ones are "
                       "used as grey", listed)
        return
    hint = f", e.g. --frame-pattern '{glob}'" if glob else " GLOB"
    raise InputError(f"the input folder mixes kinds of images: {listed}; choose the frames "
                     f"with --frame-pattern{hint}")


def _pattern_for(wanted: list[Path], others: list[Path]) -> str | None:
    """A glob that matches every name of ``wanted`` and none of ``others``, if a simple one
    does (``*.color.jpg``, then the digits-as-``*`` pattern)."""
    first = wanted[0].name
    candidates = []
    if "." in first:
        candidates.append("*" + first[first.index("."):])
    candidates.append(re.sub(r"\d+", "*", first))
    for glob in candidates:
        if all(fnmatch.fnmatchcase(p.name, glob) for p in wanted) and \
                not any(fnmatch.fnmatchcase(p.name, glob) for p in others):
            return glob
    return None


def load_image(path: Path) -> np.ndarray:
    """Decode an image as the pipeline sees it.

    EXIF orientation is applied; grayscale, palette, CMYK and RGBA images become RGB (alpha is
    dropped); 16- and 32-bit integer images are scaled to 8 bits.

    Returns:
        ``(H, W, 3)`` uint8 RGB array.

    Raises:
        InputError: the file cannot be read or decoded; the message names the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb8(ImageOps.exif_transpose(img))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read frame {path}: {exc}") from exc


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to ``(H, W, 3)`` uint8 RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        gray = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def _needs_conversion(img: Image.Image, data: bytes) -> str | None:
    """Why ``img`` (decoded from ``data``) cannot be handed on as it is, or ``None`` when it can."""
    if img.format not in _PLAIN_FORMATS:
        return f"format {img.format}"
    if img.mode != "RGB":
        return f"mode {img.mode}"
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and data[24] != 8:
        return f"{data[24]}-bit PNG"  # Pillow shows 16-bit RGB as mode RGB
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        return "EXIF orientation"
    return None


@dataclass(frozen=True)
class _Probe:
    """What validating one file found out."""

    path: Path
    width: int = 0
    height: int = 0
    digest: str = ""
    conversion: str | None = None
    error: str | None = None
    pages: int = 1
    """Frames the file holds (an animated WebP/PNG, a multi-page TIFF: the first is used)."""


def file_digest(data: bytes) -> str:
    """Content hash of a frame file's bytes (BLAKE2b-128: about 1 GB/s, 5 ms for a 4K PNG)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _probe(path: Path) -> _Probe:
    """Read ``path`` once: hash its bytes, decode them fully to prove the file intact, and record
    its size and whether it needs converting."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path.name):
        return _Probe(path, error="its name holds a control character (newline, tab...); rename it")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            reason = _needs_conversion(img, data)
            width, height = ImageOps.exif_transpose(img).size
            pages = int(getattr(img, "n_frames", 1) or 1)
        return _Probe(path, width, height, file_digest(data), reason, pages=pages)
    except (OSError, ValueError, SyntaxError, IndexError, Image.DecompressionBombError) as exc:
        # PIL names the in-memory buffer it read (an address that changes every run): the file
        message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", path.name, str(exc))
        return _Probe(path, error=f"{type(exc).__name__}: {message}")


def _warn_animated(probes: Sequence[_Probe]) -> None:
    """One warning naming the frames that are animations or multi-page files (each is one
    frame of the sequence: its first picture; its others are not frames)."""
    animated = [p for p in probes if p.pages > 1]
    if animated:
        first = animated[0]
        more = f" and {len(animated) - 1} more" if len(animated) > 1 else ""
        logger.warning("frame %s holds %d pictures (an animation or a multi-page file)%s: only "
                       "the first picture of each is used (save its pictures as frames to "
                       "use them all)", first.path.name,
                       first.pages, more)


def _converted_name(path: Path, taken: set[str]) -> str:
    """A PNG name for the converted copy of ``path`` that no other frame uses: ``<stem>.png``,
    else ``<name>.png``, else ``<name>-2.png``, ``<name>-3.png``... (``taken``: the names of
    every input frame and of the copies named so far)."""
    name = f"{path.stem}.png"
    if name == path.name or name not in taken:
        return name
    candidates = itertools.chain([f"{path.name}.png"],
                                 (f"{path.name}-{k}.png" for k in itertools.count(2)))
    return next(c for c in candidates if c not in taken)


def prepare_frames(
    paths: list[Path],
    cache_dir: Path,
    *,
    skip_bad_frames: bool = False,
    num_workers: int | None = None,
    show_progress: bool = True,
    timestamps: Sequence[float] | None = None,
) -> list[Frame]:
    """Validate every frame and convert those that need it, before any reconstruction starts.

    Args:
        paths: Frame files in sequence order.
        cache_dir: Folder for converted copies (created only when a frame needs one).
        skip_bad_frames: Drop unreadable frames with a warning instead of failing.
        num_workers: Decoding threads (default: the number of CPU cores).
        show_progress: Show a tqdm bar (on a terminal).
        timestamps: Each path's :attr:`Frame.timestamp`, when known.

    Returns:
        The usable frames, indexed 0..N-1 in sequence order.

    Raises:
        InputError: a frame is unreadable (and ``skip_bad_frames`` is off), or fewer than two
            frames remain.
    """
    workers = num_workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probes = list(tqdm(pool.map(_probe, paths), total=len(paths), desc="checking frames",
                           unit="frame", disable=None if show_progress else True,
                           leave=False))
    bad = [p for p in probes if p.error]
    if bad and not skip_bad_frames:
        raise InputError(
            f"unreadable frame {bad[0].path} ({bad[0].error})"
            + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
            + "; fix or remove it, or pass --skip-bad-frames"
        )
    for probe in bad:
        logger.warning("skipping unreadable frame %s (%s)", probe.path, probe.error)
    stamps = dict(zip(paths, timestamps)) if timestamps is not None else {}
    good = [p for p in probes if not p.error]
    if len(good) < 2:
        raise InputError(f"need at least 2 readable frames, found {len(good)}")
    _warn_animated(good)
    taken = {p.path.name for p in good}
    if any(p.conversion for p in good):
        _refuse_overwriting(Path(cache_dir), [p.path for p in good])
    cache = _ConversionCache(Path(cache_dir))
    frames = []
    for index, probe in enumerate(good):
        name, path = probe.path.name, probe.path
        if probe.conversion:
            name = _converted_name(probe.path, taken)
            taken.add(name)
            path = cache.convert(probe, name)
        frames.append(Frame(index, name, path, probe.path, probe.width, probe.height,
                            probe.digest, stamps.get(probe.path)))
    cache.save()
    return frames


def _refuse_overwriting(cache_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse a frame cache that is the folder of an input frame: the converted copies
    (``<stem>.png``) would replace the user's own files.

    Raises:
        InputError: naming the folder.
    """
    cache = cache_dir.resolve()
    for path in inputs:
        if path.resolve().parent == cache:
            raise InputError(f"the converted frames would be written into the input folder "
                             f"{cache} (the output folder's frames/), over the frames "
                             "themselves: choose an output folder that does not hold the input")


class _ConversionCache:
    """Converted frames in the frame cache, each reused only while its source's content hash is
    the one it was made from (``converted.json``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index_path = folder / CONVERTED_INDEX
        try:
            self.index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            self.index = {}
        if not isinstance(self.index, dict):
            self.index = {}
        self.changed = False

    def convert(self, probe: _Probe, name: str) -> Path:
        """The 8-bit RGB PNG of ``probe``'s file, written unless an up-to-date one exists: made
        from this content of the source, and itself unchanged since (its own content hash is
        recorded, and checked as a source's is)."""
        target = self.folder / name
        entry = self.index.get(name)
        if isinstance(entry, dict) and entry.get("source") == probe.digest and target.is_file():
            if file_digest(target.read_bytes()) == entry.get("copy"):
                return target
            logger.warning("converted frame %s changed since it was made; converting %s again",
                           target, probe.path)
        logger.debug("converting %s (%s) to %s", probe.path, probe.conversion, target)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        Image.fromarray(load_image(probe.path)).save(tmp, format="PNG")
        copy = file_digest(tmp.read_bytes())
        os.replace(tmp, target)
        self.index[name] = {"source": probe.digest, "copy": copy}
        self.changed = True
        return target

    def save(self) -> None:
        if self.changed:
            write_json(self.index_path, self.index, indent=1, sort_keys=True)


def one_size(frames: list[Frame], reconstructor: str, *, skip_bad_frames: bool = False
             ) -> list[Frame]:
    """The frames, when they share one image size (which ``reconstructor`` needs).

    With ``skip_bad_frames`` the frames of other sizes than the most common one are dropped with
    a warning naming them.

    Raises:
        InputError: the frames differ in size (the sizes named, with how many frames each and
            the first frames of the rarer ones), and ``skip_bad_frames`` is off.
    """
    counts = Counter(f.size for f in frames)
    if len(counts) <= 1:
        return frames
    (common, _), *others = counts.most_common()
    odd = [f for f in frames if f.size != common]
    sizes = ", ".join(f"{w}x{h} ({plural(n, 'frame')})" for (w, h), n in counts.most_common())
    named = ", ".join(repr(f.name) for f in odd[:3]) + (", ..." if len(odd) > 3 else "")
    if not skip_bad_frames:
        raise InputError(f"frames differ in size: {sizes}; {reconstructor} needs one size per "
                         f"window: pick frames of one size (--frame-pattern), or drop the "
                         f"{plural(len(odd), 'frame')} of other sizes ({named}) with "
                         "--skip-bad-frames")
    logger.warning("dropping %s of other sizes than %dx%d (%s): %s needs one size per window",
                   plural(len(odd), "frame"), *common, named, reconstructor)
    return [f for f in frames if f.size == common]
