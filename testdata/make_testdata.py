#!/usr/bin/env python
"""Regenerate the bundled synthetic test data (deterministic).

Default: ``testdata/synthetic/`` with 24 frames of 320x240 along the "arc" path.  Longer
benchmark sequences, e.g. a 120-frame loop::

    python testdata/make_testdata.py --out /tmp/loop120 --num-frames 120 --path loop
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "testdata" / "synthetic"


def _import_synthetic():
    """Import ``pipeline.io.synthetic``, from this checkout if the package is not installed."""
    try:
        from pipeline import synthetic
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        from pipeline import synthetic
    return synthetic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--num-frames", type=int, default=24, help="number of frames (default: %(default)s)")
    parser.add_argument("--path", choices=("arc", "loop"), default="arc", help="camera path (default: %(default)s)")
    parser.add_argument("--width", type=int, default=320, help="image width in pixels (default: %(default)s)")
    parser.add_argument("--height", type=int, default=240, help="image height in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="texture seed (default: %(default)s)")
    parser.add_argument(
        "--arc-degrees", type=float, default=60.0, help="angular span of the arc path (default: %(default)s)"
    )
    parser.add_argument("--supersample", type=int, default=2, help="anti-aliasing rays per pixel side (default: 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    synthetic = _import_synthetic()
    options = synthetic.RenderOptions(
        num_frames=args.num_frames, width=args.width, height=args.height, path=args.path,
        arc_degrees=args.arc_degrees, supersample=args.supersample,
        scene=synthetic.SceneOptions(seed=args.seed),
    )
    try:
        sequence = synthetic.render_sequence(options)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if (args.out / "images").is_dir():  # drop stale frames of a longer earlier run
        shutil.rmtree(args.out / "images")
    out = synthetic.write_sequence(sequence, args.out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
