"""Benchmark: what the warm service saves per job, side by side in one run.

The same small job (the tiny generated VGGT on the CPU, the bundled testdata's first 4 frames,
one window) is run ``--repeats`` times as a new command-line process each time (cold: the
interpreter, the imports and the model load every time) and as ``--backend`` jobs sent to one
started service (warm: the client's start and the job only). Then the load of the full-size
VGGT-1B network (generated weights, written once to a temporary folder: about 5 GB) from its
safetensors file is timed: what a warm service saves per job with the real model, beyond the
cold process's start.

    python benchmarks/bench_service.py [--repeats 3] [--skip-full-size]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "testdata" / "synthetic" / "images"
SCRIPT = str(ROOT / "vae_data_pipeline_batch.py")

logger = logging.getLogger("bench_service")

JOB = ("--max-frames", "4", "--window-size", "4", "--window-stride", "4", "--max-query-pts",
       "64", "--query-frame-num", "2", "--min-points", "0", "-q")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def start_service(state: Path, tmp: Path, model: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, SCRIPT, "serve", "--port", "0", "--state-dir",
                             str(state), "--allow-root", str(tmp), "--allow-root", str(IMAGES),
                             "--reconstructor", "vggt", "--model", str(model), "--device",
                             "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            return proc, json.loads((state / "service.json").read_text())["url"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not start")


def cold_and_warm(tmp: Path, repeats: int) -> dict[str, list[float]]:
    from pipeline.algo.models import VGGTConfig
    from pipeline.algo.models.generated_checkpoint import write_generated_checkpoint

    model = tmp / "tiny_vggt"
    write_generated_checkpoint(model, VGGTConfig.tiny())
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    service, url = start_service(tmp / "state", tmp, model)
    try:
        for i in range(repeats):  # interleaved, so that the machine's noise hits both alike
            times["cold"].append(timed([
                sys.executable, SCRIPT, "--input-dir", str(IMAGES), "--output-dir",
                str(tmp / f"cold{i}"), "--reconstructor", "vggt", "--model", str(model),
                "--device", "cpu", *JOB]))
            times["warm"].append(timed([
                sys.executable, SCRIPT, "--backend", url, "--input-dir", str(IMAGES),
                "--output-dir", str(tmp / f"warm{i}"), *JOB]))
            logger.info("run %d: cold %.2f s, warm %.2f s", i + 1, times["cold"][-1],
                        times["warm"][-1])
    finally:
        service.terminate()
        service.wait(60)
    return times


def full_size_load(tmp: Path) -> dict[str, float]:
    """Seconds to write, then to load, VGGT-1B with generated weights (CPU, float32)."""
    from pipeline.algo.models import VGGTConfig, load_model
    from pipeline.algo.models.generated_checkpoint import write_generated_checkpoint

    folder = tmp / "vggt_1b"
    start = time.perf_counter()
    path = write_generated_checkpoint(folder, VGGTConfig())
    written = time.perf_counter() - start
    start = time.perf_counter()
    model = load_model(folder, device="cpu")
    loaded = time.perf_counter() - start
    size = Path(path).stat().st_size / 2**30
    del model
    return {"write_s": written, "load_s": loaded, "gib": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-full-size", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        times = cold_and_warm(Path(tmp), args.repeats)
        cold, warm = statistics.median(times["cold"]), statistics.median(times["warm"])
        print("| job (tiny VGGT, 1 window) | median s | runs |")
        print("| --- | --- | --- |")
        print(f"| new process each time (cold) | {cold:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in times['cold'])} |")
        print(f"| `--backend` to a started service (warm) | {warm:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in times['warm'])} |")
        print(f"| cold / warm | {cold / warm:.2f}x | |")
        if not args.skip_full_size:
            full = full_size_load(Path(tmp))
            print(f"\nVGGT-1B (generated weights, {full['gib']:.2f} GiB safetensors): written in "
                  f"{full['write_s']:.1f} s, loaded on the CPU in {full['load_s']:.1f} s "
                  "(saved per job by a warm service)")


if __name__ == "__main__":
    main()
