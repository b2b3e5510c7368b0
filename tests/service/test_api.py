"""The service's HTTP API on a real server: a job gives the windows the command line gives,
the warm model is loaded once, jobs survive a restart, cancel stops at a window boundary, and
bad requests are refused with the right status."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np

from conftest import IMAGES, ROOT
from pipeline.io.job_table import JobStore
from pipeline.io.output import read_window_poses
from tests.helpers import window_dirs

COLMAP_JOB = {"reconstructor": "colmap", "max_frames": 12}
LONG_WINDOWS = 5
"""Windows of the long job: 12 frames, windows of 4, stride 2."""


def vggt_service(tmp_path, checkpoint):
    """``serve`` flags: the tiny generated VGGT on the CPU, with small windows and few tracks
    as the jobs' defaults (no structure checks: what random weights make of the frames is not
    structure, and changes with pycolmap's release)."""
    return ("--allow-root", str(tmp_path), "--allow-root", str(IMAGES), "--allow-root",
            str(checkpoint), "--reconstructor", "vggt", "--model", str(checkpoint), "--device",
            "cpu", "--window-size", "4", "--window-stride", "4", "--max-query-pts", "64",
            "--query-frame-num", "2", "--min-points", "0", "--min-frame-observations", "0",
            "--process-res", "112")  # the tiny network's own size: 518 costs 5x the time


def _records(out):
    keep = ("path", "status", "num_frames", "num_registered", "num_points3D",
            "mean_reprojection_error")
    return [{k: w[k] for k in keep} for w in json.loads((out / "run.json").read_text())["windows"]]


def test_a_job_gives_the_windows_the_command_line_gives(colmap_job, merged_colmap_output):
    served, job_id, events = colmap_job.served, colmap_job.job_id, colmap_job.events
    assert events[-1][0] == "end" and events[-1][1]["state"] == "finished"
    progress = [data for event, data in events if event == "progress"]
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    assert progress[-1]["done"] == progress[-1]["total"] == 2

    # the same options as the command line ran them (conftest.MERGED_RUN)
    served_out, local_out = colmap_job.root / "served", merged_colmap_output
    assert _records(served_out) == _records(local_out)
    for a, b in zip(window_dirs(served_out), window_dirs(local_out)):
        pa, pb = read_window_poses(a), read_window_poses(b)
        assert pa.keys() == pb.keys()
        for name in pa:
            np.testing.assert_allclose(pa[name], pb[name], atol=1e-9)

    job = served.job(job_id)
    assert job["exit_code"] == 0 and job["attempts"] == 1 and job["done"] == 2
    assert job["result"]["line"].startswith("2 windows: 2 ok, 0 failed")
    assert job["result"]["digest"] == [] and job["result"]["peak_memory_mb"] > 0
    assert job["result"]["merge"] == {"segments": 1}
    status, listed = served.request("GET", "/jobs")
    assert status == 200 and job_id in [j["id"] for j in listed["jobs"]]

    # what the page reads
    status, windows = served.request("GET", f"/jobs/{job_id}/windows")
    assert [w["path"] for w in windows["windows"]] == ["batch_000/window_000",
                                                      "batch_000/window_001"]
    assert windows["merges"][0]["picture"] == "merged/trajectory.png"
    status, scene = served.request("GET", f"/jobs/{job_id}/scene/batch_000/window_000")
    assert status == 200 and len(scene["cameras"]) == 8
    assert len(scene["points"]) == 3 * min(scene["num_points"], 60_000) > 0
    assert len(scene["colors"]) == len(scene["points"])
    status, details = served.request("GET", f"/jobs/{job_id}/window/batch_000/window_000")
    assert status == 200 and len(details["images"]) == 8
    name = details["images"][0]
    status, jpeg = served.request("GET",
                                  f"/jobs/{job_id}/thumb/batch_000/window_000/images/{name}")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    for bad in ("../../etc/passwd", "batch_000/../../x", "%2e%2e/%2e%2e/etc/passwd",
                "batch_000/window_000/images/../../../../etc/passwd"):
        assert served.request("GET", f"/jobs/{job_id}/file/{bad}")[0] == 404, bad
    assert served.request("GET", f"/jobs/{job_id}/thumb/batch_000/images/x.png")[0] == 404
    assert served.request("GET", f"/jobs/{job_id}/file/run.json")[0] == 200
    status, page = served.request("GET", "/")
    assert status == 200 and b"/static/app.js" in page
    assert served.request("GET", "/static/vendor/three.module.min.js")[0] == 200


def test_two_jobs_with_the_tiny_vggt_load_it_once(tmp_path, serve, tiny_vggt_checkpoint):
    other = tmp_path / "other_vggt"
    shutil.copytree(tiny_vggt_checkpoint, other)
    served = serve(*vggt_service(tmp_path, tiny_vggt_checkpoint), "--unload-after", "3")
    jobs = [served.submit(input_dir=str(IMAGES), output_dir=str(tmp_path / f"out{i}"),
                          max_frames=4) for i in range(2)]
    for job_id in jobs:
        job = served.wait(job_id)
        assert job["state"] == "finished" and job["exit_code"] == 0, job
    status = served.request("GET", "/status")[1]
    assert status["model_loads"] == 1 and status["queue"] == 0
    assert status["model"]["checkpoint"]["name"] == str(tiny_vggt_checkpoint)
    assert status["device"] == "cpu"
    manifest = json.loads((tmp_path / "out1" / "run.json").read_text())
    assert "load" not in manifest["profile"], "the second job did not load the model"

    third = served.submit(input_dir=str(IMAGES), output_dir=str(tmp_path / "out2"),
                          max_frames=4, model=str(other))
    assert served.wait(third)["state"] == "finished"
    status = served.request("GET", "/status")[1]
    assert status["model_loads"] == 2 and status["model"]["checkpoint"]["name"] == str(other)
    deadline = time.monotonic() + 30  # idle for --unload-after 3: unloaded
    while served.request("GET", "/status")[1]["model"] is not None:
        assert time.monotonic() < deadline, "the idle model was not unloaded"
        time.sleep(0.2)


def _long_vggt_job(served, tmp_path, name):
    return served.submit(input_dir=str(IMAGES), output_dir=str(tmp_path / name),
                         max_frames=12, window_stride=2, window_batch_size=1, cpu_workers=0)


def test_a_restart_resumes_the_running_job_and_runs_the_queued_one(tmp_path, serve,
                                                                    tiny_vggt_checkpoint):
    args = vggt_service(tmp_path, tiny_vggt_checkpoint)
    served = serve(*args)
    running = _long_vggt_job(served, tmp_path, "a")
    queued = served.submit(input_dir=str(IMAGES), output_dir=str(tmp_path / "b"),
                           max_frames=4)
    served.wait(running, until=lambda job: job["done"] >= 2)
    served.kill()  # kill -9: no chance to record anything
    assert served.process.returncode == -signal.SIGKILL

    again = serve(*args)
    first, second = again.wait(running), again.wait(queued)
    assert first["state"] == second["state"] == "finished"
    assert first["attempts"] == 2 and second["attempts"] == 1
    windows = first["result"]["windows"]
    assert windows["total"] == windows["ok"] == LONG_WINDOWS and windows["skipped"] >= 2
    index = [w["path"] for w in json.loads((tmp_path / "a" / "run.json").read_text())["windows"]]
    assert len(index) == len(set(index)) == LONG_WINDOWS
    assert not list((tmp_path / "a").rglob(".partial-*"))

    # a clean stop (SIGTERM) records the running job interrupted (queued again at the next
    # start, as the killed one was)
    third = _long_vggt_job(again, tmp_path, "c")
    again.wait(third, until=lambda job: job["done"] >= 1)
    assert again.stop() == 0
    assert json.loads((tmp_path / "c" / "run.json").read_text())["status"] == "interrupted"
    store = JobStore(again.state)
    assert store.get(third).state == "interrupted" and store.get(third).exit_code == 130
    assert store.requeue_unfinished() == ([third], [])
    store.close()


def test_cancel_stops_a_running_job_at_a_window_boundary(tmp_path, serve, tiny_vggt_checkpoint):
    served = serve(*vggt_service(tmp_path, tiny_vggt_checkpoint))
    running = _long_vggt_job(served, tmp_path, "a")
    queued = served.submit(input_dir=str(IMAGES), output_dir=str(tmp_path / "b"))
    status, job = served.request("POST", f"/jobs/{queued}/cancel")
    assert status == 200 and job["state"] == "cancelled"
    served.wait(running, until=lambda job: job["done"] >= 1)
    assert served.request("POST", f"/jobs/{running}/cancel")[0] == 200
    job = served.wait(running)
    assert job["state"] == "cancelled" and job["exit_code"] == 130
    manifest = json.loads((tmp_path / "a" / "run.json").read_text())
    assert manifest["status"] == "cancelled" and 1 <= len(manifest["windows"]) < LONG_WINDOWS
    assert len(window_dirs(tmp_path / "a")) == len(manifest["windows"])
    assert not list((tmp_path / "a").rglob(".partial-*"))
    assert not (tmp_path / "b").exists()
    assert served.request("POST", "/jobs/nope/cancel")[0] == 404


def _declared_body(url, length):
    """The status of a ``POST /jobs`` that declares a body of ``length`` bytes and sends
    none."""
    host, port = url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/jobs")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(length))
    connection.putheader("Authorization", "Bearer s3cret")
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def test_bad_requests_are_refused_with_their_status(tmp_path, serve):
    data, data2 = tmp_path / "data", tmp_path / "data2"
    for folder in (data, data2):
        folder.mkdir()
    shutil.copytree(IMAGES, data / "seq")
    (data / "empty").mkdir()
    (data / "link").symlink_to(data2)
    served = serve("--allow-root", str(data), token="s3cret")
    good = {"input_dir": str(data / "seq"), "output_dir": str(data / "out"), **COLMAP_JOB}

    assert served.request("GET", "/healthz", token=None)[0] == 401
    assert served.request("GET", "/jobs", token="wrong")[0] == 401
    assert served.request("GET", "/", token=None)[0] == 401
    assert served.request("POST", "/jobs", good, token=None)[0] == 401
    # a browser signs in once with ?token=: the cookie it gets is the token from then on
    status, _ = served.request("GET", "/?token=wrong", token=None)
    assert status == 401
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(f"{served.url}/?token=s3cret", timeout=30) as response:
        assert response.status == 200 and b"app.js" in response.read()
    with opener.open(f"{served.url}/jobs", timeout=30) as response:
        assert response.status == 200

    forbidden = [{"output_dir": str(data2 / "out")},             # /data2 is not under /data
                 {"output_dir": str(data / ".." / "data2" / "out")},
                 {"output_dir": str(data / "link" / "out")},     # a link out of the root
                 {"input_dir": "/etc"},
                 {"model": str(tmp_path / "weights.safetensors"), "reconstructor": "vggt"},
                 {"output_dir": "relative/out"}]
    for change in forbidden:
        status, body = served.request("POST", "/jobs", {**good, **change})
        assert status == 403, (change, body)
        assert "\n" not in body["detail"]
    bad = [({"window_size": 0}, "--window-size: must be a positive integer"),
           ({"window_size": "eight"}, "--window-size"),
           ({"merge": "yes"}, "--merge: must be true or false"),
           ({"colour": 1}, "unknown run option 'colour'"),
           ({"quiet": True}, "unknown run option 'quiet'"),
           ({"fps": 2}, "--fps applies only to --input-video"),
           ({"reconstructor": "nerf"}, "--reconstructor"),
           ({"input_dir": str(data / "missing")}, "missing"),
           ({"input_dir": str(data / "empty")}, "no images in"),
           ({"window_size": None}, "--window-size: null is not a value it takes"),
           ({"min_points": None}, "--min-points: null is not a value it takes"),
           ({"output_dir": str(data / "o\x00ut")}, "NUL character"),
           ({"use_accelerate": True}, "one service per device")]
    for change, message in bad:
        status, body = served.request("POST", "/jobs", {**good, **change})
        assert status == 422 and message in body["detail"], (change, body)
    assert served.request("POST", "/jobs", raw=b"[1, 2]")[0] == 422
    assert served.request("POST", "/jobs", raw=b"{not json")[0] == 422
    assert served.request("POST", "/jobs", raw=b"[" * 5000 + b"]" * 5000)[0] == 422
    assert served.request("POST", "/jobs", raw=b"{}", headers={
        "Content-Type": "text/plain"})[0] == 415
    assert _declared_body(served.url, 2 << 20) == 413  # refused before it is sent
    assert served.request("GET", "/jobs/nope")[0] == 404
    assert served.request("POST", "/jobs", good, headers={
        "Origin": "http://evil.example"})[0] == 403
    status, body = served.request("POST", "/jobs", good)
    assert status == 201 and served.wait(body["id"])["state"] == "finished"
    for missing in ("window/batch_000/nowhere", "scene/nowhere", "file/%00", "window/%00",
                    "thumb/batch_000/window_000/images/%00"):
        assert served.request("GET", f"/jobs/{body['id']}/{missing}")[0] == 404, missing


def test_a_tokenless_service_answers_only_to_loopback_names_and_binds_only_loopback(
        tmp_path, colmap_job):
    served = colmap_job.served
    assert served.request("GET", "/healthz", headers={"Host": "evil.example:80"})[0] == 403
    assert served.request("GET", "/healthz", headers={"Host": "localhost:1"})[0] == 200
    result = subprocess.run([sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), "serve",
                             "--host", "0.0.0.0", "--state-dir", str(tmp_path / "s2")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --host 0.0.0.0 is not a loopback address")
    result = subprocess.run([sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), "serve",
                             "--state-dir", str(served.state), "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "another service uses it" in result.stderr
