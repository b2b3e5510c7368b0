#!/usr/bin/env python
"""Batch window reconstruction: ``python vae_data_pipeline_batch.py --input-dir DIR --output-dir
OUT``.

A thin wrapper over :func:`pipeline.cli.main`; ``--help`` lists every flag.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
