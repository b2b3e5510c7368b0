"""Kept for ``python -m pipeline.evaluate`` and ``from pipeline.evaluate import ...``: the library
lives in
:mod:`pipeline.post.evaluate`, the command in :mod:`pipeline.cli.evaluate`."""

import sys

from .cli.evaluate import main
from .post.evaluate import *  # noqa: F401,F403

if __name__ == "__main__":
    sys.exit(main())
