"""The command line as the service's client (``--backend URL``): the same summary and exit
status as a local run, paths sent absolute, Ctrl-C cancels the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import IMAGES, ROOT
from tests.service.test_api import vggt_service

SCRIPT = str(ROOT / "vae_data_pipeline_batch.py")


def _client(*args, cwd, env=None, **kwargs):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})}, **kwargs)


def test_a_run_sent_with_backend_ends_as_a_local_run_does(tmp_path, colmap_job):
    served, root = colmap_job.served, colmap_job.root
    sent = _client("--backend", served.url, "--input-dir", str(IMAGES), "--output-dir",
                   "served", "--max-frames", "12", "--merge", "-q", cwd=root)
    assert sent.returncode == 0, sent.stderr
    line = sent.stdout.strip().splitlines()[0]  # the shared job's windows, found complete
    assert line.startswith("2 windows: 2 ok, 0 failed (2 already complete) | 12 frames")
    assert line.endswith(f"| merged: 1 segment(s) | output: {root / 'served'}")  # made absolute

    outside = _client("--backend", served.url, "--input-dir", "/etc", "--output-dir", "out",
                      cwd=tmp_path)
    assert outside.returncode == 2
    assert outside.stderr.strip().splitlines()[-1].startswith("error: --input-dir /etc is "
                                                              "outside the folders")
    bad = _client("--backend", served.url, "--input-dir", str(IMAGES), "--output-dir", "out",
                  "--window-stride", "9", cwd=tmp_path)
    assert bad.returncode == 2 and "window" in bad.stderr.splitlines()[-1]
    nobody = _client("--backend", "http://127.0.0.1:9", "--input-dir", str(IMAGES),
                     "--output-dir", "out", cwd=tmp_path)
    assert nobody.returncode == 2 and "cannot reach the service" in nobody.stderr


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python installs its KeyboardInterrupt


def test_ctrl_c_cancels_the_job_and_a_token_is_needed(tmp_path, serve, tiny_vggt_checkpoint):
    served = serve(*vggt_service(tmp_path, tiny_vggt_checkpoint), token="t0ken")
    args = ("--backend", served.url, "--input-dir", str(IMAGES), "--output-dir", "long",
            "--max-frames", "12", "--window-stride", "2", "--window-batch-size", "1",
            "--cpu-workers", "0")
    refused = _client(*args, cwd=tmp_path)
    assert refused.returncode == 2 and "(HTTP 401)" in refused.stderr

    # Ctrl-C at a terminal: SIGINT must not be ignored in the client, as it is when the tests
    # themselves were started in the background of a non-interactive shell (`cmd &`)
    client = subprocess.Popen([sys.executable, SCRIPT, *args, "-q"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WINDOW_RECON_TOKEN": "t0ken"},
                              preexec_fn=_interruptible)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        jobs = served.request("GET", "/jobs")[1]["jobs"]
        if jobs and jobs[0]["done"] >= 1:
            break
        time.sleep(0.2)
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=120)
    assert client.returncode == 130, err
    assert "cancelled; submit the same command again" in err
    job = served.job(jobs[0]["id"])
    assert job["state"] == "cancelled" and job["done"] < 5
