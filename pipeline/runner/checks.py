"""The options of a run checked before any work: values, inputs, flags the chosen
reconstructor does not read.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path

from ..core.errors import InputError
from ..core.windows import create_windows
from ..infra.options import bad_values, changed_flags, flag_name
from ..io.merged_record import refuse_foreign_merged
from ..io.output import PLAN, RUN_RECORDS, refuse_foreign_records
from ..io.sequences import DATASET_MANIFEST, DATASET_RECORDS
from ..reconstructors import available_reconstructors, reconstructor_class, unread_options
from .config import IMAGE_MODES, PipelineConfig

logger = logging.getLogger(__name__)


SOURCE_FIELDS = ("input_dir", "input_video", "input_root", "input_list")
"""The options naming a run's input, of which one is given."""


def check_config(config: PipelineConfig) -> Path:
    """Fail fast, before any work, on options and output paths that cannot work."""
    for problem in bad_values(config):  # first: the checks below need values of their kind
        raise InputError(problem)
    sources = [flag_name(f) for f in fields(config) if f.name in SOURCE_FIELDS
               and getattr(config, f.name) is not None]
    if len(sources) > 1:
        raise InputError(f"{' and '.join(sources)} both given: give one input")
    if config.frame_pattern is not None and not str(config.frame_pattern).strip():
        raise InputError("--frame-pattern is empty: give a glob such as '*.color.jpg', or leave "
                         "it out for every image")
    if not str(config.output_dir).strip():
        raise InputError("--output-dir is empty: name the output folder")
    out = Path(config.output_dir)
    try:
        exists, folder = out.exists(), out.is_dir()
    except OSError as exc:  # a name too long for the file system, a link loop
        raise InputError(f"cannot use the output folder {out}: {exc.strerror or exc}") from exc
    if exists and not folder:
        raise InputError(f"output path exists and is not a folder: {out}")
    many = config.input_root is not None or config.input_list is not None
    if exists:  # the run would replace the user's own files of these names
        refuse_foreign_records(out, DATASET_RECORDS if many else RUN_RECORDS)
        _refuse_other_kind_of_run(out, many)
    if config.merge and exists and not many:
        refuse_foreign_merged(out)
    low_high = tuple(config.fov_range)
    if len(low_high) != 2 or not 0 < low_high[0] < low_high[1] < 180:
        raise InputError(f"--fov-range takes MIN,MAX degrees with 0 < MIN < MAX < 180, got "
                         f"{','.join(f'{v:g}' for v in low_high)}")
    if config.images not in IMAGE_MODES:
        raise InputError(f"--images must be link, copy or none, got {config.images!r}")
    if config.ray_address is not None and config.engine != "ray":
        raise InputError("--ray-address is read only with --engine ray")
    if config.engine == "ray":
        from .ray_engine import import_ray

        import_ray()  # fails here, before any work, when Ray is not installed
    merge_flags = changed_flags(config.merge_options)
    if merge_flags and not config.merge:
        raise InputError(f"{', '.join(merge_flags)}: merge options, read only with --merge")
    if config.reconstructor != "auto":
        unread = unread_problem(config, config.reconstructor)
        if unread:
            raise InputError(f"{unread}, the reconstructor asked for: drop the option or choose "
                             "a reconstructor that reads it")
    for name in available_reconstructors():
        reconstructor_class(name).check_flags(config)
    batch = config.window_batch_size
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise InputError(f"--window-batch-size must be a positive integer or auto, got {batch!r}")
    if config.frame_step < 1:
        raise InputError(f"--frame-step must be at least 1, got {config.frame_step}")
    if config.max_frames is not None and config.max_frames < 2:
        raise InputError(f"--max-frames must be at least 2, got {config.max_frames}")
    try:
        create_windows(range(config.window_size + 1), config.window_size, config.window_stride)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return out


def _refuse_other_kind_of_run(out: Path, many: bool) -> None:
    """Refuse a run over many sequences into a run over one, and the other way round: their
    records and folders would mix (a sequence's folder of a run over many is a run over one)."""
    if many and (out / PLAN).is_file():
        raise InputError(f"{out} holds a run over one sequence ({PLAN}): a run over many "
                         "writes a folder per sequence; choose another --output-dir")
    if not many and (out / DATASET_MANIFEST).is_file():
        raise InputError(f"{out} holds a run over many sequences ({DATASET_MANIFEST}): give "
                         "one of its sequence folders (OUT/<sequence>) or another --output-dir")


def unread_problem(config: PipelineConfig, reconstructor: str) -> str | None:
    """Which options ``config`` sets that ``reconstructor`` does not read, in words, or
    ``None``."""
    unread = unread_options(config, reconstructor)
    if not unread:
        return None
    listed = ", ".join(f"{flag} (read by {'/'.join(readers)})"
                       for flag, readers in unread.items())
    return f"{listed}: not read by {reconstructor}"
