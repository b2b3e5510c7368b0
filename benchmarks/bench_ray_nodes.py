"""Benchmark: windows/s of ``--engine ray`` on 1, 2 and 3 local nodes against the local engine,
and the cost of a node lost mid-run, side by side in one run.

Every cluster is Ray's own test cluster (``ray.cluster_utils.Cluster``) on 127.0.0.1, nodes of
one CPU each; the run is the classical path with each window alone (``--chunk-frames 0``) over
the bundled testdata (24 frames, windows of 4, stride 2: 11 windows), a fresh output folder
each time. The local engine runs with as many workers as the cluster has nodes.

``--device-actor``: the cost of losing the node of a network's device actor instead. The tiny
generated VGGT (16 frames: 7 windows, 2 per batch) on a head of no CPUs and one worker node of
2 CPUs; a second such node joins once the first window is written; then either nothing more
happens (intact) or the first node is removed (lost: the actor starts again on the second,
loading the model again, and its batches are sent again).

    python benchmarks/bench_ray_nodes.py [--repeats 2] [--device-actor]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "testdata" / "synthetic" / "images"

logger = logging.getLogger("bench_ray_nodes")


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), "--input-dir",
            str(IMAGES), "--output-dir", str(out), "--reconstructor", "colmap",
            "--chunk-frames", "0", "--window-size", "4", "--window-stride", "2", "-q", *extra]


def timed(cmd: list[str], out: Path, lose_node: Callable[[], object] | None = None) -> float:
    """Wall seconds of ``cmd``; with ``lose_node``, called once the first window is written."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    if lose_node is not None:
        while not list(out.glob("batch_*/window_*/window_info.json")) and proc.poll() is None:
            time.sleep(0.05)
        lose_node()
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-500:]}")
    return time.perf_counter() - start


def on_cluster(nodes: int, out: Path, *, lose: bool = False) -> float:
    from ray.cluster_utils import Cluster

    session = Path(tempfile.mkdtemp(prefix="wr-raybench-"))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "temp_dir": str(session)})
    workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
               for _ in range(nodes - 1)]
    cluster.wait_for_nodes()
    try:
        lose_node = (lambda: cluster.remove_node(workers[-1], allow_graceful=False)) if lose \
            else None
        return timed(command(out, "--engine", "ray", "--ray-address", cluster.address), out,
                     lose_node)
    finally:
        cluster.shutdown()
        shutil.rmtree(session, ignore_errors=True)


def vggt_command(out: Path, checkpoint: Path, address: str) -> list[str]:
    return [sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), "--input-dir",
            str(IMAGES), "--output-dir", str(out), "--reconstructor", "vggt", "--model",
            str(checkpoint), "--max-query-pts", "32", "--query-frame-num", "2", "--min-points",
            "0", "--min-frame-observations", "0", "--max-frames", "16", "--window-size", "4",
            "--window-stride", "2", "--window-batch-size", "2", "--engine", "ray",
            "--ray-address", address, "-q"]


def device_actor_run(out: Path, checkpoint: Path, *, lose: bool) -> float:
    """Wall seconds of the tiny VGGT's run on a head of no CPUs and one node, a second node
    joining after the first window, the first node removed then when ``lose``."""
    from ray.cluster_utils import Cluster

    session = Path(tempfile.mkdtemp(prefix="wr-raybench-"))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "temp_dir": str(session)})
    first = cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()

    def join_then_lose() -> None:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        if lose:
            cluster.remove_node(first, allow_graceful=False)

    try:
        return timed(vggt_command(out, checkpoint, cluster.address), out, join_then_lose)
    finally:
        cluster.shutdown()
        shutil.rmtree(session, ignore_errors=True)


def device_actor_table(repeats: int) -> None:
    sys.path.insert(0, str(ROOT))
    from pipeline.algo.models import VGGTConfig
    from pipeline.algo.models.generated_checkpoint import write_generated_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, out = Path(tmp) / "tiny_vggt", Path(tmp) / "out"
        checkpoint.mkdir()
        write_generated_checkpoint(checkpoint, VGGTConfig.tiny())
        for _ in range(repeats):
            intact = device_actor_run(out, checkpoint, lose=False)
            lost = device_actor_run(out, checkpoint, lose=True)
            rows.append((intact, lost))
            logger.info("intact %.1f s, actor's node lost %.1f s", intact, lost)
    print("| run | intact s | device actor's node lost s | cost |")
    print("|---|---|---|---|")
    for i, (intact, lost) in enumerate(rows):
        print(f"| {i + 1} | {intact:.1f} | {lost:.1f} | +{lost - intact:.1f} s |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device-actor", action="store_true",
                   help="measure the loss of a device actor's node (tiny VGGT) instead")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.device_actor:
        device_actor_table(args.repeats)
        return 0
    windows = 11
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        for _ in range(args.repeats):
            for nodes in (1, 2, 3):
                local = timed(command(out, "--cpu-workers", str(nodes)), out)
                ray = on_cluster(nodes, out)
                rows.append((f"{nodes} node(s)", local, ray))
                logger.info("%d: local %.1f s, ray %.1f s", nodes, local, ray)
            lost = on_cluster(3, out, lose=True)
            rows.append(("3 nodes, one lost after the first window", None, lost))
            logger.info("lost: %.1f s", lost)
    print("| cluster | local engine s | windows/s | ray s | windows/s |")
    print("|---|---|---|---|---|")
    for name, local, ray in rows:
        loc = f"{local:.1f} | {windows / local:.2f}" if local else "- | -"
        print(f"| {name} | {loc} | {ray:.1f} | {windows / ray:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
