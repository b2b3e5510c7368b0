"""Following and stopping a run from the program that runs it (the service's worker)."""

from __future__ import annotations

import json

import pytest

from conftest import IMAGES
from pipeline.runner import run
from pipeline.runner.config import PipelineConfig
from pipeline.runner.control import RunControl, RunStopped
from tests.helpers import window_dirs


def test_a_stop_ends_the_run_at_the_next_window_boundary_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "out"
    config = PipelineConfig(input_dir=IMAGES, output_dir=out, reconstructor="colmap",
                            max_frames=16, window_batch_size=1, cpu_workers=0,
                            show_progress=False)
    seen: dict = {"totals": [], "windows": [], "stages": []}
    control = RunControl(on_total=seen["totals"].append, on_stage=seen["stages"].append)

    def on_window(record):
        seen["windows"].append(record)
        control.stop()  # asked for while the first window is recorded

    control.on_window = on_window
    with pytest.raises(RunStopped) as stopped:
        run(config, control)
    assert stopped.value.status == "cancelled"
    assert seen["totals"] == [3] and len(seen["windows"]) == 1 and seen["stages"]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "cancelled"
    assert [w["status"] for w in manifest["windows"]] == ["ok"]
    assert len(window_dirs(out)) == 1
    assert not [p for p in out.rglob(".partial-*")], "no staging folder is left behind"

    summary = run(config)
    assert summary.success and summary.num_skipped == 1 and len(summary.windows) == 3


def test_a_stop_asked_for_before_the_windows_start_runs_none(tmp_path):
    control = RunControl()
    control.stop("interrupted")
    out = tmp_path / "out"
    with pytest.raises(RunStopped):
        run(PipelineConfig(input_dir=IMAGES, output_dir=out, reconstructor="colmap",
                           max_frames=12, show_progress=False), control)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert window_dirs(out) == []


@pytest.mark.parametrize("order", [("cancelled", "interrupted"), ("interrupted", "cancelled")])
def test_a_cancel_asked_for_is_not_turned_into_an_interruption(order):
    """The service stopping while a cancel is pending records the run cancelled, whichever
    came first."""
    control = RunControl()
    for status in order:
        control.stop(status)
    with pytest.raises(RunStopped) as stopped:
        control.check()
    assert stopped.value.status == "cancelled"
