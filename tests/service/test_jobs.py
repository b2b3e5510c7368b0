"""The service's jobs, in process: paths checked again when a job starts, frames that link
outside the allowed roots refused, one worker per device however it is named, null options."""

from __future__ import annotations

import shutil
import time

import pytest

from conftest import IMAGES
from pipeline.cli.serve import job_defaults, job_parser, serve_parser
from pipeline.core.errors import InputError
from pipeline.io.job_table import FAILED, FINAL
from pipeline.runner.control import RunControl
from pipeline.service.jobs import Service
from pipeline.service.options import ServiceOptions
from pipeline.service.roots import ForbiddenPathError
from pipeline.service.worker import device_key

JOB = {"reconstructor": "colmap", "max_frames": 8, "window_size": 8, "window_stride": 8,
       "cpu_workers": 0}


@pytest.fixture
def service(tmp_path):
    """A service over ``tmp_path/data`` (in this process: a submitted job runs in its
    worker thread) with ``data/seq`` holding the bundled frames."""
    data = tmp_path / "data"
    shutil.copytree(IMAGES, data / "seq")
    made = Service(ServiceOptions(allow_roots=(data,), state_dir=tmp_path / "state"),
                   job_parser(job_defaults(serve_parser().parse_args([]))))
    yield made, data
    made.close()


def _wait(service: Service, job_id: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.get(job_id)
        if job.state in FINAL:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {service.get(job_id)}")


def test_paths_are_checked_again_when_a_job_starts(service, tmp_path):
    """A folder swapped for a link out of the roots after the job was queued is refused."""
    svc, data = service
    options = svc.parse_job({"input_dir": str(data / "seq"), "output_dir": str(data / "out"),
                             **JOB})[1]
    assert svc.make_config(options).output_dir == data / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    (data / "out").symlink_to(outside)
    with pytest.raises(ForbiddenPathError, match="outside the folders"):
        svc.make_config(options)


def test_frames_that_link_outside_the_roots_are_refused(service, tmp_path):
    svc, data = service
    outside = tmp_path / "outside"
    shutil.copytree(IMAGES, outside)
    (data / "links").mkdir()
    for frame in sorted(outside.iterdir())[:8]:
        (data / "links" / frame.name).symlink_to(frame)
    job = svc.submit({"input_dir": str(data / "links"), "output_dir": str(data / "out"), **JOB})
    ended = _wait(svc, job.id)
    assert ended.state == FAILED and ended.exit_code == 2
    assert "lies outside the folders this service may use" in ended.error
    assert not list((data / "out").glob("batch_*"))  # refused before any window was made


def test_frames_inside_the_roots_pass_the_check(service):
    svc, data = service
    frames = [type("F", (), {"path": p})() for p in sorted((data / "seq").iterdir())]
    svc.check_frames(frames)  # no exception
    control = RunControl(check_frames=svc.check_frames)
    control.frames(frames)


def test_one_worker_per_device_however_it_is_named():
    """``cpu`` and ``cpu:0`` are one CPU: one worker, one job at a time."""
    assert device_key("cpu") == device_key("cpu:0") == "cpu"


@pytest.mark.parametrize("field", ["window_size", "min_points", "reconstructor", "device",
                                   "model", "frame_step"])
def test_null_is_refused_where_an_option_has_a_default(service, field):
    svc, data = service
    with pytest.raises(InputError, match="null is not a value it takes"):
        svc.parse_job({"input_dir": str(data / "seq"), "output_dir": str(data / "o"),
                       field: None})


def test_null_is_the_default_where_the_default_is_none(service):
    svc, data = service
    config, options = svc.parse_job({"input_dir": str(data / "seq"),
                                     "output_dir": str(data / "o"), "max_frames": None})
    assert config.max_frames is None and options["max_frames"] is None
