"""Typed configuration of a pipeline run: every option once, with its default, its help text
(the docstring under the field) and how the command line reads it (see :mod:`pipeline.options`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .options import option, options_field

IMAGE_MODES = ("link", "copy", "none")
"""What a window's ``images/`` folder may hold."""

CAMERA_TYPES = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL")
"""COLMAP camera models users can ask for."""

DA3_METHODS = ("upper_bound_resize", "lower_bound_resize", "upper_bound_crop", "lower_bound_crop")
"""Depth Anything 3's ways of fitting frames to its grid (see :mod:`pipeline.preprocess`)."""

CAMERA_PARAMS = {"SIMPLE_PINHOLE": ("f", "cx", "cy"), "PINHOLE": ("fx", "fy", "cx", "cy"),
                 "SIMPLE_RADIAL": ("f", "cx", "cy", "k")}
"""The parameters of each camera model, in COLMAP's order."""

VGGT_1B = "facebook/VGGT-1B"
"""The released VGGT checkpoint on the Hugging Face hub (vggt's default)."""

NETWORKS = ("vggt", "da3")
"""The network reconstructors (options that only they read name these)."""

INPUT, WINDOWS, RECON, NETS, MEMORY, DA3, OUTPUT, MERGE = (
    "input", "windows", "reconstruction", "networks (vggt, da3)", "memory and devices",
    "da3 and exports", "output", "merge")
"""The sections of ``--help`` (listed in the order their first field appears below)."""


@dataclass(kw_only=True)
class MergeOptions:
    """Settings of :func:`pipeline.merge.merge_output` (``--merge``, and
    ``python -m pipeline.merge``)."""

    min_shared_frames: int = option(3, group=MERGE, kind="int", metavar="N")
    """Windows sharing fewer registered frames than this are not joined."""
    depth_grid: int = option(32, group=MERGE, kind="int", metavar="N")
    """Shared frames with predicted depth in both windows (vggt --save-depth) add
    correspondences on a grid of this many columns (rows in proportion): the same pixel
    back-projected by each window."""
    max_camera_error: float = option(0.05, group=MERGE, kind="positive_float",
                                     metavar="FRACTION")
    """A pair is rejected when, after alignment, the shared camera centres differ (RMS) by more
    than this fraction of the scene depth (the median camera-to-point distance of the window)."""
    refine: bool = option(True, group=MERGE, kind="bool")
    """Refine all window transforms jointly after chaining them (a Sim(3) pose graph)."""
    voxel_fraction: float = option(0.002, group=MERGE, kind="positive_float",
                                   metavar="FRACTION")
    """Voxel size for downsampling the merged points, as a fraction of their extent (the
    diagonal of the box holding the central 98% of the points)."""


@dataclass(kw_only=True)
class PipelineConfig:
    """Everything one run needs; the command line has one flag per field."""

    input_dir: Path | None = option(None, group=INPUT, kind="folder", exclusive="source",
                                    required=True)
    """Folder of frames (jpg, jpeg, png, webp, bmp, tif), ordered by natural sort (frame_2
    before frame_10)."""
    input_video: Path | None = option(None, group=INPUT, kind="folder", exclusive="source",
                                      required=True)
    """A video file; its frames are extracted once (PyAV) into OUT/frames/."""
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
    """With --input-dir: only file names matching this glob, e.g. '*.color.jpg' for a folder
    that also holds depth maps."""
    fps: float | None = option(None, group=INPUT, kind="positive_float",
                               default_text="every frame")
    """With --input-video: frames per second of video time to extract."""
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
    camera_params: tuple[float, ...] | None = option(
        None, group=RECON, kind="floats", metavar="P1,P2,...", readers=("colmap",),
        default_text="estimated")
    """colmap: known intrinsics in COLMAP's order for --camera-type, in pixels of the original
    frames, kept fixed: f,cx,cy (SIMPLE_PINHOLE), fx,fy,cx,cy (PINHOLE), f,cx,cy,k
    (SIMPLE_RADIAL)."""
    shared_camera: bool = option(False, group=RECON, kind="bool")
    """One set of intrinsics for all frames of a window (default: one per frame)."""
    chunk_frames: int = option(100, group=RECON, kind="count", metavar="N", readers=("colmap",))
    """colmap: frames of the sequence reconstructed together, each window cut out of its chunk
    (features once per frame, matches once per pair, poses for short windows of video); 0: each
    window from its own frames only."""
    min_registered_fraction: float = option(0.5, group=RECON, kind="float",
                                            name="--min-registered", metavar="FRACTION",
                                            readers=("colmap",))
    """colmap: mark a window failed when fewer of its frames register."""
    min_points: int = option(50, group=RECON, kind="count", metavar="N")
    """Mark a window failed when its model has fewer 3D points (too little structure)."""
    min_frame_observations: int = option(20, group=RECON, kind="count", metavar="N")
    """Mark a window failed when one of its registered frames sees fewer 3D points."""

    model: str = option(VGGT_1B, group=NETS, readers=NETWORKS)
    """vggt/da3 checkpoint: a .safetensors/.pt file, a folder holding one, or a hub id
    (facebook/VGGT-1B is vggt's; da3 needs one given, e.g. depth-anything/DA3-LARGE-1.1 or a
    folder)."""
    device: str = option("auto", group=NETS)
    """vggt/da3 device, and one per process under accelerate: auto (CUDA when available, else
    CPU), cpu, cuda, cuda:1, ..."""
    mixed_precision: str = option("auto", group=NETS, choices=("auto", "bf16", "fp16", "no"),
                                  readers=NETWORKS)
    """vggt/da3 precision: auto is bf16 on GPUs that support it, fp16 on older GPUs, fp32 on
    the CPU; no is fp32."""
    preprocess_mode: str = option("crop", group=NETS, choices=("crop", "pad"),
                                  readers=("vggt",))
    """vggt input grid: crop is --process-res px wide, centre-cropped to at most as many rows;
    pad is the longer side --process-res, padded to a square."""
    query_frame_num: int = option(4, group=NETS, kind="int", metavar="N", readers=("vggt",))
    """vggt: frames per window whose SIFT keypoints are tracked."""
    max_query_pts: int = option(2048, group=NETS, kind="int", metavar="N", readers=("vggt",))
    """vggt: keypoints tracked per window (kept where the depth confidence is high)."""
    fine_tracking: bool = option(False, group=NETS, kind="bool", readers=("vggt",))
    """vggt: run the track head's refinement for twice as many iterations (slower, sometimes
    tighter tracks)."""
    vis_thresh: float = option(0.2, group=NETS, kind="float", readers=("vggt",))
    """vggt: drop track observations with a lower visibility score."""
    max_reproj_error: float = option(8.0, group=NETS, kind="float", readers=NETWORKS)
    """vggt/da3: drop observations with a larger reprojection error, in pixels."""
    use_ba: bool = option(True, group=NETS, kind="bool", readers=NETWORKS)
    """vggt/da3: bundle-adjust the predicted cameras with the tracks; --no-use-ba writes points
    from the predicted depth instead."""
    conf_thres_value: float = option(5.0, group=NETS, kind="float", readers=NETWORKS)
    """vggt/da3 without bundle adjustment: depth confidence a pixel needs to become a point."""
    allow_approximate: bool = option(False, group=NETS, kind="bool", readers=NETWORKS)
    """vggt/da3: when one window runs out of memory even with the smallest chunks, also try
    frame batching (attention across frames within groups only: approximate) before failing
    it."""
    save_depth: bool = option(False, group=NETS, kind="bool", readers=NETWORKS)
    """vggt/da3: write per-frame depth and confidence (float16 .npz, original size) into each
    window's depth/."""

    process_res: int | None = option(None, group=MEMORY, kind="int", metavar="PX",
                                     readers=NETWORKS, default_text="vggt 518, da3 504")
    """Network input size: vggt, the long side (a multiple of 14); da3, the side
    --process-res-method bounds. When not given, the network's own, lowered in steps (to 224
    at least) only when one window does not fit in memory even with the smallest chunks."""
    max_res: int | None = option(None, group=MEMORY, kind="int", metavar="PX", readers=NETWORKS,
                                 default_text="none")
    """Upper bound on the network input size (caps the default and --process-res)."""
    max_memory_gb: float | None = option(None, group=MEMORY, kind="positive_float",
                                         metavar="GB", readers=NETWORKS,
                                         default_text="what is free")
    """vggt/da3: memory the run may use (GPU memory on a GPU, RAM on the CPU)."""
    cpu_offload: bool = option(False, group=MEMORY, kind="bool", readers=NETWORKS)
    """vggt/da3: keep the transformer blocks' weights in CPU memory and move each to the GPU
    only while it runs (6-8 GB cards; slower)."""
    cpu_workers: int | None = option(None, group=MEMORY, kind="count", metavar="N",
                                     default_text="one per free core")
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

    process_res_method: str = option("upper_bound_resize", group=DA3, choices=DA3_METHODS,
                                     readers=("da3",))
    """da3: upper_bound_* bound the longer side, lower_bound_* the shorter; *_resize rounds
    sides to multiples of 14 by resizing, *_crop by a centred crop."""
    export_format: str = option("colmap", group=DA3, kind="export_format", metavar="F1-F2",
                                readers=("da3",))
    """da3: formats per window joined by '-': colmap (always), mini_npz (exports/mini.npz), npz
    (exports/full.npz, with images), glb (exports/scene.glb), e.g. colmap-mini_npz-glb."""
    conf_thresh_percentile: float = option(40.0, group=DA3, kind="float", metavar="P",
                                           readers=("da3",))
    """da3 glb export: points from depth whose confidence reaches this percentile."""
    num_max_points: int = option(1_000_000, group=DA3, kind="int", metavar="N",
                                 readers=("da3",))
    """da3 glb export: at most this many points."""

    images: str = option("link", group=OUTPUT, choices=IMAGE_MODES)
    """What each window's images/ holds: absolute symlinks to the frames, copies, or nothing."""
    merge: bool = option(False, group=OUTPUT, kind="bool")
    """After the windows, join them into one reconstruction per connected segment in
    OUT/merged/ (also: python -m pipeline.merge OUT), with the merge options below."""
    merge_options: MergeOptions = options_field(MergeOptions)
    """How windows are merged (its flags take effect with --merge)."""
    overwrite: bool = option(False, group=OUTPUT, kind="bool")
    """Redo every window, including complete ones."""
    verbose: bool = option(False, group=OUTPUT, kind="bool", short="-v", exclusive="verbosity")
    """The pipeline's debug log (every window's failure, every reason a window is redone), and
    COLMAP's own warnings."""
    show_progress: bool = True
    """Show progress bars (on a terminal); the command line's -q turns them off."""

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
