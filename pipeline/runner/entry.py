"""Scheduling a run: frames -> windows -> batches -> reconstructor -> window folders -> run.json.

:func:`run` checks the options, holds the output folder, reads the input and hands one sequence
to :mod:`pipeline.runner.one`, many to :mod:`pipeline.runner.many`. Rerunning into the same
output folder skips the windows that are complete and redoes the rest. A window is reused only
when its folder is whole and was made from the same frame contents with the same result-changing
options (see :mod:`pipeline.io.output`); one run at a time holds an output folder
(:mod:`pipeline.infra.lock`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.failures import DigestEntry
from ..exec.distributed import ProcessGroup, process_group
from ..infra.lock import OutputLock
from ..io.output import RUN_MANIFEST
from ..io.run_record import add_to_digest
from ..io.sequences import DATASET_MANIFEST
from .checks import check_config
from .config import PipelineConfig
from .control import RunControl
from .inputs import load_frames, remove_empty_folders, sequence_sources
from .many import run_many
from .one import run_one
from .plan import prepare_output, setup_errors
from .summary import RunSummary

logger = logging.getLogger(__name__)


def run(config: PipelineConfig, control: RunControl | None = None) -> RunSummary:
    """Reconstruct every window of the configured sequence into ``config.output_dir``;
    ``control`` follows the run and can stop it between windows (a program running it in a
    thread of its own: the service).

    Raises:
        InputError: bad input or options, an output folder that cannot be written, or one that
            another live run holds (nothing is written then, beyond the output folder).
        DiskFullError: the disk filled up during the run; what was written stays, ``run.json``
            says ``failed``, and a rerun finishes the rest.
        RunStopped: ``control`` stopped the run (``run.json`` says ``cancelled`` or
            ``interrupted``; a rerun finishes the rest).
    """
    start = time.perf_counter()
    out = check_config(config)
    group = _process_group(config)
    many = config.input_root is not None or config.input_list is not None
    if config.engine == "ray" and group.world_size > 1:
        raise InputError("--engine ray spreads the run itself: start it once, not under "
                         "accelerate launch")
    if many and group.world_size > 1:
        raise InputError("--input-root/--input-list run in one process (one device); start "
                         "one run per device on separate lists instead of accelerate launch")
    lock = OutputLock(out)
    made = _missing_folders(out) if group.is_main else []
    try:
        with setup_errors(out):
            with group.main_first():
                if group.is_main:
                    prepare_output(out, lock)
                if many:
                    sources = sequence_sources(config)
                else:
                    frames = load_frames(config)
                    if control is not None:
                        control.frames(frames)
        with _engine(config) as connection:
            if many:
                summary = run_many(config, sources, group, start, connection, control)
            else:
                summary = run_one(config, frames, group, start, connection, control)
            if connection is not None:
                _note_cluster_events(summary, connection, many)
            return summary
    except InputError:
        lock.release()
        if made:  # refused: the folders this run made go again when nothing was written
            remove_empty_folders(made[0])
        raise
    finally:
        lock.release()


def _missing_folders(out: Path) -> list[Path]:
    """The folders of ``out``'s path that do not exist yet, outermost first."""
    missing = []
    for folder in [out.absolute(), *out.absolute().parents]:
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    return missing[::-1]


@contextlib.contextmanager
def _engine(config: PipelineConfig) -> Iterator[Any]:
    """The connection to the Ray cluster with ``--engine ray`` (Ray started here is shut down
    at the end; one the calling program started stays), else None."""
    if config.engine != "ray":
        yield None
        return
    from .ray_engine import connect

    connection = connect(config.ray_address, num_cpus=config.cpu_workers or None)
    try:
        yield connection
    finally:
        connection.close()


def _note_cluster_events(summary: RunSummary, connection: Any, many: bool) -> None:
    """Say in the summary's digest, and in the one ``run.json`` (``dataset.json``) keeps, that
    nodes were lost or device actors started again (their work ran again elsewhere)."""
    lost, restarts = connection.lost_nodes(), connection.actor_restarts
    notes = []
    if lost:
        logger.warning("ray: %d node(s) of the cluster were lost during the run; their tasks "
                       "ran again on the others", lost)
        notes.append(DigestEntry(cause=f"ray: {lost} node(s) lost during the run",
                                 hint="their tasks ran again on the other nodes; every window "
                                      "above is as complete as without the loss"))
    if restarts:
        notes.append(DigestEntry(cause=f"ray: device actors started again {restarts} time(s)",
                                 hint="the model was loaded again and the batches in flight "
                                      "were sent again"))
    if notes:
        summary.notes += notes
        add_to_digest(summary.output_dir, notes, DATASET_MANIFEST if many else RUN_MANIFEST)


def _process_group(config: PipelineConfig) -> ProcessGroup:
    try:
        return process_group(config.use_accelerate, config.device)
    except ImportError as exc:
        raise InputError(str(exc)) from exc
