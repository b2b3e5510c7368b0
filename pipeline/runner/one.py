"""A run over one sequence (``--input-dir``, ``--input-video``): its windows planned, run and
recorded in ``run.json``, merged with ``--merge``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..exec.distributed import ProcessGroup
from ..io.frames import Frame
from ..io.merged_record import remove_stale_merged
from ..post.merge_options import MergeOptions
from ..reconstructors import reconstructor_class
from .choice import build_for_run, resolve_choice
from .config import PipelineConfig
from .control import RunControl
from .inputs import sized_for
from .plan import SequencePlan, plan_windows, sequence_notes
from .schedule import (
    cpu_pool,
    make_governor,
    merge_recorded,
    new_profile,
    process_sequences,
    recorded,
)
from .summary import RunSummary

logger = logging.getLogger(__name__)


def run_one(config: PipelineConfig, frames: list[Frame], group: ProcessGroup,
            start: float, cluster: Any = None, control: RunControl | None = None) -> RunSummary:
    """The run once the output folder is held and the frames are ready (the same skeleton as
    :func:`pipeline.runner.many.run_many`, with one plan)."""
    config, reason = resolve_choice(config, group)
    frames = sized_for(frames, reconstructor_class(config.reconstructor), config)
    reconstructor = build_for_run(config, cluster)
    plan = plan_windows(config, frames, reconstructor, group, reason)
    profile, governor = new_profile(reconstructor), make_governor(config, reconstructor, group)
    with recorded([plan], governor, profile, start):
        with reconstructor, cpu_pool(config, reconstructor, group, cluster) as pool:
            plan.manifest.data["throughput"] = process_sequences(
                [plan], config, reconstructor, pool, governor, profile, control=control)
    where = f", process {group.rank} of {group.world_size}" if group.world_size > 1 else ""
    summary = RunSummary(output_dir=Path(config.output_dir), num_frames=len(frames),
                         windows=plan.manifest.data["windows"], profile=profile,
                         is_main=group.is_main, throughput=plan.manifest.data.get("throughput"),
                         device=reconstructor.device + where, notes=sequence_notes(plan))
    if config.merge and group.is_main:
        _merge(summary, plan, config.merge_options)
    if group.is_main:
        remove_stale_merged(summary.output_dir)  # a merge of windows since redone
    summary.wall_time = time.perf_counter() - start
    return summary


def _merge(summary: RunSummary, plan: SequencePlan, options: MergeOptions) -> None:
    """Merge the finished windows; a failure is recorded, never loses the windows."""
    try:
        summary.merge = merge_recorded(plan, options)
    except Exception as exc:  # noqa: BLE001 - the windows are written; report and go on
        logger.error("merging failed: %s", exc)
        summary.merge_error = f"{type(exc).__name__}: {exc}"
