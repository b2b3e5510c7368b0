"""The reconstructor interface: what the runner, the executor and the Ray engine call.

A reconstructor receives windows that share frame count and image size, each with a *staging
folder* that already holds ``images/`` (links to the window's frames, named as in the COLMAP
model). It writes the window's COLMAP model into ``staging/sparse/`` and returns one
:class:`~pipeline.core.results.WindowResult` per window. A failure inside one window is caught
and returned as a failed result; it never stops the other windows.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.results import BatchReport, WindowResult
from ..core.windows import Window
from ..io.frames import Frame
from ..io.signature import options_signature

if TYPE_CHECKING:
    from ..exec.executor import CpuPool, FrameLoader, Pending


class Reconstructor(abc.ABC):
    """Reconstructs batches of windows; use as a context manager to release workers."""

    name: ClassVar[str]
    """The name users pass to ``--reconstructor``."""

    flags: ClassVar[type | None] = None
    """Its command-line options: a keyword-only dataclass whose fields are declared with
    :func:`pipeline.infra.options.option` (default, ``--help`` section and text); a base of
    :class:`pipeline.runner.config.PipelineConfig`. A flag several reconstructors declare (through a
    shared base class) is one option read by each; a flag the chosen reconstructor does not
    declare is refused (:func:`unread_options`)."""

    device: str = "cpu"
    """Where the work runs, for the run manifest."""

    device_stages: ClassVar[tuple[str, ...]] = ()
    """Stages of its profile that keep the accelerator busy (the others are CPU work); the run
    reports the device's busy and idle time from them (``run.json`` → ``throughput``)."""

    plans_sequences: ClassVar[bool] = False
    """Its windows depend on a per-sequence plan (:meth:`plan_sequence`): in a run over many
    sequences they run sequence after sequence, not in shared batches."""

    mixed_sizes: ClassVar[bool] = False
    """It reconstructs windows whose frames differ in size (colmap: a camera per size); for one
    that cannot, a sequence of frames of several sizes is refused before any work (see
    :func:`pipeline.io.frames.one_size`)."""

    load_stage: dict[str, float] | None = None
    """Time and memory of loading (a :class:`pipeline.infra.memory.PeakSpan` as JSON), if any."""

    last_report: BatchReport | None = None
    """Measurements of the latest :meth:`reconstruct_batch` (None: it measures nothing)."""

    progress: Callable[[str], None] | None = None
    """Set by the runner: called with a few words on the work under way inside a batch (stage
    and window), which it shows beside the progress bar."""

    prepares_ahead: ClassVar[bool] = False
    """It decodes windows ahead of their batch (:meth:`prepare_window`, in the executor's loader
    thread, while the previous batch runs)."""

    loader: FrameLoader | None = None
    """Set by the executor when :attr:`prepares_ahead`: the loader holding prepared windows."""

    _progress_window: int | None = None

    def report_progress(self, stage: str, window: Window[Frame] | None = None) -> None:
        """Tell :attr:`progress` that ``stage`` starts (for ``window``, or the window named
        last)."""
        if window is not None:
            self._progress_window = window.index
        if self.progress is not None:
            where = "" if self._progress_window is None else f", window {self._progress_window}"
            self.progress(stage + where)

    @abc.abstractmethod
    def reconstruct_batch(
        self, windows: Sequence[Window[Frame]], staging_dirs: Sequence[Path]
    ) -> list[WindowResult]:
        """Reconstruct each window into ``staging_dirs[i] / "sparse"``.

        Args:
            windows: Windows of one shape (equal frame count and image sizes).
            staging_dirs: One folder per window, holding ``images/`` with the window's frames.

        Returns:
            One result per window, in order. Never raises for a single window's failure.
        """

    def start_batch(self, windows: Sequence[Window[Frame]], staging_dirs: Sequence[Path],
                    pool: CpuPool) -> list[Pending]:
        """Start reconstructing a batch (the pipelined executor's entry): what must run in
        this process runs now; each window's CPU part may go to ``pool`` and finish while the
        next batches run. Returns one :class:`pipeline.exec.executor.Pending` per window, in order.
        Here: :meth:`reconstruct_batch`, all of it now."""
        from ..exec.executor import completed_pending

        return [completed_pending(r) for r in self.reconstruct_batch(windows, staging_dirs)]

    def prepare_window(self, window: Window[Frame]) -> Any:
        """A window decoded for its batch, in the loader thread (safe to call from it); the
        result has ``nbytes()``, which bounds the loader's queue. Called only when
        :attr:`prepares_ahead`."""
        raise NotImplementedError(f"{type(self).__name__} prepares nothing ahead")

    def attach_pool(self, pool: CpuPool) -> None:
        """The run's worker pool, for a reconstructor that runs work of its own in worker
        processes (colmap): it uses that one instead of starting another."""

    @classmethod
    def options_from_config(cls, config: Any) -> Any:
        """This reconstructor's options object, filled from a
        :class:`pipeline.runner.config.PipelineConfig` (the run's options; those this reconstructor
        does not read are refused before, see :func:`unread_options`). Every
        registered reconstructor has one; one passed to the runner ready-made needs none.

        Raises:
            ValueError: options that cannot work together (``InputError`` for a bad value).
        """
        raise NotImplementedError(f"{cls.__name__} is not built from a run configuration")

    @classmethod
    def check_flags(cls, config: Any) -> None:
        """Refuse, before any work, values of its :attr:`flags` in ``config`` (a
        :class:`pipeline.runner.config.PipelineConfig`) that cannot work, beyond the ranges their
        declarations give. Called for every registered reconstructor, whichever is chosen.
        Here: nothing.

        Raises:
            InputError: a value that cannot work, in one line naming the flag.
        """

    @classmethod
    def check_frames(cls, config: Any, frames: Sequence[Frame]) -> None:
        """Refuse, before any work, options in ``config`` that cannot work with these frames
        (one sequence's, checked when its frames are read). Here: nothing.

        Raises:
            InputError: in one line naming the flag and what of the frames it contradicts.
        """

    def memory_device(self) -> Any:
        """The ``torch.device`` whose memory bounds the batch size (the memory governor's), or
        ``None`` when the reconstructor's batches are sized by cores."""
        return None

    def describe(self) -> dict[str, Any]:
        """Settings worth recording in ``run.json``."""
        return {"name": self.name, "device": self.device}

    def plan_sequence(self, frames: Sequence[Frame], windows: Sequence[Window[Frame]],
                      work_dir: Path | None) -> None:
        """Called once before the first batch with the run's frames, all its windows and the
        output folder (for sequence-level caches), for a reconstructor whose windows depend on
        more of the sequence than their own frames. Does no work yet."""

    def window_context(self, window: Window[Frame]) -> str | None:
        """:func:`pipeline.io.signature.frames_hash` of the frames besides the window's own whose
        content decides its result (it joins the resume signature); ``None``: only its own."""
        return None

    def start(self, windows: Sequence[Window[Frame]]) -> None:
        """Called once with the windows this process will reconstruct, before the first batch:
        a chance to start sequence-level work early."""

    def signature_options(self) -> Any:
        """Every option that decides this reconstructor's results, as JSON: the resume
        signature's ``options`` (see :func:`pipeline.io.signature.options_signature`). Derived from
        the ``options`` attribute, so that a new option is part of it without further code."""
        return options_signature(getattr(self, "options", None))

    def close(self) -> None:
        """Release workers and memory."""

    def __enter__(self) -> Reconstructor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def colmap_log_level(config: Any) -> int:
    """COLMAP's (glog) minimum level for a run: its warnings with ``verbose``, else nothing
    below FATAL (a window's failure reaches ``window_info.json`` and the digest in words)."""
    return 1 if config.verbose else 3
