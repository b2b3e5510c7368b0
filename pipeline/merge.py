"""Kept for ``python -m pipeline.merge`` and ``from pipeline.merge import ...``: the library lives
in
:mod:`pipeline.post.merge`, the command in :mod:`pipeline.cli.merge`."""

import sys

from .cli.merge import main
from .post.merge import *  # noqa: F401,F403

if __name__ == "__main__":
    sys.exit(main())
