"""Typed configuration of a pipeline run (what the command line fills in)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

IMAGE_MODES = ("link", "copy", "none")
"""What a window's ``images/`` folder may hold."""

CAMERA_TYPES = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL")
"""COLMAP camera models users can ask for."""

DA3_METHODS = ("upper_bound_resize", "lower_bound_resize", "upper_bound_crop", "lower_bound_crop")
"""Depth Anything 3's ways of fitting frames to its grid (see :mod:`pipeline.preprocess`)."""

CAMERA_PARAMS = {"SIMPLE_PINHOLE": ("f", "cx", "cy"), "PINHOLE": ("fx", "fy", "cx", "cy"),
                 "SIMPLE_RADIAL": ("f", "cx", "cy", "k")}
"""The parameters of each camera model, in COLMAP's order."""


@dataclass(kw_only=True)
class PipelineConfig:
    """Everything one run needs; the command line maps one flag to each field."""

    output_dir: Path
    """Folder that receives ``run.json`` and one folder per window."""
    input_dir: Path | None = None
    """Folder of frames (jpg, jpeg, png, webp, bmp, tif), ordered by natural sort."""
    frame_pattern: str | None = None
    """Only files of ``input_dir`` whose names match this glob, e.g. ``"*.color.jpg"``."""
    input_video: Path | None = None
    """A video to decode (with PyAV) into ``output_dir/frames/`` instead of ``input_dir``."""
    fps: float | None = None
    """Frames per second of video time to extract; all frames when ``None``."""
    window_size: int = 8
    """Frames per window."""
    window_stride: int = 4
    """Frames between the starts of consecutive windows (at most ``window_size``)."""
    window_batch_size: int | None = None
    """Windows processed together; output paths never depend on it. ``None`` (``auto``): for
    vggt/da3, the largest number that fits the memory budget after a measured first batch of one
    window (see :mod:`pipeline.memory`); for colmap, one per CPU core (at most 8)."""
    max_memory_gb: float | None = None
    """Cap on the memory the run may use, GiB (GPU memory on a GPU, RAM on the CPU); ``None``:
    what is free."""
    reconstructor: str = "auto"
    """How windows are reconstructed: ``vggt`` (the network, then tracks and bundle
    adjustment), ``da3`` (Depth Anything 3, then tracks from SIFT matching and bundle
    adjustment; needs ``model``), ``colmap`` (classical SfM, no weights), or ``auto``: vggt when
    its weights are on this machine or can be downloaded, else colmap."""
    model: str = "facebook/VGGT-1B"
    """vggt/da3 checkpoint: a local file or folder, or a Hugging Face hub id (da3 has no default:
    give a folder or an id such as ``depth-anything/DA3-LARGE-1.1``)."""
    device: str = "auto"
    """vggt device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    mixed_precision: str = "auto"
    """vggt precision: ``auto`` (bf16 where supported, fp16 on older GPUs, fp32 on CPU),
    ``bf16``, ``fp16`` or ``no`` (fp32)."""
    preprocess_mode: str = "crop"
    """vggt input grid: ``crop`` (``process_res`` wide, centre-cropped to a square at most) or
    ``pad`` (longer side ``process_res``, padded to a square)."""
    process_res: int | None = None
    """Network input size in pixels: vggt, the long side (a multiple of 14); da3, the side
    ``process_res_method`` bounds. ``None``: the network's own (vggt 518, da3 504), lowered in
    steps only when one window does not fit in memory even with the smallest chunks."""
    max_res: int | None = None
    """Upper bound on ``process_res`` (and on the network's default), pixels."""
    cpu_offload: bool = False
    """vggt/da3: keep the transformer blocks' weights in CPU memory and move each to the GPU only
    while it runs (for 6-8 GB cards; slower)."""
    use_accelerate: bool = False
    """Schedule through Hugging Face Accelerate (implied under ``accelerate launch``): the windows
    are split between the launched processes, one device each, and run.json is merged."""
    profile_memory: bool = False
    """Print a per-stage table of time and peak memory (load, forward, tracking, bundle
    adjustment, export) at the end; it is kept in run.json either way."""
    process_res_method: str = "upper_bound_resize"
    """da3 input grid: ``upper_bound_resize``, ``lower_bound_resize``, ``upper_bound_crop`` or
    ``lower_bound_crop`` (see :mod:`pipeline.preprocess`)."""
    export_format: str = "colmap"
    """Network reconstructors' exports per window, joined by ``-`` (``colmap`` always):
    ``colmap``, ``mini_npz``, ``npz``, ``glb`` (see :mod:`pipeline.export_formats`)."""
    conf_thresh_percentile: float = 40.0
    """glb export: points from depth pixels whose confidence reaches this percentile."""
    num_max_points: int = 1_000_000
    """glb export: at most this many points."""
    query_frame_num: int = 4
    """vggt: frames per window whose SIFT keypoints are tracked."""
    max_query_pts: int = 2048
    """vggt: keypoints tracked per window."""
    fine_tracking: bool = False
    """vggt: run the track head's refinement for twice as many iterations."""
    vis_thresh: float = 0.2
    """vggt: track observations with a lower visibility score are dropped."""
    max_reproj_error: float = 8.0
    """vggt: observations with a larger reprojection error (px) are dropped."""
    conf_thres_value: float = 5.0
    """vggt without BA: depth confidence a pixel needs to become a point."""
    use_ba: bool = True
    """vggt: bundle-adjust the predicted cameras with the tracks (else points from depth)."""
    allow_approximate: bool = False
    """vggt: when one window does not fit in memory even with the smallest chunks, also try
    frame batching (approximate) before failing it."""
    save_depth: bool = False
    """vggt/da3: write per-frame depth and confidence (float16 .npz) into each window."""
    camera_type: str = "SIMPLE_PINHOLE"
    """COLMAP camera model: SIMPLE_PINHOLE, PINHOLE or SIMPLE_RADIAL."""
    shared_camera: bool = False
    """One set of intrinsics for all frames of a window."""
    camera_params: tuple[float, ...] | None = None
    """Known intrinsics in COLMAP's order for ``camera_type`` (see ``CAMERA_PARAMS``), in pixels
    of the original frames; they are kept fixed. ``None``: estimated per window."""
    frame_step: int = 1
    """Use every ``frame_step``-th frame (for dense video frame dumps with little motion)."""
    max_frames: int | None = None
    """Use only the first ``max_frames`` frames of the sequence."""
    overwrite: bool = False
    """Redo every window, even those a previous run completed."""
    skip_bad_frames: bool = False
    """Drop unreadable frames with a warning instead of stopping before any work."""
    images: str = "link"
    """What each window's ``images/`` holds: symlinks to the frames, copies, or nothing."""
    num_workers: int | None = None
    """Worker processes of the classical reconstructor; default one per window, up to the cores."""
    chunk_frames: int = 100
    """Classical reconstructor: frames of the sequence reconstructed together, windows cut out
    of these chunks (see :mod:`pipeline.sequence_sfm`); 0 reconstructs each window alone."""
    min_registered_fraction: float = 0.5
    """A window that registers fewer of its frames than this is marked failed."""
    min_points: int = 50
    """A window whose model has fewer 3D points is marked failed (too little structure)."""
    min_frame_observations: int = 20
    """A window with a registered frame that sees fewer 3D points is marked failed."""
    merge: bool = False
    """After the windows finish, join them into ``output_dir/merged`` (see ``pipeline.merge``)."""
    show_progress: bool = True
    """Show tqdm progress bars."""
    verbose: bool = False
    """Also show COLMAP's own warnings."""

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
