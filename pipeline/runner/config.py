"""Typed configuration of a pipeline run: every option once, with its default, its help text
(the docstring under the field) and how the command line reads it (see
:mod:`pipeline.infra.options`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.cameras import CAMERA_TYPES
from ..infra.options import option, options_field
from ..post.merge_options import MergeOptions
from ..reconstructors import registered_flags

IMAGE_MODES = ("link", "copy", "none")
"""What a window's ``images/`` folder may hold."""

INPUT, WINDOWS, RECON, MEMORY, OUTPUT = (
    "input", "windows", "reconstruction", "memory, devices and workers", "output")
"""The sections of ``--help`` of the pipeline's own options (each reconstructor's options
follow, in sections its module names)."""


@dataclass(kw_only=True)
class PipelineConfig(*registered_flags()):
    """Everything one run needs; the command line has one flag per field.

    The pipeline's own options are declared here. Each registered reconstructor declares its
    own in its module (:attr:`pipeline.reconstructors.Reconstructor.flags`, e.g.
    ``VggtFlags``); they are fields of this class through its bases, one per registered
    reconstructor (:func:`pipeline.reconstructors.registered_flags`), so that
    ``PipelineConfig(max_query_pts=1024)`` works as any other option."""

    input_dir: Path | None = option(None, group=INPUT, kind="folder", exclusive="source",
                                    required=True)
    """Folder of frames (jpg, jpeg, png, webp, bmp, tif), ordered by natural sort (frame_2
    before frame_10)."""
    input_video: Path | None = option(None, group=INPUT, kind="folder", exclusive="source",
                                      required=True)
    """A video file; its frames are extracted once (PyAV) into OUT/frames/, turned upright by
    the video's display rotation (portrait phone video) as players show them."""
    input_root: Path | None = option(None, group=INPUT, kind="folder", exclusive="source",
                                     required=True)
    """Many sequences: every folder under it that holds frames, and every video file, is one
    sequence, written to OUT/<name>/ (its path relative to DIR, '/' as '__'); one model load
    for all, and windows of different sequences share batches. OUT/index.jsonl lists every
    window."""
    input_list: Path | None = option(None, group=INPUT, kind="folder", exclusive="source",
                                     required=True, metavar="FILE")
    """Many sequences: a text file with one frame folder or video path a line (blank lines and
    '#' comments skipped; relative to the file's folder); as --input-root otherwise."""
    frame_pattern: str | None = option(None, group=INPUT, metavar="GLOB",
                                       default_text="every image")
    """Only file names matching this glob, e.g. '*.color.jpg' for a folder that also holds
    depth maps; with --input-root, a folder none of whose names match is no sequence."""
    fps: float | None = option(None, group=INPUT, kind="positive_float",
                               default_text="every frame")
    """With --input-video: frames per second of video time to extract, at even instants from
    the first frame's time on (a gap in the video is skipped, not filled)."""
    frame_step: int = option(1, group=INPUT, kind="int", metavar="N")
    """Use every N-th frame, for dense video frame dumps whose consecutive frames barely move."""
    max_frames: int | None = option(None, group=INPUT, kind="int", metavar="N",
                                    default_text="all")
    """Use only the first N frames (after --frame-step)."""
    skip_bad_frames: bool = option(False, group=INPUT, kind="bool")
    """Drop unreadable frames with a warning (default: stop before any work, naming the file)."""
    output_dir: Path = option(group=INPUT, kind="folder", required=True)
    """Output folder (created): run.json, plan.json and one folder per window."""

    window_size: int = option(8, group=WINDOWS, kind="int", metavar="N")
    """Frames per window."""
    window_stride: int = option(4, group=WINDOWS, kind="int", metavar="N")
    """Frames between window starts; at most the window size."""
    window_batch_size: int | None = option(None, group=WINDOWS, kind="batch_size",
                                           metavar="N|auto", default_text="auto")
    """Windows processed together; output paths never depend on it. auto: vggt/da3 measure a
    first batch of one window and then take the most windows that fit the free memory (the
    memory model goes to run.json); colmap takes one per CPU core, at most 8."""

    reconstructor: str = option("auto", group=RECON, kind="reconstructor")
    """vggt: the VGGT network on batches of windows, then tracks and bundle adjustment; da3:
    Depth Anything 3 on batches of windows (checkpoint from --model), tracks from SIFT matching,
    bundle adjustment; colmap: classical SIFT and mapping with pycolmap, CPU, no weights; auto:
    vggt when its weights are here or can be downloaded, else colmap (the choice and why are
    logged and kept in run.json)."""
    camera_type: str = option("SIMPLE_PINHOLE", group=RECON, choices=CAMERA_TYPES)
    """COLMAP camera model."""
    shared_camera: bool = option(False, group=RECON, kind="bool")
    """One set of intrinsics for all frames of a window (default: one per frame)."""
    min_points: int = option(50, group=RECON, kind="count", metavar="N")
    """Mark a window failed when its model has fewer 3D points (too little structure)."""
    min_frame_observations: int = option(20, group=RECON, kind="count", metavar="N")
    """Mark a window failed when one of its registered frames sees fewer 3D points."""
    fov_range: tuple[float, ...] = option((5.0, 140.0), group=RECON, kind="floats",
                                          metavar="MIN,MAX", default_text="5,140")
    """Mark a window failed when a registered frame's camera has a field of view (degrees,
    across the larger image side) outside MIN-MAX: a focal length solved wrong."""

    device: str = option("auto", group=MEMORY)
    """vggt/da3 device, and one per process under accelerate: auto (CUDA when available, else
    CPU), cpu, cuda, cuda:1, ..."""

    cpu_workers: int | None = option(None, group=MEMORY, kind="count", metavar="N",
                                     bounds=(0, 1024), default_text="one per free core")
    """Worker processes that finish windows while the next batches run (vggt/da3: tracks into
    a COLMAP model, bundle adjustment, export; colmap: all of a window's work), frames decoded
    ahead in a thread. 0: the serial path, each batch finished before the next starts (vggt/da3
    in the main process; colmap always in worker processes, so a COLMAP abort costs one
    window). Default: one per core, less one that drives the device for vggt/da3."""
    engine: str = option("local", group=MEMORY, choices=("local", "ray"))
    """local: this process (and its CPU workers); ray: the run spread over a Ray cluster, one
    device actor per GPU keeping the model loaded, every window's CPU part a Ray task
    (pip install -e '.[ray]'; the input and output folders must be shared by the nodes)."""
    ray_address: str | None = option(None, group=MEMORY, metavar="ADDR",
                                     default_text="start a local Ray")
    """With --engine ray: the cluster to join ('auto': the one 'ray start --head' made on this
    machine; or host:port)."""
    use_accelerate: bool = option(False, group=MEMORY, kind="bool")
    """Schedule through Hugging Face Accelerate; implied under 'accelerate launch', which splits
    the windows between its processes (one device each) and merges run.json."""
    profile_memory: bool = option(False, group=MEMORY, kind="bool")
    """Print a per-stage table of time and peak memory at the end (load, forward, tracking,
    bundle adjustment, export); run.json keeps it either way."""


    images: str = option("link", group=OUTPUT, choices=IMAGE_MODES)
    """What each window's images/ holds: absolute symlinks to the frames, copies, or nothing."""
    merge: bool = option(False, group=OUTPUT, kind="bool")
    """After the windows, join them into one reconstruction per connected segment in
    OUT/merged/ (also: python -m pipeline.merge OUT), with the merge options below."""
    merge_options: MergeOptions = options_field(MergeOptions)
    """How windows are merged (its flags take effect with --merge)."""
    overwrite: bool = option(False, group=OUTPUT, kind="bool")
    """Redo every window, including complete ones (colmap: its kept feature store and chunk
    models too)."""
    verbose: bool = option(False, group=OUTPUT, kind="bool", short="-v", exclusive="verbosity")
    """The pipeline's debug log (every window's failure, every reason a window is redone), and
    COLMAP's own warnings."""
    show_progress: bool = True
    """Show progress bars (on a terminal); the command line's -q turns them off."""

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
