"""The pipeline's command line read into a run configuration: the parser generated from
:class:`~pipeline.runner.config.PipelineConfig`, the checks it cannot express, logging, and a
run's options as a service job (shared by :mod:`.main`, :mod:`.serve` and :mod:`.client`).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from ..infra.options import from_flags
from ..runner.config import PipelineConfig
from ..service.options import TOKEN_ENV
from .parsers import OneLineParser, add_flags

CLIENT_DESTS = ("quiet", "backend", "token")
"""Flags of the command line that are not run options (a job sent to a service leaves them)."""


def build_parser(parser_class: type[argparse.ArgumentParser] = OneLineParser
                 ) -> argparse.ArgumentParser:
    """The argument parser, generated from :class:`PipelineConfig` (one flag per field, its
    docstring as help); ``--help`` explains every flag."""
    p = parser_class(
        prog="vae_data_pipeline_batch.py",
        description="Slide overlapping windows over a frame sequence and reconstruct each window "
                    "into a self-contained COLMAP scene (OUT/batch_XXX/window_YYY/sparse).",
        epilog="Exit status: 0 all windows succeeded, 1 some windows failed (the others are "
               "written) or the disk filled up, 2 bad usage or input or a busy output folder, "
               "130/143 interrupted/terminated. Rerunning into the same output folder skips "
               "windows made from the same frame contents and options, and redoes the rest. "
               "'vae_data_pipeline_batch.py serve --help': the warm model service.")
    exclusive = add_flags(p, PipelineConfig)
    exclusive["verbosity"].add_argument("-q", "--quiet", action="store_true", help="Warnings "
                                        "and the summary only; no progress bars.")
    client = p.add_argument_group("service (run the job on a started 'serve')")
    client.add_argument("--backend", metavar="URL", help="Send the run to the service at URL "
                        "(http://HOST:PORT) and follow it there: the same progress, summary and "
                        "exit status; Ctrl-C cancels it. Paths are sent as absolute paths.")
    client.add_argument("--token", help=f"The service's token (default: ${TOKEN_ENV}).")
    return p


def usage_problem(args: argparse.Namespace) -> str | None:
    """Flags that only apply with another flag, in words (the parser cannot say it)."""
    many = args.input_root is not None or args.input_list is not None
    if args.fps is not None and args.input_video is None and not many:
        return ("--fps applies only to --input-video (and the videos of --input-root or "
                "--input-list)")
    if args.frame_pattern is not None and args.input_dir is None and not many:
        return ("--frame-pattern applies only to --input-dir (and the folders of --input-root "
                "or --input-list)")
    return None


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Map parsed flags to the run configuration (each flag's dest is a field's name)."""
    return PipelineConfig(**from_flags(PipelineConfig, vars(args)),
                          show_progress=not getattr(args, "quiet", False))


def job_fields(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The run options given on the command line (those that differ from their defaults), as
    JSON for a service's ``POST /jobs``; paths made absolute."""
    fields = {}
    for dest, value in vars(args).items():
        if dest in CLIENT_DESTS or value == parser.get_default(dest):
            continue
        if isinstance(value, Path):
            value = os.path.abspath(value)
        fields[dest] = list(value) if isinstance(value, tuple) else value
    return fields


def configure_logging(*, verbose: bool, quiet: bool) -> None:
    """The pipeline's own logs at INFO (DEBUG with ``-v``, WARNING with ``-q``); other
    libraries' only from WARNING, so that ``-v`` shows the pipeline's stages, not their debug
    output."""
    logging.basicConfig(level=logging.WARNING, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("pipeline").setLevel(level)
