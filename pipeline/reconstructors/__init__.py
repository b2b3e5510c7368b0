"""Ways of reconstructing a batch of windows, behind one small interface.

A reconstructor receives windows that share frame count and image size, each with a *staging
folder* that already holds ``images/`` (links to the window's frames, named as in the COLMAP
model). It writes the window's COLMAP model into ``staging/sparse/`` and returns one
:class:`WindowResult` per window. A failure inside one window is caught and returned as a failed
result; it never stops the other windows.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.errors import InputError
from ..core.results import STATUS_FAILED as STATUS_FAILED  # re-exported: the plug-ins' values
from ..core.results import STATUS_OK as STATUS_OK
from ..core.results import BatchReport as BatchReport
from ..core.results import WindowResult as WindowResult
from ..core.windows import Window
from ..infra.options import flag_name, flag_of
from ..io.frames import Frame

if TYPE_CHECKING:
    from ..exec.executor import CpuPool, Pending

_REGISTRY = {
    "vggt": "pipeline.reconstructors.vggt:VggtReconstructor",
    "da3": "pipeline.reconstructors.da3:Da3Reconstructor",
    "colmap": "pipeline.reconstructors.colmap:ColmapReconstructor",
}
"""Reconstructor name -> ``module:class``: a new reconstructor is its module and one line here.
Reconstructor modules import their heavy dependencies (torch, the models) only where they use
them, so that the command line can read every reconstructor's flags quickly.
:class:`pipeline.run.config.PipelineConfig` takes each one's :attr:`Reconstructor.flags` as a base
(:func:`registered_flags`)."""


class Reconstructor(abc.ABC):
    """Reconstructs batches of windows; use as a context manager to release workers."""

    name: ClassVar[str]
    """The name users pass to ``--reconstructor``."""

    flags: ClassVar[type | None] = None
    """Its command-line options: a keyword-only dataclass whose fields are declared with
    :func:`pipeline.infra.options.option` (default, ``--help`` section and text); a base of
    :class:`pipeline.run.config.PipelineConfig`. A flag several reconstructors declare (through a
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

    def attach_pool(self, pool: CpuPool) -> None:
        """The run's worker pool, for a reconstructor that runs work of its own in worker
        processes (colmap): it uses that one instead of starting another."""

    @classmethod
    def options_from_config(cls, config: Any) -> Any:
        """This reconstructor's options object, filled from a
        :class:`pipeline.run.config.PipelineConfig` (the run's options; those this reconstructor
        does not read are refused before, see :func:`unread_options`). Every
        registered reconstructor has one; one passed to the runner ready-made needs none.

        Raises:
            ValueError: options that cannot work together (``InputError`` for a bad value).
        """
        raise NotImplementedError(f"{cls.__name__} is not built from a run configuration")

    @classmethod
    def check_flags(cls, config: Any) -> None:
        """Refuse, before any work, values of its :attr:`flags` in ``config`` (a
        :class:`pipeline.run.config.PipelineConfig`) that cannot work, beyond the ranges their
        declarations give. Called for every registered reconstructor, whichever is chosen.
        Here: nothing.

        Raises:
            InputError: a value that cannot work, in one line naming the flag.
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
        """:func:`pipeline.io.output.frames_digest` of the frames besides the window's own whose
        content decides its result (it joins the resume signature); ``None``: only its own."""
        return None

    def start(self, windows: Sequence[Window[Frame]]) -> None:
        """Called once with the windows this process will reconstruct, before the first batch:
        a chance to start sequence-level work early."""

    def signature_options(self) -> Any:
        """Every option that decides this reconstructor's results, as JSON: the resume
        signature's ``options`` (see :func:`pipeline.io.output.options_signature`). Derived from
        the ``options`` attribute, so that a new option is part of it without further code."""
        from ..io.output import options_signature

        return options_signature(getattr(self, "options", None))

    def close(self) -> None:
        """Release workers and memory."""

    def __enter__(self) -> Reconstructor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def available_reconstructors() -> list[str]:
    """Names accepted by :func:`create_reconstructor`, in registry order."""
    return list(_REGISTRY)


def reconstructor_class(name: str) -> type[Reconstructor]:
    """The class of the reconstructor called ``name`` (its module is imported now).

    Raises:
        ValueError: unknown name.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown reconstructor {name!r}; choose one of {', '.join(available_reconstructors())}"
        )
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def registered_flags() -> tuple[type, ...]:
    """The :attr:`Reconstructor.flags` classes of the registered reconstructors, in registry
    order, each once: the bases of :class:`pipeline.run.config.PipelineConfig`.

    Raises:
        TypeError: two reconstructors declare a flag of the same name in different classes (a
            flag several read is declared once, in a base class their flags share).
    """
    classes: list[type] = []
    declared: dict[str, type] = {}
    for name in _REGISTRY:
        flags = reconstructor_class(name).flags
        if flags is None or flags in classes:
            continue
        classes.append(flags)
        for owner in flags.__mro__:
            for field_name in vars(owner).get("__annotations__", {}):
                if declared.setdefault(field_name, owner) is not owner:
                    raise TypeError(f"flag {field_name!r} is declared by both "
                                    f"{declared[field_name].__qualname__} and "
                                    f"{owner.__qualname__}; declare it once, in a shared base")
    # a flags class another one extends comes in through it (and must, for a consistent MRO)
    return tuple(c for c in classes if not any(o is not c and issubclass(o, c) for o in classes))


@cache
def flag_readers() -> dict[str, tuple[str, ...]]:
    """``{field name: the reconstructors that read it}`` of every field declared by a
    registered reconstructor's :attr:`Reconstructor.flags`, readers in registry order (fields
    absent here are the pipeline's own, read whatever the reconstructor)."""
    readers: dict[str, tuple[str, ...]] = {}
    for name in _REGISTRY:
        flags = reconstructor_class(name).flags
        for f in fields(flags) if flags is not None else ():
            readers[f.name] = (*readers.get(f.name, ()), name)
    return readers


def flag_rank(field_name: str) -> int:
    """Where a flag is listed: 0 for the pipeline's own options, then 1, 2, ... for those of
    the registered reconstructors in registry order (a shared flag with its first reader)."""
    readers = flag_readers().get(field_name)
    return 0 if readers is None else list(_REGISTRY).index(readers[0]) + 1


def unread_options(config: Any, reconstructor: str) -> dict[str, tuple[str, ...]]:
    """``{flag: the reconstructors that read it}`` of the options ``config`` sets away from
    their defaults that ``reconstructor`` does not read (options that would silently do
    nothing), in ``--help`` order. The readers of a flag are the registered reconstructors whose
    :attr:`pipeline.reconstructors.Reconstructor.flags` declare it; the pipeline's own options
    are read whatever the reconstructor."""
    readers = flag_readers()
    unread = {}
    for f in sorted(dataclasses.fields(config), key=lambda f: flag_rank(f.name)):
        if flag_of(f) is None or f.name not in readers or reconstructor in readers[f.name]:
            continue
        if f.default is not dataclasses.MISSING and getattr(config, f.name) != f.default:
            unread[flag_name(f)] = readers[f.name]
    return unread


def create_reconstructor(name: str, **options: Any) -> Reconstructor:
    """Build the reconstructor called ``name`` with its keyword options.

    Raises:
        ValueError: unknown name.
    """
    return reconstructor_class(name)(**options)


def colmap_log_level(config: Any) -> int:
    """COLMAP's (glog) minimum level for a run: its warnings with ``verbose``, else nothing
    below FATAL (a window's failure reaches ``window_info.json`` and the digest in words)."""
    return 1 if config.verbose else 3


def build_reconstructor(config: Any) -> Reconstructor:
    """The reconstructor the configuration asks for (``auto`` must be resolved first).

    Raises:
        InputError: its options are invalid, or its checkpoint cannot be found or used (the
            message says how to get one).
    """
    from ..algo.models import CheckpointError, WeightsNotFoundError

    options = reconstructor_options(config)
    try:
        return create_reconstructor(config.reconstructor, options=options)
    except (WeightsNotFoundError, CheckpointError) as exc:
        raise InputError(f"--reconstructor {config.reconstructor}: {exc}") from exc
    except ValueError as exc:
        if config.reconstructor == "da3":  # a checkpoint that predicts no cameras
            raise InputError(f"--reconstructor da3: {exc}") from exc
        raise


def reconstructor_options(config: Any) -> Any:
    """The options object of ``config.reconstructor``, filled from the configuration by the
    reconstructor's own :meth:`~pipeline.reconstructors.Reconstructor.options_from_config`.

    Raises:
        InputError: an unknown reconstructor, or options that cannot work together.
    """
    try:
        cls = reconstructor_class(config.reconstructor)
    except ValueError as exc:
        raise InputError(f"{exc} (or auto)") from None
    try:
        return cls.options_from_config(config)
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"--reconstructor {config.reconstructor}: {exc}") from exc
