"""Options declared once: a dataclass field's default, its docstring (the help text) and how the
command line reads it.

:class:`pipeline.runner.config.PipelineConfig` declares every run option with :func:`option`; the
command line (:mod:`pipeline.cli.main`) is generated from those declarations, the README's flag
table
is checked against it by the tests, and
:func:`pipeline.reconstructors.unread_options` finds the options set for a reconstructor that
does not read them. Adding an option is one field, in one place: the
pipeline's own in :class:`~pipeline.runner.config.PipelineConfig`, a reconstructor's in its module
(:attr:`pipeline.reconstructors.Reconstructor.flags`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

KINDS = ("str", "int", "count", "float", "positive_float", "floats", "folder", "batch_size",
         "bool", "export_format", "reconstructor")
"""How the command line reads a value: ``int`` a positive integer, ``count`` 0 or a positive
integer, ``float`` a finite number, ``positive_float``, ``floats`` comma-separated finite
numbers, ``folder`` a non-empty path, ``batch_size`` a positive integer or ``auto`` (None),
``bool`` a switch, ``export_format`` formats joined by ``-``, ``reconstructor`` ``auto`` or a
registered reconstructor's name."""


@dataclass(frozen=True, kw_only=True)
class Flag:
    """How one option appears on the command line."""

    group: str
    """The ``--help`` section it is listed in."""
    kind: str = "str"
    """One of :data:`KINDS`."""
    name: str | None = None
    """The flag; default ``--`` and the field name with dashes."""
    short: str | None = None
    """A one-letter alias (``-v``)."""
    metavar: str | None = None
    """The value's placeholder in ``--help``."""
    choices: tuple[str, ...] | None = None
    """The values accepted, when they are few."""
    bounds: tuple[float, float] | None = None
    """A number's allowed range ``(low, high)``, both included unless ``low_open``; checked for
    library use too (:func:`bad_values`)."""
    low_open: bool = False
    """``low`` itself is not allowed."""
    default_text: str | None = None
    """How the default reads in ``--help`` and the README, when the value does not say it (a
    default of ``None`` meaning "every frame", "estimated", ...)."""
    required: bool = False
    """The command line must give it (with ``exclusive``: one of its group)."""
    exclusive: str | None = None
    """Options sharing this name exclude each other (and one is required when ``required``)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown option kind {self.kind!r}; one of {KINDS}")
        if self.kind == "positive_float" and self.bounds is None:
            object.__setattr__(self, "bounds", (0.0, math.inf))
            object.__setattr__(self, "low_open", True)


def option(default: Any = dataclasses.MISSING, **flag: Any) -> Any:
    """A dataclass field with ``default``, on the command line as :class:`Flag` ``(**flag)``
    says. Its help text is the docstring written under the field."""
    return dataclasses.field(default=default, metadata={"flag": Flag(**flag)})


def options_field(cls: type, **metadata: Any) -> Any:
    """A dataclass field holding a nested options dataclass ``cls`` (default ``cls()``), whose
    own flagged fields join the command line."""
    return dataclasses.field(default_factory=cls, metadata={"nested": True, **metadata})


def flagged_fields(cls: type, prefix: str = "") -> list[tuple[str, type, dataclasses.Field]]:
    """``(dest, owner class, field)`` of every field of dataclass ``cls`` that has a
    :class:`Flag`, in order; the fields of nested options (:func:`options_field`) are expanded,
    with ``dest`` ``"outer.inner"``."""
    found = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            found += flagged_fields(f.default_factory, f"{prefix}{f.name}.")
        elif flag_of(f) is not None:
            found.append((prefix + f.name, cls, f))
    return found


def from_flags(cls: type, values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The keyword arguments of ``cls`` from parsed ``values`` (``{dest: value}``, see
    :func:`flagged_fields`), nested options built."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            kwargs[f.name] = f.default_factory(**from_flags(f.default_factory, values,
                                                            f"{prefix}{f.name}."))
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return kwargs


def flag_of(f: dataclasses.Field) -> Flag | None:
    """The :class:`Flag` of a dataclass field, if it has one."""
    return f.metadata.get("flag")


def flag_name(f: dataclasses.Field) -> str:
    """The command-line flag of a field (``--window-size``)."""
    flag = flag_of(f)
    return (flag and flag.name) or "--" + f.name.replace("_", "-")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of dataclass ``cls`` (and its bases), with
    whitespace collapsed, read from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and \
                    isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def default_text(f: dataclasses.Field) -> str | None:
    """How a field's default reads for people (``8``, ``auto``, ``off``, ``every frame``);
    ``None`` for a required option."""
    flag = flag_of(f)
    if flag is not None and flag.default_text is not None:
        return flag.default_text
    if f.default is dataclasses.MISSING or flag is not None and flag.required:
        return None
    value = f.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


MAX_COUNT = 1_000_000
"""The largest whole number an ``int`` or ``count`` option takes unless its bounds say
otherwise (a window of a million frames or a million workers is a typing slip, and the work it
would start is never reached)."""


def bad_values(options: Any) -> Iterator[str]:
    """A sentence for each field of dataclass ``options`` (nested options included) whose value
    is not of its kind (library use: ``window_size="8"``, ``8.5``, ``merge_options={}``), lies
    outside its :attr:`Flag.bounds` (whole numbers: at most :data:`MAX_COUNT` by default), or
    is not a finite number; ``None``, not given, passes."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.metadata.get("nested"):
            if not isinstance(value, f.default_factory):
                yield (f"{f.name} must be a {f.default_factory.__name__}, got "
                       f"{type(value).__name__}")
            else:
                yield from bad_values(value)
            continue
        flag = flag_of(f)
        if flag is None or value is None:
            continue
        problem = _kind_problem(flag, value)
        if problem is not None:
            yield f"{flag_name(f)} {problem}, got {value!r}"
            continue
        if flag.bounds is None and flag.kind not in ("int", "count"):
            continue
        low, high = flag.bounds or (1 if flag.kind == "int" else 0, MAX_COUNT)
        if math.isfinite(value) and (value > low if flag.low_open else value >= low) and \
                value <= high:
            continue
        if flag.low_open and low == 0 and high == math.inf:
            yield f"{flag_name(f)} must be a positive finite number, got {value!r}"
        elif flag.kind in ("int", "count"):
            yield (f"{flag_name(f)} must be a whole number from {low:.0f} to {high:.0f}, got "
                   f"{value!r}")
        else:
            bound = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
            yield f"{flag_name(f)} must be a finite number {bound}, got {value!r}"


def _kind_problem(flag: Flag, value: Any) -> str | None:
    """What is wrong with the type of ``value`` for an option of ``flag.kind`` (``None``: it
    is of its kind); ranges are checked apart."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if flag.kind in ("int", "count"):
        return None if isinstance(value, int) and not isinstance(value, bool) else \
            "must be a whole number"
    if flag.kind in ("float", "positive_float") or flag.bounds is not None:
        return None if number else "must be a number"
    if flag.kind == "bool":
        return None if isinstance(value, bool) else "must be True or False"
    if flag.kind == "folder":
        return None if isinstance(value, (str, os.PathLike)) else "must be a path"
    if flag.kind == "floats":
        ok = isinstance(value, (tuple, list)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return None if ok else "must be a sequence of numbers"
    if flag.choices is not None:
        return None if value in flag.choices else f"must be one of {', '.join(flag.choices)}"
    return None


def changed_flags(options: Any) -> list[str]:
    """The flags of the fields of dataclass ``options`` that differ from their defaults."""
    return [flag_name(f) for _, _, f in flagged_fields(type(options))
            if getattr(options, f.name) != f.default]

