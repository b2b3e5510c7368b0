"""``python -m pipeline.evaluate --pred OUT [--gt GT]``: score an output folder against ground
truth (see :mod:`pipeline.post.evaluate`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import PipelineError
from ..core.geometry import ALIGN_MODES
from ..post.evaluate import EVALUATION_JSON, GT_PLOT, EvaluateOptions, evaluate_path, write_report
from .parsers import OneLineParser, one_line


def build_parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    p = OneLineParser(prog="python -m pipeline.evaluate",
                       description="Score a pipeline output folder against ground-truth poses "
                                   "(ATE after alignment, RPE) per window and for the merged "
                                   "trajectory.",
                       epilog="Exit status: 0 evaluated, 2 bad usage or input.")
    p.add_argument("--pred", required=True, type=Path, help="pipeline output folder (OUT)")
    p.add_argument("--gt", type=Path, default=None,
                   help="ground truth: ground_truth.npz or its folder, a TUM file, a "
                        "7-Scenes sequence folder, or a COLMAP model folder (text or binary); "
                        "for a run over many sequences a folder holding each sequence's as "
                        "<sequence name>; default: found beside the input (its folder or "
                        "the folder above)")
    p.add_argument("--json", type=Path, default=None,
                   help="report path (default: OUT/evaluation.json)")
    p.add_argument("--align", choices=ALIGN_MODES, default="sim3",
                   help="ATE alignment of predicted onto GT centres (default: sim3)")
    p.add_argument("--rpe-delta", type=int, default=1, help="RPE frame offset (default: 1)")
    p.add_argument("--per-frame", action="store_true", help="per-frame errors in the JSON")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw each "
                   f"merged segment against the ground truth (default: {GT_PLOT} in its folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when evaluated (or ``--help``), 2 on bad usage or
    input (one ``error:`` line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error (or the help)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    options = EvaluateOptions(align=args.align, rpe_delta=args.rpe_delta,
                              per_frame=args.per_frame, plot=args.plot)
    json_path = args.json or args.pred / EVALUATION_JSON
    try:
        report, text = evaluate_path(args.pred, args.gt, options)
    except (PipelineError, ValueError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(text)
    try:
        write_report(report, json_path)
    except OSError as exc:
        reason = exc.strerror or _one_line(exc)
        if args.json is not None:  # the report asked for by name
            print(f"error: cannot write {json_path}: {reason}", file=sys.stderr)
            return 2
        print(f"warning: cannot write {json_path}: {reason} (the scores above are complete; "
              "--json PATH keeps the report elsewhere)", file=sys.stderr)
        return 0
    print(f"report: {json_path}")
    return 0


def _one_line(exc: BaseException) -> str:
    return one_line(" ".join(str(exc).split()))




if __name__ == "__main__":
    sys.exit(main())
