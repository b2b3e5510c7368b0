"""``python -m pipeline.merge OUT``: merge the windows of an existing output folder (see
:mod:`pipeline.post.merge`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import InputError, PipelineError
from ..infra.lock import OutputLock
from ..infra.options import from_flags
from ..io.sequences import refuse_running_dataset
from ..post.merge import merge_output
from ..post.merge_options import MergeOptions
from .parsers import OneLineParser, add_flags, one_line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.merge OUT``: merge an existing output folder; exit 0, or 2 on error."""
    parser = OneLineParser(prog="python -m pipeline.merge",
                            description="Join the windows of a pipeline output folder into one "
                            "reconstruction per connected segment (OUT/merged/).")
    parser.add_argument("output_dir", type=Path, help="a pipeline output folder")
    add_flags(parser, MergeOptions)  # the flags --merge takes, with the same defaults
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = MergeOptions(**from_flags(MergeOptions, vars(args)))
    try:
        if not args.output_dir.is_dir():
            raise InputError(f"not a folder: {args.output_dir}")
        with OutputLock(args.output_dir):  # never while a run writes windows into it
            refuse_running_dataset(args.output_dir)  # nor a run over many sequences
            report = merge_output(args.output_dir, options)
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the lock of a folder that cannot be written
        print(f"error: cannot write {one_line(exc.filename or args.output_dir)}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    for seg in report["segments"]:
        print(f"{seg['path']}: windows {seg['windows'][0]}-{seg['windows'][-1]}, "
              f"{seg['frames']} frames, {seg['points']} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
