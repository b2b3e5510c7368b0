"""``--engine ray`` on a local Ray (2 CPUs): the same windows as the local engine, a worker
killed in the middle of a window costs nothing, and a clear error without Ray."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from conftest import IMAGES
from pipeline.core.errors import InputError
from pipeline.infra.files import remove_tree
from pipeline.io.output import iter_windows, read_window_info, read_window_poses
from pipeline.runner import run
from pipeline.runner.config import PipelineConfig


def both_engines(tmp_path, **options):
    """The same run with the local engine, then with Ray; their output folders."""
    outs = []
    for engine in ("local", "ray"):
        out = tmp_path / engine
        summary = run(PipelineConfig(input_dir=IMAGES, output_dir=out, max_frames=12,
                                     window_size=4, window_stride=4, show_progress=False,
                                     engine=engine, cpu_workers=2, **options))
        assert summary.success, summary.line()
        outs.append(out)
    return outs


def assert_same_windows(local, ray, atol):
    windows = list(iter_windows(local))
    assert len(windows) == 3
    for window in windows:
        a, b = read_window_info(local / window.path), read_window_info(ray / window.path)
        assert (a["status"], a["registered_frames"]) == (b["status"], b["registered_frames"])
        assert a["signature"] == b["signature"]
        poses = read_window_poses(ray / window.path)
        for name, pose in read_window_poses(local / window.path).items():
            np.testing.assert_allclose(poses[name], pose, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("chunk_frames", [0, 100], ids=["windows-alone", "chunks"])
def test_ray_classical_run_survives_a_killed_worker(tmp_path, monkeypatch, chunk_frames):
    """The first Ray task kills its worker. Windows alone: that window's task, which Ray runs
    again. Chunks: the feature store and the chunks work in this machine's temporary folder,
    so they run in the driver's own workers (a Ray task may be on another machine): no Ray
    task runs, none is killed. Either way the windows are the local engine's."""
    pytest.importorskip("ray")
    from pipeline.runner.ray_engine import KILL_HOOK

    marker = tmp_path / "killed-once"
    monkeypatch.setenv(KILL_HOOK, str(marker))
    local, ray = both_engines(tmp_path, reconstructor="colmap", chunk_frames=chunk_frames)
    assert marker.exists() == (chunk_frames == 0)  # a worker died, Ray ran it again
    assert not list(Path(tempfile.gettempdir()).glob(f"wr-ray-{os.getpid()}-*"))  # removed
    # mapping runs on one thread: the window run again in another worker is the same
    assert_same_windows(local, ray, atol=1e-9)
    assert not list(ray.glob("batch_*/.*partial*"))


@pytest.mark.slow
def test_ray_network_run_equals_local(tmp_path, tiny_vggt_checkpoint):
    """Run from a Ray program (Ray started by the caller), which keeps its Ray afterwards."""
    ray_module = pytest.importorskip("ray")
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                    configure_logging=False)
    try:
        local, ray = both_engines(tmp_path, reconstructor="vggt",
                                  model=str(tiny_vggt_checkpoint), max_query_pts=32,
                                  query_frame_num=2, min_points=0, min_frame_observations=0,
                                  process_res=112)
        assert ray_module.is_initialized()
    finally:
        ray_module.shutdown()
    assert_same_windows(local, ray, atol=1e-6)
    manifest = json.loads((ray / "run.json").read_text())
    assert manifest["reconstructor"]["engine"] == "ray"
    assert manifest["reconstructor"]["device_actors"] == 1


def test_without_ray_the_error_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(InputError, match=r"pip install -e '\.\[ray\]'"):
        run(PipelineConfig(input_dir=IMAGES, output_dir=tmp_path / "o", engine="ray"))
    assert not (tmp_path / "o").exists()


def test_a_ray_address_needs_the_ray_engine(tmp_path):
    with pytest.raises(InputError, match="--ray-address"):
        run(PipelineConfig(input_dir=IMAGES, output_dir=tmp_path / "o", ray_address="auto"))


# ---- a cluster of nodes --------------------------------------------------------------------------

FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
"""A lost node is noticed in about 2 s instead of Ray's 15 s (the tests' time)."""


@contextlib.contextmanager
def local_cluster(head_cpus, worker_cpus):
    """A Ray cluster of a head of ``head_cpus`` CPUs and a worker node per entry of
    ``worker_cpus``, every node on 127.0.0.1 (Ray's own test cluster); the cluster and the
    worker nodes' handles."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    session = Path(tempfile.mkdtemp(prefix="wr-raytest-"))  # short: Ray's socket paths
    # Cluster writes the head's address into Ray's default folder, RAY_TMPDIR/ray, and does not
    # make it (a fresh machine has no /tmp/ray): keep it in the session folder, made here
    (session / "ray").mkdir()
    cluster = None
    with mock.patch.dict(os.environ, {"RAY_TMPDIR": str(session)}):
        try:
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": head_cpus, "node_ip_address": "127.0.0.1",
                "include_dashboard": False, "temp_dir": str(session),
                "_system_config": FAST_HEALTH_CHECKS})
            workers = [cluster.add_node(num_cpus=n, node_ip_address="127.0.0.1")
                       for n in worker_cpus]
            cluster.wait_for_nodes()
            yield cluster, workers
        finally:
            if cluster is not None:
                cluster.shutdown()
            remove_tree(session)
            SESSIONS.append(session)


SESSIONS: list[Path] = []
"""Every test cluster's session folder, removed again when the module ends: a process of a
cluster shut down before may make its session's folder again a while later."""


@pytest.fixture(autouse=True, scope="module")
def remove_sessions_at_the_end():
    yield
    for session in SESSIONS:
        remove_session(session)


def remove_session(session, wait=5.0, settle=1.0):
    """Remove a test cluster's session folder; a Ray process still ending may write into it
    again for a moment after the shutdown, so remove it until it has stayed gone ``settle``
    seconds (at most ``wait`` seconds in all)."""
    import time

    deadline = time.monotonic() + wait
    gone_since = None
    while time.monotonic() < deadline:
        if session.exists():
            remove_tree(session)
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= settle:
            return
        time.sleep(0.1)


@pytest.fixture
def three_nodes():
    """A head and two worker nodes of one CPU each."""
    with local_cluster(1, [1, 1]) as made:
        yield made


COLMAP_RUN = ("--reconstructor", "colmap", "--chunk-frames", "0", "--max-frames", "16",
              "--window-size", "4", "--window-stride", "2")
"""7 windows of colmap, each from its own frames."""


def start_cli(out, address, run=COLMAP_RUN):
    """The pipeline's command on the cluster at ``address``."""
    import subprocess

    from conftest import ROOT

    return subprocess.Popen(
        [sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), "--input-dir", str(IMAGES),
         "--output-dir", str(out), *run, "--engine", "ray", "--ray-address", address, "-q"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_windows(out, count, proc, timeout=240.0):
    import time

    deadline = time.monotonic() + timeout
    while len(list(out.glob("batch_*/window_*/window_info.json"))) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no window finished"
        time.sleep(0.1)


def assert_every_window_once(out, windows=7):
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["summary"]["ok"] == windows and manifest["summary"]["failed"] == 0
    assert sorted(w["window_index"] for w in manifest["windows"]) == list(range(windows))
    assert not [p for p in out.rglob("*") if ".partial-" in p.name or ".trash-" in p.name]


@pytest.mark.slow
def test_a_node_lost_mid_run_costs_no_window_and_a_killed_driver_resumes(tmp_path,
                                                                        three_nodes):
    """On a head and two worker nodes joined at their loopback address (Ray would dial the
    machine's outward address instead), a worker node removed as a crashed host would be, in
    the middle of the run: its tasks run again on the others, every window ends ok once, the
    digest says a node was lost. Then the driver killed with -9 mid-run: the same command
    finishes what is left."""
    import signal

    cluster, workers = three_nodes
    out = tmp_path / "lost"
    proc = start_cli(out, cluster.address)
    wait_for_windows(out, 1, proc)
    cluster.remove_node(workers[1], allow_graceful=False)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert_every_window_once(out)
    assert "ray: 1 node(s) lost during the run" in stdout + stderr
    digest = json.loads((out / "run.json").read_text())["digest"]
    assert [entry["cause"] for entry in digest] == ["ray: 1 node(s) lost during the run"]
    again = tmp_path / "killed"
    proc = start_cli(again, cluster.address)
    wait_for_windows(again, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    resumed = start_cli(again, cluster.address)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    assert_every_window_once(again)


def tiny_vggt_run(checkpoint):
    """7 windows of the tiny generated VGGT, two per batch (every window passes: the random
    network's tracks are not held to the structure bar)."""
    return ("--reconstructor", "vggt", "--model", str(checkpoint), "--max-query-pts", "32",
            "--query-frame-num", "2", "--min-points", "0", "--min-frame-observations", "0",
            "--max-frames", "16", "--window-size", "4", "--window-stride", "2",
            "--window-batch-size", "2", "--process-res", "112")


@pytest.mark.slow
def test_the_device_actors_node_lost_mid_run_costs_no_window(tmp_path, tiny_vggt_checkpoint):
    """The tiny VGGT's device actor on the only worker node (the head has no CPUs, as on real
    clusters), a second node joining mid-run, then the first node removed as a crashed host
    would be: the actor starts again on the second node and its batches are sent again; every
    window ends ok once, with the poses of the local engine; the digest names the lost node and
    the restart."""
    run = tiny_vggt_run(tiny_vggt_checkpoint)
    with local_cluster(0, [2]) as (cluster, workers):
        out = tmp_path / "ray"
        proc = start_cli(out, cluster.address, run)
        wait_for_windows(out, 1, proc)
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        cluster.remove_node(workers[0], allow_graceful=False)
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert_every_window_once(out)
    causes = [entry["cause"] for entry in json.loads((out / "run.json").read_text())["digest"]]
    assert causes == ["ray: 1 node(s) lost during the run",
                      "ray: device actors started again 1 time(s)"]
    assert "device actors started again 1 time(s)" in stdout + stderr
    from pipeline.cli.main import main

    local = tmp_path / "local"
    assert main(["--input-dir", str(IMAGES), "--output-dir", str(local), *run, "-q"]) == 0
    for window in iter_windows(local):
        poses = read_window_poses(out / window.path)
        for name, pose in read_window_poses(local / window.path).items():
            np.testing.assert_allclose(poses[name], pose, atol=1e-6)
