"""Command-line parsers built from the option dataclasses (:mod:`pipeline.infra.options`): one flag
per field, its docstring as help, and errors on one ``error:`` line. Every command of the
project (the pipeline, ``python -m pipeline.merge``, ``python -m pipeline.evaluate``) makes its
parser here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..infra.options import Flag, default_text, field_docs, flag_name, flag_of, flagged_fields
from ..reconstructors import available_reconstructors, flag_rank

EXIT_OK, EXIT_WINDOWS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
"""Exit statuses: all windows ok, some failed (or the disk filled up), bad usage or input,
interrupted (SIGTERM/SIGHUP exit ``128 + signal``)."""


def one_line(message: object) -> str:
    """``message`` on one line: control characters (a newline in a file name) written as
    escapes, so that the ``error:`` line stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line (usage is in ``--help``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


class RaisingParser(OneLineParser):
    """A parser whose errors raise :class:`~pipeline.core.errors.InputError` with the message
    the command line would print (a service reading a job's options)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    if text.strip() == "0":
        return 0
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}") \
            from None


def _batch_size_text(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") \
            from None


def _number(text: str) -> float:
    """A finite number (ranges are checked with the configuration)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return Path(text)


def _export_format(text: str) -> str:
    from ..algo.exports import parse_export_format  # deferred: --help stays quick

    try:
        return "-".join(parse_export_format(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


_TYPES = {"str": str, "int": _positive_int, "count": _non_negative_int, "float": _number,
          "positive_float": _positive_float, "floats": _float_list, "folder": _folder,
          "batch_size": _batch_size_text, "export_format": _export_format}
"""How each :data:`pipeline.infra.options.KINDS` value is read (``bool`` is a switch)."""


def _help(owner: type, f: dataclasses.Field, flag: Flag) -> str:
    """The option's docstring, with its default when the text does not give it."""
    text = field_docs(owner).get(f.name, "")
    default = default_text(f)
    text = text.replace("%", "%%")  # argparse formats help strings with %
    if flag.kind == "bool" and f.default is False or default is None or "(default" in text:
        return text
    return f"{text} (default: {default})"


def _add_option(target: Any, dest: str, owner: type, f: dataclasses.Field) -> None:
    """One option on ``target`` (a group), as its :class:`Flag` says."""
    flag = flag_of(f)
    names = ([flag.short] if flag.short else []) + [flag_name(f)]
    kwargs: dict[str, Any] = {"dest": dest, "help": _help(owner, f, flag)}
    if flag.kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
    elif flag.kind == "reconstructor":
        kwargs["choices"] = ("auto", *available_reconstructors())
    else:
        kwargs.update(type=_TYPES[flag.kind], metavar=flag.metavar, choices=flag.choices)
    if f.default is not dataclasses.MISSING:
        kwargs["default"] = f.default
    elif flag.required and not flag.exclusive:
        kwargs["required"] = True
    target.add_argument(*names, **kwargs)


def add_flags(parser: argparse.ArgumentParser, cls: type,
              skip: Collection[str] = ()) -> dict[str, Any]:
    """Add a flag for every flagged field of dataclass ``cls`` (nested options included; those
    whose dest is in ``skip`` left out) to ``parser``, in argument groups named by the fields'
    :attr:`Flag.group` (in the order their first field appears: the pipeline's own options
    first, then each reconstructor's, in registry order); return the mutually exclusive groups
    made, by name."""
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for dest, owner, f in sorted(flagged_fields(cls), key=lambda item: flag_rank(item[2].name)):
        if dest in skip:
            continue
        flag = flag_of(f)
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        target = groups[flag.group]
        if flag.exclusive:
            if flag.exclusive not in exclusive:
                exclusive[flag.exclusive] = target.add_mutually_exclusive_group(
                    required=flag.required)
            target = exclusive[flag.exclusive]
        _add_option(target, dest, owner, f)
    return exclusive
