"""A run over many sequences (``--input-root``, ``--input-list``): one reconstructor for all,
each sequence in its own folder, ``index.jsonl`` and ``dataset.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..core.errors import InputError
from ..core.failures import DigestEntry, digest_json, failure_digest, plural
from ..core.windows import Window
from ..exec.distributed import ProcessGroup
from ..infra.memory import StageTable
from ..io.frames import Frame
from ..io.merged_record import remove_stale_merged
from ..io.output import read_window_info
from ..io.sequences import (
    DatasetManifest,
    SequenceSource,
    WindowIndex,
    index_entry,
    sequence_failure_entry,
    stray_sequences,
)
from ..post.merge_options import MergeOptions
from ..reconstructors import Reconstructor
from .choice import resolve_and_build
from .config import PipelineConfig
from .control import RunControl
from .inputs import load_sequence, remove_empty_folders, sequence_config, sized_for
from .plan import SequencePlan, plan_windows, sequence_notes
from .schedule import (
    Outcome,
    cpu_pool,
    make_governor,
    merge_recorded,
    new_profile,
    process_sequences,
    recorded,
)
from .summary import RunSummary

logger = logging.getLogger(__name__)


def run_many(config: PipelineConfig, sources: list[SequenceSource], group: ProcessGroup,
             start: float, cluster: Any = None, control: RunControl | None = None) -> RunSummary:
    """A run over many sequences: one reconstructor (one model load) for all, each sequence in
    ``OUT/<name>/`` as a run over it alone would lay it out, ``OUT/index.jsonl`` listing every
    window and ``OUT/dataset.json`` the sequences. A sequence that cannot be read fails alone."""
    out = Path(config.output_dir)
    config, reconstructor, reason = resolve_and_build(config, group, cluster)
    index, dataset = WindowIndex(out), DatasetManifest(out, config, reconstructor, sources)
    profile, governor = new_profile(reconstructor), make_governor(config, reconstructor, group)
    plans: list[SequencePlan] = []
    dataset.data["stray_sequences"] = _warn_stray(out, sources)

    def finish(outcome: Outcome) -> None:
        index.write(force=True)
        dataset.finish(outcome.status, time.perf_counter() - start, outcome.error, plans,
                       governor, profile)

    def on_window(plan: SequencePlan, record: dict[str, Any]) -> None:
        _index_window(index, out, plan, plan.windows[record["window_index"]], record)
        index.write()

    with recorded(plans, governor, profile, start, then=finish):
        with reconstructor, cpu_pool(config, reconstructor, group, cluster) as pool:
            for source in tqdm(sources, desc="sequences", unit="sequence",
                               disable=None if config.show_progress else True):
                plan = _plan_sequence(config, source, reconstructor, group, reason, index,
                                      dataset, control)
                if plan is not None:
                    plans.append(plan)
            _log_plans(plans, len(sources))
            dataset.planned(plans)
            index.write(force=True)
            dataset.data["throughput"] = process_sequences(
                plans, config, reconstructor, pool, governor, profile, on_window, control)
    return _summary(config, plans, reconstructor, dataset, profile, start)


def _warn_stray(out: Path, sources: Sequence[SequenceSource]) -> list[str]:
    """The sequence folders of ``out`` that are not this run's (see :func:`stray_sequences`),
    each named in one warning."""
    stray = stray_sequences(out, [s.name for s in sources])
    if stray:
        shown = ", ".join(stray[:5]) + (", ..." if len(stray) > 5 else "")
        logger.warning("%s holds %s of an earlier run that this run does not have (%s): "
                       "index.jsonl and dataset.json do not list them; remove them if they "
                       "are stale", out, plural(len(stray), "sequence folder"), shown)
    return stray


def _plan_sequence(config: PipelineConfig, source: SequenceSource, reconstructor: Reconstructor,
                   group: ProcessGroup, reason: str, index: WindowIndex,
                   dataset: DatasetManifest, control: RunControl | None = None
                   ) -> SequencePlan | None:
    """One sequence of the run planned, its windows complete before this run indexed; None
    when it cannot be read or ``control`` refuses its frames (recorded as failed, the others
    go on)."""
    seq_config = sequence_config(config, source)
    try:
        frames = load_sequence(seq_config, source)
        if control is not None:
            control.frames(frames)
        frames = sized_for(frames, reconstructor, seq_config)
    except InputError as exc:
        logger.warning("sequence %s: %s; it is skipped", source.name, exc)
        remove_empty_folders(Path(seq_config.output_dir))
        dataset.failed(source, str(exc))
        index.add(sequence_failure_entry(source, str(exc)))
        return None
    plan = plan_windows(seq_config, frames, reconstructor, group, reason, name=source.name)
    todo = {w.key for w in plan.todo}
    for window in plan.windows:
        if window.key not in todo:  # complete before this run
            _index_window(index, Path(config.output_dir), plan, window)
    return plan


def _summary(config: PipelineConfig, plans: list[SequencePlan], reconstructor: Reconstructor,
             dataset: DatasetManifest, profile: StageTable, start: float) -> RunSummary:
    """The run's summary: every sequence's windows, the digest's notes (calibration, failed
    sequences, merges split or failed), merged with ``--merge``; the digest kept in
    ``dataset.json``."""
    summary = RunSummary(output_dir=Path(config.output_dir),
                         num_frames=sum(len(p.frames) for p in plans),
                         windows=[dict(w, sequence=p.name) for p in plans
                                  for w in p.manifest.data["windows"]],
                         profile=profile,
                         throughput=dataset.data.get("throughput"),
                         device=reconstructor.device, sequences=dataset.data["sequences"])
    summary.notes = [note for plan in plans for note in sequence_notes(plan)]
    summary.notes += [DigestEntry(cause=f"{s['name']}: not reconstructed",
                                  example=s.get("error") or "", hint=s.get("error"))
                      for s in summary.failed_sequences]
    if config.merge:
        _merge_sequences(summary, plans, config.merge_options)
    for plan in plans:
        remove_stale_merged(Path(plan.config.output_dir))  # a merge of windows since redone
    dataset.keep_digest(digest_json(failure_digest(summary.windows) + summary.notes))
    summary.wall_time = time.perf_counter() - start
    return summary


def _log_plans(plans: Sequence[SequencePlan], sources: int) -> None:
    """One line for the planned sequences of a run over many (each sequence's own is at
    debug level, ``-v``)."""
    windows = sum(len(p.windows) for p in plans)
    todo = sum(len(p.todo) for p in plans)
    failed = f", {sources - len(plans)} failed to load (skipped)" if sources > len(plans) else ""
    logger.info("%s%s: %s -> %s: %d to do, %d already complete", plural(len(plans), "sequence"),
                failed, plural(sum(len(p.frames) for p in plans), "frame"),
                plural(windows, "window"), todo, windows - todo)


def _index_window(index: WindowIndex, out: Path, plan: SequencePlan,
                  window: Window[Frame], record: dict[str, Any] | None = None) -> None:
    """Put a window of ``plan`` in the dataset's index (its record read from its folder when
    not given: a window complete before this run)."""
    folder = Path(plan.config.output_dir) / window.relative_dir
    if record is None:
        record = read_window_info(folder)
    index.add(index_entry(plan.name, record, folder, out))


def _merge_sequences(summary: RunSummary, plans: list[SequencePlan],
                     options: MergeOptions) -> None:
    """``--merge`` of each sequence into its own ``merged/``; failures are recorded."""
    errors = []
    for plan in plans:
        try:
            report = merge_recorded(plan, options)
        except Exception as exc:  # noqa: BLE001 - the windows are written; report and go on
            logger.error("merging %s failed: %s", plan.name, exc)
            errors.append(f"{plan.name}: {type(exc).__name__}: {exc}")
            summary.notes.append(DigestEntry(cause=f"{plan.name}: merge failed",
                                             example=str(exc)))
            continue
        segments = len(report["segments"])
        if segments > 1:
            summary.notes.append(DigestEntry(
                cause=f"{plan.name}: merged in {segments} separate segments",
                hint=f"failed windows or weak overlaps break the path; {plan.name}/merged/"
                     "merge.json says where"))
    summary.merge_error = "; ".join(errors) or None
