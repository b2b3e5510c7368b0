"""The registry of reconstructors: names to classes, their flags, and building the one a run
asks for.

The built-in reconstructors and those of other installed packages are found through the
entry-point group :data:`ENTRY_POINT_GROUP` (the project's own ``pyproject.toml`` declares the
three built-in ones there). An outside package adds a reconstructor without touching this
project::

    [project.entry-points."pipeline.reconstructors"]
    toy = "toy_package.module:ToyReconstructor"

Its class subclasses :class:`~pipeline.reconstructors.base.Reconstructor`; its
:attr:`~pipeline.reconstructors.base.Reconstructor.flags` become fields of
:class:`pipeline.runner.config.PipelineConfig` and flags of the command line.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import fields
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from ..core.errors import InputError
from ..infra.options import flag_name, flag_of
from .base import Reconstructor

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pipeline.reconstructors"
"""The entry-point group naming reconstructors: ``name = "module:Class"``."""

BUILT_IN = {
    "vggt": "pipeline.reconstructors.vggt:VggtReconstructor",
    "da3": "pipeline.reconstructors.da3:Da3Reconstructor",
    "colmap": "pipeline.reconstructors.colmap:ColmapReconstructor",
}
"""The project's own reconstructors, as ``pyproject.toml`` declares them (used as they are when
the project runs from a checkout that is not installed, so that no entry points are found).
Reconstructor modules import their heavy dependencies (torch, the models) only where they use
them, so that the command line reads every reconstructor's flags quickly."""


@cache
def reconstructor_entries() -> dict[str, str]:
    """Reconstructor name -> ``module:Class``: the built-in ones first, in their order, then
    those other installed packages declare, sorted by name. A name declared twice keeps its
    first declaration (a warning names the one ignored)."""
    found = dict(BUILT_IN)
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        if found.get(point.name) == point.value:
            continue
        if point.name in found or point.name == "auto":
            logger.warning("reconstructor %r of %s ignored: the name is taken", point.name,
                           point.value)
            continue
        found[point.name] = point.value
    return found


def available_reconstructors() -> list[str]:
    """Names accepted by :func:`create_reconstructor`, in registry order."""
    return list(reconstructor_entries())


def reconstructor_class(name: str) -> type[Reconstructor]:
    """The class of the reconstructor called ``name`` (its module is imported now).

    Raises:
        ValueError: unknown name.
    """
    if name not in reconstructor_entries():
        raise ValueError(
            f"unknown reconstructor {name!r}; choose one of {', '.join(available_reconstructors())}"
        )
    module_name, class_name = reconstructor_entries()[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def registered_flags() -> tuple[type, ...]:
    """The :attr:`Reconstructor.flags` classes of the registered reconstructors, in registry
    order, each once: the bases of :class:`pipeline.runner.config.PipelineConfig`.

    Raises:
        TypeError: two reconstructors declare a flag of the same name in different classes (a
            flag several read is declared once, in a base class their flags share).
    """
    classes: list[type] = []
    declared: dict[str, type] = {}
    for name in reconstructor_entries():
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
    for name in reconstructor_entries():
        flags = reconstructor_class(name).flags
        for f in fields(flags) if flags is not None else ():
            readers[f.name] = (*readers.get(f.name, ()), name)
    return readers


def flag_rank(field_name: str) -> int:
    """Where a flag is listed: 0 for the pipeline's own options, then 1, 2, ... for those of
    the registered reconstructors in registry order (a shared flag with its first reader)."""
    readers = flag_readers().get(field_name)
    return 0 if readers is None else list(reconstructor_entries()).index(readers[0]) + 1


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
