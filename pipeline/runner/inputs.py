"""A run's input: its frames (a folder or a video), the sequences of a run over many,
each checked before any work.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path

from ..core.errors import InputError
from ..core.failures import plural
from ..infra.lock import OutputBusyError, busy_message, lock_holder
from ..io.frames import (
    Frame,
    broken_links,
    check_one_kind,
    list_image_files,
    one_size,
    prepare_frames,
)
from ..io.output import is_own_folder, refuse_foreign_records
from ..io.sequences import SequenceSource, discover, read_list
from ..io.video import extract_video_frames, video_frame_times
from ..io.window_folders import remove_stale_staging
from ..reconstructors import Reconstructor
from .config import PipelineConfig

logger = logging.getLogger(__name__)


FRAME_CACHE = "frames"
def load_frames(config: PipelineConfig) -> list[Frame]:
    """Find (or extract), validate and order the run's frames, honouring ``frame_step`` and
    ``max_frames``; each frame's timestamp is its index in the input folder's order, or its
    video time in seconds."""
    cache = Path(config.output_dir) / FRAME_CACHE
    if config.input_video is not None:
        # --max-frames counts frames after --frame-step: extract no more than those need
        needed = None if config.max_frames is None \
            else (config.max_frames - 1) * config.frame_step + 1
        paths = extract_video_frames(config.input_video, cache, fps=config.fps,
                                     max_frames=needed, show_progress=config.show_progress)
        stamps: list[float] = video_frame_times(cache) or list(range(len(paths)))
    elif config.input_dir is not None:
        _refuse_input_inside_output(Path(config.input_dir), Path(config.output_dir))
        paths = list_image_files(config.input_dir, config.frame_pattern)
        _broken_links(config)
        check_one_kind(paths)
        stamps = list(range(len(paths)))
    else:
        raise InputError("give an input: --input-dir DIR or --input-video PATH")
    paths, stamps = paths[::config.frame_step], stamps[::config.frame_step]
    if config.max_frames is not None:
        paths, stamps = paths[:config.max_frames], stamps[:config.max_frames]
    return prepare_frames(paths, cache, skip_bad_frames=config.skip_bad_frames,
                          show_progress=config.show_progress, timestamps=stamps)


def _broken_links(config: PipelineConfig) -> None:
    """Name the frames that are links to nothing: an error, or with ``--skip-bad-frames`` a
    warning each (they are left out, as unreadable frames are).

    Raises:
        InputError: a broken link among the frames, without ``--skip-bad-frames``.
    """
    broken = broken_links(Path(config.input_dir), config.frame_pattern)
    if broken and not config.skip_bad_frames:
        path, why = broken[0]
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        raise InputError(f"frame {path} is {why}{more}; fix or remove it, or pass "
                         "--skip-bad-frames")
    for path, why in broken:
        logger.warning("skipping frame %s: %s", path, why)


def _refuse_input_inside_output(input_dir: Path, out: Path) -> None:
    """Refuse an input folder that lies in a folder the run writes (the frame cache, window
    folders, the merged scene, colmap's store): the run would overwrite or delete its input.

    Raises:
        InputError: naming both folders.
    """
    try:
        relative = input_dir.resolve().relative_to(out.resolve())
    except (ValueError, OSError):
        return
    if relative.parts and is_own_folder(relative.parts[0]):
        raise InputError(f"the input folder {input_dir} lies in {out / relative.parts[0]}, "
                         "which the run writes: choose an output folder that does not hold "
                         "the input")


def sequence_sources(config: PipelineConfig) -> list[SequenceSource]:
    """The sequences of ``--input-root`` or ``--input-list``."""
    if config.input_root is not None:
        root, out = Path(config.input_root), Path(config.output_dir)
        if root.resolve() == out.resolve():
            raise InputError(f"--output-dir {out} is the input root: each sequence's output "
                             "would be written into its own frame folder; choose another "
                             "(a folder inside the root, such as ROOT/out, is passed by)")
        return discover(root, skip=[out], pattern=config.frame_pattern)
    return read_list(Path(config.input_list))


def sequence_config(config: PipelineConfig, source: SequenceSource) -> PipelineConfig:
    """A dataset run's configuration narrowed to one of its sequences."""
    video = source.is_video
    return replace(config, input_root=None, input_list=None,
                   input_dir=None if video else source.path,
                   input_video=source.path if video else None,
                   frame_pattern=None if video else config.frame_pattern,
                   fps=config.fps if video else None, show_progress=False,
                   output_dir=Path(config.output_dir) / source.name)


def sized_for(frames: list[Frame], reconstructor: Reconstructor | type[Reconstructor],
              config: PipelineConfig) -> list[Frame]:
    """The frames, checked to share one size when the reconstructor needs it (see
    :func:`pipeline.io.frames.one_size`) and against its options (its ``check_frames``).

    Raises:
        InputError: frames of several sizes for a reconstructor that needs one, too few left
            of the common size, or options these frames contradict.
    """
    kept = frames
    if not reconstructor.mixed_sizes:
        kept = one_size(frames, reconstructor.name, skip_bad_frames=config.skip_bad_frames)
        if len(kept) < 2:
            raise InputError(f"{plural(len(kept), 'frame')} of one size left: too few")
    reconstructor.check_frames(config, kept)
    return kept


def load_sequence(config: PipelineConfig, source: SequenceSource) -> list[Frame]:
    """The frames of one sequence of a dataset run, its folder ready (stale staging removed).

    Raises:
        InputError: the sequence cannot be read (it fails alone).
    """
    out = Path(config.output_dir)
    if not source.path.exists():
        raise InputError(f"{source.path} does not exist")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or exc}") from exc
    refuse_foreign_records(out)  # the sequence would replace the user's own run.json
    holder = lock_holder(out)  # a run over this sequence alone (this run holds OUT's lock)
    if holder is not None:
        raise OutputBusyError(busy_message(out, holder))
    remove_stale_staging(out)
    frames = load_frames(config)
    if len(frames) < config.window_size:
        raise InputError(f"{plural(len(frames), 'frame')}, fewer than one window of "
                         f"{config.window_size}")
    return frames


def remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file (what a sequence that
    failed to load left: its folder and an empty frame cache)."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [folder]:
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # only empty ones go
