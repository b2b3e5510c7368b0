"""What the network reconstructors (vggt, da3) share: loading, batching, out-of-memory recovery,
and mapping network-grid predictions back to the original frames.

A :class:`NetworkReconstructor` decodes each batch's frames once (ahead of time, when the
executor runs a :class:`pipeline.exec.executor.FrameLoader`), stacks the windows on the network grid
as ``[B, S, 3, H, W]`` RGB in [0, 1], runs one forward for the batch, does what else of each
window needs the device, and hands each window's CPU part over as an :class:`SfmJob` (run in a
worker process, or inline); a window's failure never stops the others. Subclasses say how to run
the forward (:meth:`~NetworkReconstructor._forward`), what a window's job is
(:meth:`~NetworkReconstructor._window_job`) and which smaller settings to retry with when a
single window runs out of memory (:meth:`~NetworkReconstructor._fallbacks`).

Pixel conventions are those of :mod:`pipeline.algo.preprocess` ("colmap": the centre of the top-left
pixel is ``(0.5, 0.5)``).
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..algo.finishing import SfmJob, save_depth_maps, sift_features, sift_keypoints
from ..algo.network_sfm import (
    SfmOptions,
    Tracks,
    WindowPredictions,
    anchor_predictions,
)
from ..algo.preprocess import VGGT_MODES, FrameTransform, PreprocessOptions, preprocess_frames
from ..core.errors import InputError
from ..core.results import BatchReport, WindowResult
from ..core.windows import Window
from ..infra.hub import VGGT_1B
from ..infra.memory import (
    MIN_AUTO_RES,
    BatchObservation,
    PeakMeter,
    array_bytes,
    current_mb,
    is_out_of_memory,
    lower_resolutions,
    settle,
)
from ..infra.options import option
from ..io.frames import Frame, load_image
from .base import Reconstructor, colmap_log_level

__all__ = ["NetworkBatch", "NetworkFlags", "NetworkOptions", "NetworkReconstructor",
           "PreparedWindow", "SfmJob", "resolve_device", "save_depth_maps", "sift_features",
           "sift_keypoints", "to_original_grid", "window_predictions"]

if TYPE_CHECKING:
    import torch

    from ..exec.executor import CpuPool, Pending

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch reads it.

    Raises:
        InputError: ``device`` is no device name, or names a device this machine lacks.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device: use auto, cpu, cuda or "
                         "cuda:N") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: this machine has no CUDA device usable by "
                             f"torch {torch.__version__} (use --device cpu or auto)")
        if resolved.index is not None and resolved.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA device(s)")
        if resolved.index is None:  # one name for one card: the model cache's key, the records
            resolved = torch.device("cuda", torch.cuda.current_device())
    elif resolved.type not in ("cpu", "mps") or (
            resolved.type == "mps" and not torch.backends.mps.is_available()):
        raise InputError(f"--device {device}: not available here (use auto, cpu or cuda)")
    return resolved


@dataclass
class NetworkBatch:
    """A batch brought to the network grid, plus what maps it back."""

    images: torch.Tensor
    """``[B, S, 3, H, W]`` RGB in [0, 1] (in pinned memory on CUDA)."""
    originals: list[list[np.ndarray]]
    """Per window and frame, the ``(h, w, 3)`` uint8 original frame."""
    transforms: list[list[FrameTransform]]
    """Per window and frame, the map between original and network pixels."""


NETWORKS_GROUP = "vggt and da3"
"""The ``--help`` section of the options every network reconstructor reads."""
SIZE_GROUP = "vggt and da3: input size and memory"
"""The ``--help`` section of the network input size and memory options."""


@dataclass(kw_only=True)
class NetworkFlags:
    """Command-line options every network reconstructor reads (vggt's and da3's flags extend
    these); fields of :class:`pipeline.runner.config.PipelineConfig`."""

    model: str = option(VGGT_1B, group=NETWORKS_GROUP)
    """vggt/da3 checkpoint: a .safetensors/.pt file, a folder holding one (or shards with
    model.safetensors.index.json), or a hub id (facebook/VGGT-1B is vggt's; da3 needs one given,
    e.g. depth-anything/DA3-LARGE-1.1 or a folder); the other network's checkpoint is refused."""
    mixed_precision: str = option("auto", group=NETWORKS_GROUP,
                                  choices=("auto", "bf16", "fp16", "no"))
    """vggt/da3 precision: auto is bf16 on GPUs that support it, fp16 on older GPUs, fp32 on
    the CPU; no is fp32."""
    max_reproj_error: float = option(8.0, group=NETWORKS_GROUP, kind="float",
                                     bounds=(0, math.inf), low_open=True)
    """vggt/da3: drop observations with a larger reprojection error, in pixels."""
    use_ba: bool = option(True, group=NETWORKS_GROUP, kind="bool")
    """vggt/da3: bundle-adjust the predicted cameras with the tracks; --no-use-ba writes points
    from the predicted depth instead."""
    conf_thres_value: float = option(5.0, group=NETWORKS_GROUP, kind="float",
                                     bounds=(0, math.inf))
    """vggt/da3 without bundle adjustment: depth confidence a pixel needs to become a point."""
    allow_approximate: bool = option(False, group=NETWORKS_GROUP, kind="bool")
    """vggt/da3: when one window runs out of memory even with the smallest chunks, also try
    frame batching (attention across frames within groups only: approximate) before failing
    it."""
    save_depth: bool = option(False, group=NETWORKS_GROUP, kind="bool")
    """vggt/da3: write per-frame depth and confidence (float16 .npz, original size) into each
    window's depth/."""

    process_res: int | None = option(None, group=SIZE_GROUP, kind="int", metavar="PX",
                                     default_text="vggt 518, da3 504")
    """Network input size: vggt, the long side (a multiple of 14); da3, the side
    --process-res-method bounds. When not given, the network's own, lowered in steps (to 224
    at least) only when one window does not fit in memory even with the smallest chunks."""
    max_res: int | None = option(None, group=SIZE_GROUP, kind="int", metavar="PX",
                                 default_text="none")
    """Upper bound on the network input size (caps the default and --process-res)."""
    max_memory_gb: float | None = option(None, group=SIZE_GROUP, kind="positive_float",
                                         metavar="GB", default_text="what is free")
    """vggt/da3: memory the run may use (GPU memory on a GPU, RAM on the CPU)."""
    cpu_offload: bool = option(False, group=SIZE_GROUP, kind="bool")
    """vggt/da3: keep the transformer blocks' weights in CPU memory and move each to the GPU
    only while it runs (6-8 GB cards; slower)."""


@dataclass(kw_only=True)
class NetworkOptions:
    """Settings every network reconstructor has (the vggt and da3 options extend these)."""

    device: str = field(default="auto", metadata={"result": False})
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    dtype: str = "auto"
    """``auto`` (bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU), or a dtype name."""
    sfm: SfmOptions = field(default_factory=SfmOptions)
    """Tracks, filtering and bundle adjustment (camera type, thresholds, ``use_ba``...)."""
    save_depth: bool = False
    """Write each frame's depth and confidence (original size, float16) to ``depth/NAME.npz``."""
    allow_approximate: bool = False
    """When a single window runs out of memory even with the smallest chunks, also try frame
    batching (attention across frames only within groups: approximate)."""
    min_process_res: int | None = None
    """When set, the resolution was not fixed by the user: a window that runs out of memory even
    with the smallest chunks is retried at lower resolutions down to this many pixels (and the
    run keeps the lowered resolution)."""
    cpu_offload: bool = field(default=False, metadata={"result": False})
    """Keep the transformer blocks' weights in CPU memory; each moves to the device only while
    it runs (see :mod:`pipeline.algo.models.offload`)."""
    colmap_log_level: int = field(default=2, metadata={"result": False})
    """glog level of pycolmap's own messages: 0 info, 1 warnings, 2 errors."""


class NetworkReconstructor(Reconstructor):
    """A network run once per batch of stacked windows, then per-window work (see module doc).

    Subclasses call :meth:`_setup` from their ``__init__`` with options that extend
    :class:`NetworkOptions` by ``model``, ``preprocess`` and ``forward``, and declare their grid
    (:attr:`default_res`, :attr:`res_multiple`).
    """

    architecture: str
    """The network whose checkpoints this reconstructor takes (an architecture name of
    :func:`pipeline.algo.models.load_model`); another's is refused at load."""
    default_res: int
    """The network's own input size, pixels (``--process-res`` when not given)."""
    res_multiple: int = 1
    """Input sizes must be multiples of this (the patch size, when the grid rounds by cropping
    to it); ``--process-res`` is checked against it."""

    @classmethod
    def common_options(cls, config: Any) -> dict[str, Any]:
        """The :class:`NetworkOptions` fields filled from a run configuration."""
        dtype = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(
            config.mixed_precision, config.mixed_precision)
        sfm = SfmOptions(camera_type=config.camera_type, shared_camera=config.shared_camera,
                         vis_thresh=config.vis_thresh, max_reproj_error=config.max_reproj_error,
                         use_ba=config.use_ba, conf_thres_value=config.conf_thres_value)
        return {"device": config.device, "dtype": dtype, "sfm": sfm,
                "save_depth": config.save_depth, "allow_approximate": config.allow_approximate,
                "cpu_offload": config.cpu_offload, "colmap_log_level": colmap_log_level(config)}

    @classmethod
    def resolution(cls, config: Any) -> tuple[int, int | None]:
        """The input size to start at, and the lowest that out-of-memory recovery may lower it
        to (None: the user fixed it with ``--process-res``).

        Raises:
            InputError: ``--process-res`` is not a multiple of :attr:`res_multiple` or exceeds
                ``--max-res``.
        """
        multiple = cls.res_multiple
        if config.process_res is not None:
            if config.process_res % multiple or config.process_res < 4 * multiple:
                raise InputError(f"--process-res must be a multiple of {multiple} of at least "
                                 f"{4 * multiple} for {cls.name}, got {config.process_res}")
            if config.max_res is not None and config.process_res > config.max_res:
                raise InputError(f"--process-res {config.process_res} exceeds --max-res "
                                 f"{config.max_res}")
            return config.process_res, None
        res = cls.default_res
        if config.max_res is not None:
            res = min(res, config.max_res // multiple * multiple)
            if res < 4 * multiple:
                raise InputError(f"--max-res {config.max_res} is too small for {cls.name}")
        return res, min(MIN_AUTO_RES, res)

    @classmethod
    def check_frames(cls, config: Any, frames: Sequence[Frame]) -> None:
        """A ``--process-res`` above both the network's own size and the frames' longest side
        is warned about: the frames are enlarged, which adds no detail and costs memory and time
        with the square of the size."""
        longest = max((max(f.width, f.height) for f in frames), default=0)
        res = config.process_res
        if res is not None and longest and res > max(cls.default_res, longest):
            logger.warning("--process-res %d enlarges the %d px frames %.1fx (%s's own size is "
                           "%d): no detail is gained, memory and time grow with its square",
                           res, longest, res / longest, cls.name, cls.default_res)

    def memory_device(self) -> torch.device:
        return self.torch_device

    options: Any
    """The subclass's options (a :class:`NetworkOptions` with ``model``, ``preprocess``,
    ``forward``)."""
    preprocess_options: PreprocessOptions
    """The network grid now (its resolution may be lowered during a run)."""
    prepares_ahead = True

    def _setup(self, options: Any, default_forward: Any) -> None:
        """Keep ``options``, take its grid and forward options (``default_forward`` when it
        has none) and load its checkpoint."""
        self.options = options
        self._prepared: dict[tuple[str, int], PreparedWindow] = {}
        self.preprocess_options = options.preprocess
        self.forward_options = options.forward or default_forward
        self._load(options.model, options.device, options.dtype, options.colmap_log_level,
                   cpu_offload=options.cpu_offload)

    def _load(self, model: str, device: str, dtype: str, colmap_log_level: int, *,
              cpu_offload: bool = False) -> None:
        """Load checkpoint ``model`` onto ``device`` (``auto``: CUDA if any) with compute
        ``dtype``; with ``cpu_offload`` the transformer blocks' weights stay in CPU memory."""
        import pycolmap

        from ..algo.models import checkpoint_fingerprint, load_model, resolve_dtype
        from ..algo.models.cache import cached_load

        pycolmap.logging.minloglevel = colmap_log_level
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.dtype = resolve_dtype(dtype, self.torch_device)
        if self.torch_device.type == "cpu" and self.dtype.itemsize < 4:
            logger.warning("%s on the CPU (--mixed-precision): slower than float32 there, and "
                           "less exact; auto uses float32 on the CPU",
                           str(self.dtype).replace("torch.", ""))
        self.meter = PeakMeter(self.torch_device)

        def load() -> tuple[Any, Any]:
            if not cpu_offload:
                return load_model(model, device=self.torch_device, dtype=self.dtype,
                                  expect=self.architecture), None
            from ..algo.models.offload import enable_cpu_offload

            network = load_model(model, device="cpu", dtype=self.dtype, expect=self.architecture)
            return network, enable_cpu_offload(network, self.torch_device)  # logs its sizes

        key = (checkpoint_fingerprint(model), self.device, str(self.dtype), cpu_offload,
               type(self).__name__)
        with self.meter.measure() as span:
            (self.model, self.offload), loaded = cached_load(key, load)
        self.load_seconds = span.seconds
        self.load_stage = span.to_json() if loaded else None
        dtype_name = str(self.dtype).replace("torch.", "")
        if loaded:
            logger.info("loaded %s on %s (%s) in %.1f s", model, self.device, dtype_name,
                        self.load_seconds)
        else:
            logger.info("%s on %s (%s): already loaded", model, self.device, dtype_name)

    def close(self) -> None:
        import torch
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def signature_options(self) -> dict[str, Any]:
        """The options' signature with the compute dtype as resolved on this device and the
        checkpoint named by its file (see :func:`pipeline.algo.models.checkpoint_fingerprint`)."""
        from ..algo.models import checkpoint_fingerprint

        options = super().signature_options()
        options["dtype"] = str(self.dtype).replace("torch.", "")
        options["model"] = checkpoint_fingerprint(self.options.model)
        return options

    @property
    def process_res(self) -> int:
        """The network input's bounding side in pixels: VGGT's target size (crop: the width,
        pad: the longer side) or DA3's ``process_res``."""
        o = self.preprocess_options
        return o.target_size if o.mode in VGGT_MODES else o.process_res

    def set_process_res(self, res: int) -> None:
        """Use ``res`` for the following batches (see :attr:`process_res`)."""
        o = self.preprocess_options
        self.preprocess_options = (replace(o, target_size=res) if o.mode in VGGT_MODES
                                   else replace(o, process_res=res))

    @abc.abstractmethod
    def _forward(self, images: torch.Tensor, options: Any) -> dict[str, Any]:
        """One forward of ``images`` ``[B, S, 3, H, W]`` with forward ``options``."""

    @abc.abstractmethod
    def _window_job(self, b: int, window: Window[Frame], staging: Path, batch: NetworkBatch,
                    out: dict[str, Any], options: Any) -> SfmJob:
        """Window ``b`` of the batch's outputs -> the job that makes its model in ``staging``
        (the device's share of the window is done here)."""

    @abc.abstractmethod
    def _fallbacks(self) -> list[Any]:
        """Exact forward options to try, in order, for one window that ran out of memory
        (smaller chunks; the last is the smallest)."""

    def _approximate_fallbacks(self, smallest: Any, frames: int) -> list[Any]:
        """With ``allow_approximate``: ``smallest`` with frame batching in groups of about a
        half, a quarter, then 2 of the window's ``frames`` (each smaller than the window)."""
        if not self.options.allow_approximate:
            return []
        groups = (max(2, frames // 2), max(2, frames // 4), 2)
        return [replace(smallest, frame_batch_size=g) for g in groups if g < frames]

    @staticmethod
    @abc.abstractmethod
    def _describe_fallback(options: Any) -> str:
        """One line saying what a fallback changes (``approximate`` when it is)."""

    def reconstruct_batch(self, windows: Sequence[Window[Frame]],
                          staging_dirs: Sequence[Path]) -> list[WindowResult]:
        """Reconstruct the batch in this process (:meth:`start_batch` with no workers)."""
        from ..exec.executor import CpuPool, result_of

        return [result_of(p) for p in self.start_batch(windows, staging_dirs, CpuPool(0))]

    def start_batch(self, windows: Sequence[Window[Frame]], staging_dirs: Sequence[Path],
                    pool: CpuPool) -> list[Pending]:
        """The batch's forward (and tracking) here, recovering from running out of memory;
        each window's CPU part goes to ``pool`` as an :class:`SfmJob`.

        On running out of memory (``torch.OutOfMemoryError``, or cuBLAS/cuDNN failing to
        allocate: :func:`~pipeline.infra.memory.is_out_of_memory`) the cache is freed and the
        batch is halved and retried; a single window is retried with each of
        :meth:`_fallbacks`; only then does it fail, with the reason. No job leaves before the
        whole batch has been through the device. What was measured is left in
        :attr:`last_report`.
        """
        from ..exec.executor import completed_pending, submit_job

        self.last_report = BatchReport()
        self._prepared = {}
        try:
            items = self._reconstruct_recovering(windows, staging_dirs)
        finally:
            self._prepared = {}
        pending = []
        for window, item in zip(windows, items):
            if isinstance(item, WindowResult):
                pending.append(completed_pending(item))
                continue
            if pool.inline:
                item.report = self.report_progress
                self._progress_window = window.index
            pending.append(submit_job(pool, item))
        return pending

    def _reconstruct_recovering(self, windows: Sequence[Window[Frame]],
                                staging_dirs: Sequence[Path]) -> list[SfmJob | WindowResult]:
        report = self.last_report
        try:
            return self._reconstruct(windows, staging_dirs, self.forward_options)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
        self._free_memory()  # out of the except block: its traceback held the batch's tensors
        if len(windows) > 1:
            report.out_of_memory_at = min(len(windows), report.out_of_memory_at or len(windows))
            half = len(windows) // 2
            logger.warning("out of memory with %d windows per batch; retrying with %d",
                           len(windows), half)
            return (self._reconstruct_recovering(windows[:half], staging_dirs[:half])
                    + self._reconstruct_recovering(windows[half:], staging_dirs[half:]))
        start_res = self.process_res
        for options, res in self._single_window_attempts(len(windows[0])):
            if res != self.process_res:
                logger.warning("out of memory at %d px; lowering the resolution to %d px for "
                               "the rest of the run", self.process_res, res)
                self.set_process_res(res)
            change = self._describe_fallback(options) + (
                f", process_res={res}" if res != start_res else "")
            logger.warning("window %d: out of memory; retrying with %s", windows[0].index,
                           change)
            try:
                results = self._reconstruct(windows, staging_dirs, options)
                results[0].details["memory_fallback"] = change
                return results
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
            self._free_memory()
        return [WindowResult.failure(
            "out of memory even one window at a time with the smallest chunks"
            + ("" if self.options.min_process_res is None else " and the lowest resolution")
            + ("" if self.options.allow_approximate else
               " (--allow-approximate would also try frame batching)"))]

    def _single_window_attempts(self, frames: int) -> list[tuple[Any, int]]:
        """(forward options, resolution) to try for one window that ran out of memory: smaller
        chunks; then lower resolutions (when not fixed); then frame batching (approximate)."""
        exact = self._fallbacks()
        attempts = [(o, self.process_res) for o in exact]
        lowest = self.options.min_process_res
        lower = [] if lowest is None else lower_resolutions(self.process_res, lowest)
        attempts += [(exact[-1], r) for r in lower]
        last_res = lower[-1] if lower else self.process_res
        return attempts + [(o, last_res)
                           for o in self._approximate_fallbacks(exact[-1], frames)]

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def _reconstruct(self, windows: Sequence[Window[Frame]], staging_dirs: Sequence[Path],
                     options: Any) -> list[SfmJob | WindowResult]:
        """One forward for the batch, then each window's device part (out of memory
        propagates)."""
        import torch

        if self.torch_device.type == "cpu":
            settle()  # return freed heap first, so the resident set measures this batch
        with self.meter.measure() as batch_span:
            self._progress_window = None
            self.report_progress(f"preprocess {_span(windows)}")
            with self.meter.measure() as prep:
                batch = self._prepare(windows)
            self.report_progress(f"forward {_span(windows)}")
            with self.meter.measure() as forward:
                out = self._forward(batch.images, options)
                if self.torch_device.type == "cuda":
                    torch.cuda.synchronize(self.torch_device)  # not the current device's
            items = [self._device_part(b, window, staging, batch, out, options)
                     for b, (window, staging) in enumerate(zip(windows, staging_dirs))]
            del out, batch
        self.last_report.stages += [("preprocess", prep.to_json()), ("forward", forward.to_json())]
        self.last_report.observations.append(BatchObservation(
            windows=len(windows), held_mb=max(forward.held_mb, self._held_after()),
            peak_mb=batch_span.peak_mb, process_res=self.process_res))
        memory = {"peak_rss_mb": round(batch_span.rss_peak_mb, 1), **(
            {"cuda_peak_mb": round(batch_span.peak_mb, 1)}
            if self.torch_device.type == "cuda" else {})}
        for item in items:
            item.timings = {"preprocess": prep.seconds, "forward": forward.seconds,
                            **item.timings}
            item.memory = {**memory, **item.memory}
        return items

    def _held_after(self) -> float:
        """Memory held once a batch is done, MiB. Memory-mapped weights are only resident once a
        forward has touched them, so before the first forward this is what the weights hold."""
        if self.torch_device.type == "cpu":
            settle()
        return current_mb(self.torch_device)

    def _device_part(self, b: int, window: Window[Frame], staging: Path, batch: NetworkBatch,
                     out: dict[str, Any], options: Any) -> SfmJob | WindowResult:
        """Window ``b`` of the batch's outputs -> its job; an error fails only this window."""
        self.report_progress("tracking", window)
        try:
            return self._window_job(b, window, staging, batch, out, options)
        except Exception as exc:  # noqa: BLE001 - one window never stops the others
            if is_out_of_memory(exc):
                raise  # the batch is retried smaller
            logger.debug("window %d failed", window.index, exc_info=True)
            return WindowResult.failure(f"{type(exc).__name__}: {exc}")

    def _job(self, preds: WindowPredictions, tracks: Tracks | None, staging: Path,
             stages: dict[str, dict[str, float]], job: type[SfmJob] | None = None,
             **kwargs: Any) -> SfmJob:
        """The job (an :class:`SfmJob`, or the subclass ``job``) finishing a window with this
        reconstructor's options; ``stages`` were measured on the device side."""
        return (job or SfmJob)(preds=preds, tracks=tracks, staging=staging, sfm=self.options.sfm,
                      save_depth=self.options.save_depth, process_res=self.process_res,
                      stages=stages, **kwargs)

    def prepare_window(self, window: Window[Frame]) -> PreparedWindow:
        """Decode a window's frames and bring them to the network grid as it is now (safe to
        call from the loader thread)."""
        frames = [load_image(f.path) for f in window.items]
        options = self.preprocess_options
        prepared = preprocess_frames(frames, options)
        return PreparedWindow(images=prepared.images, originals=frames,
                              transforms=prepared.transforms, preprocess=options)

    def _prepare(self, windows: Sequence[Window[Frame]]) -> NetworkBatch:
        """Every frame decoded once (by the loader, when one runs) and the windows stacked on
        the network grid (a window prepared for another grid is prepared again)."""
        import torch

        prepared = []
        for window in windows:
            item = self._prepared.get(window.key)
            if item is None and self.loader is not None:
                item = self.loader.take(window)
            if item is None or item.preprocess != self.preprocess_options:
                item = self.prepare_window(window)
            self._prepared[window.key] = item
            prepared.append(item)
        images = [p.images for p in prepared]
        if self.torch_device.type == "cuda":  # pinned: the copy to the device does not block
            stacked = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype,
                                  pin_memory=True)
            torch.stack(images, out=stacked)
        else:
            stacked = torch.stack(images)
        return NetworkBatch(stacked, [p.originals for p in prepared],
                            [p.transforms for p in prepared])


@dataclass(kw_only=True)
class PreparedWindow:
    """One window's frames, decoded and on the network grid."""

    images: torch.Tensor
    """``[S, 3, H, W]`` RGB in [0, 1]."""
    originals: list[np.ndarray]
    """``(h, w, 3)`` uint8 frames."""
    transforms: list[FrameTransform]
    """Per frame, the map between original and network pixels."""
    preprocess: PreprocessOptions
    """The grid it was prepared for."""

    def nbytes(self) -> int:
        return array_bytes(self.images, self.originals)


def window_predictions(window: Window[Frame], originals: Sequence[np.ndarray],
                       transforms: Sequence[FrameTransform], cam_from_world: np.ndarray,
                       k_network: np.ndarray, depth: torch.Tensor,
                       depth_conf: torch.Tensor) -> WindowPredictions:
    """One window's network outputs as :class:`WindowPredictions` on the original frames.

    Args:
        window: The window (its frame names name the images).
        originals: ``(h, w, 3)`` uint8 frames, all of one size.
        transforms: Per frame, the map between original and network pixels.
        cam_from_world: ``(S, 3, 4)`` predicted world-to-camera poses, OpenCV axes (any world);
            the world is moved exactly onto frame 0's camera.
        k_network: ``(S, 3, 3)`` intrinsics in network pixels, "colmap" convention.
        depth, depth_conf: ``[S, H, W]`` network-grid maps, resampled onto the original grid.

    Raises:
        ValueError: the frames differ in size.
    """
    if len({f.shape for f in originals}) != 1:
        raise ValueError("the frames of a window must share one image size for a network")
    k_orig = [t.intrinsics_to_original(k) for t, k in zip(transforms, k_network)]
    h, w = originals[0].shape[:2]
    poses, _ = anchor_predictions(np.asarray(cam_from_world, dtype=np.float64))
    return WindowPredictions(
        names=[f.name for f in window.items], image_sizes=np.tile([w, h], (len(window), 1)),
        cam_from_world=poses, intrinsics=np.stack(k_orig),
        depth=to_original_grid(depth, transforms),
        depth_conf=to_original_grid(depth_conf, transforms),
        colors=np.stack(originals))


def to_original_grid(maps: torch.Tensor, transforms: Sequence[FrameTransform]) -> np.ndarray:
    """Resample network-grid maps ``[S, H, W]`` onto each original frame's pixel grid.

    Original pixel centres are mapped into the network image (bilinear sampling); pixels that
    fall outside it (cropped away) get 0. Returns ``(S, h, w)`` float32.
    """
    import torch

    out = []
    net_h, net_w = maps.shape[-2:]
    for m, t in zip(maps.float().cpu(), transforms):
        h, w = t.original_hw
        cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        net = t.to_network(np.stack([cols, rows], axis=-1), "colmap") - 0.5
        inside = ((net[..., 0] >= -0.5) & (net[..., 0] <= net_w - 0.5)
                  & (net[..., 1] >= -0.5) & (net[..., 1] <= net_h - 0.5))
        grid = torch.as_tensor(net / [max(net_w - 1, 1), max(net_h - 1, 1)] * 2 - 1,
                               dtype=torch.float32)
        sampled = torch.nn.functional.grid_sample(m[None, None], grid[None], mode="bilinear",
                                                  padding_mode="border", align_corners=True)
        out.append(np.where(inside, sampled[0, 0].numpy(), 0.0).astype(np.float32))
    return np.stack(out)


def _span(windows: Sequence[Window[Frame]]) -> str:
    """``"window 3"`` or ``"windows 3-6"``."""
    first, last = windows[0].index, windows[-1].index
    return f"window {first}" if first == last else f"windows {first}-{last}"
