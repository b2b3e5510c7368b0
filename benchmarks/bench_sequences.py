"""Benchmark: many short sequences in one ``--input-root`` run against one run per sequence.

Generates a dataset of short sequences with the testdata generator (``--sequences`` of 12-24
frames, 320x240, each its own texture seed and arc), then, side by side in one run, from
scratch each time:

* one run over the whole dataset (``--input-root``): one model load, batches shared between
  sequences;
* one command-line run per sequence, one after the other (what a shell loop does today).

For each reconstructor asked for (``colmap``; ``vggt`` with a tiny generated network, window
checks off since it is untrained) it prints wall time, windows, windows/s and model loads.
With ``--engines local ray`` the ``--input-root`` run is also timed with ``--engine ray``
(a local Ray on this machine).

    python benchmarks/bench_sequences.py --sequences 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WINDOWS = ["--window-size", "8", "--window-stride", "4", "-q"]
RECONSTRUCTORS = {
    "colmap": ["--reconstructor", "colmap"],
    "vggt": ["--reconstructor", "vggt", "--max-query-pts", "256", "--min-points", "0",
             "--min-frame-observations", "0"],
}


def make_dataset(folder: Path, count: int) -> Path:
    """``count`` sequences of 12-24 frames under ``folder/root`` (made once)."""
    from pipeline.io.synthetic import RenderOptions, SceneOptions, render_sequence, write_sequence

    root = folder / f"root{count}"
    for k in range(count):
        target = root / f"seq_{k:02d}"
        if (target / "images").is_dir():
            continue
        frames = 12 + (k * 7) % 13
        options = RenderOptions(num_frames=frames, arc_degrees=40 + 2 * k,
                                scene=SceneOptions(seed=k))
        write_sequence(render_sequence(options), target)
    return root


def cli(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "vae_data_pipeline_batch.py"), *args],
                   check=False)
    return time.perf_counter() - start


def one_run(root: Path, out: Path, extra: list[str], engine: str) -> dict:
    engine_args = [] if engine == "local" else ["--engine", engine]
    wall = cli(["--input-root", str(root), "--output-dir", str(out), "--overwrite", *WINDOWS,
                *extra, *engine_args])
    dataset = json.loads((out / "dataset.json").read_text())
    lines = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    ok = sum(1 for x in lines if x["status"] == "ok")
    loads = (dataset.get("profile") or {}).get("load", {}).get("calls", 0)
    return {"wall_s": wall, "windows": len(lines), "ok": ok, "model_loads": loads}


def separate_runs(root: Path, out: Path, extra: list[str]) -> dict:
    wall, windows, ok, loads = 0.0, 0, 0, 0
    for sequence in sorted(p for p in root.iterdir() if p.is_dir()):
        target = out / sequence.name
        wall += cli(["--input-dir", str(sequence / "images"), "--output-dir", str(target),
                     "--overwrite", *WINDOWS, *extra])
        manifest = json.loads((target / "run.json").read_text())
        windows += len(manifest["windows"])
        ok += manifest["summary"].get("ok", 0)
        loads += (manifest.get("profile") or {}).get("load", {}).get("calls", 0)
    return {"wall_s": wall, "windows": windows, "ok": ok, "model_loads": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=20)
    parser.add_argument("--reconstructors", nargs="+", choices=sorted(RECONSTRUCTORS),
                        default=list(RECONSTRUCTORS))
    parser.add_argument("--engines", nargs="+", choices=("local", "ray"), default=["local"])
    parser.add_argument("--no-separate", action="store_true",
                        help="skip the one-run-per-sequence runs")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench_sequences"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    root = make_dataset(args.scratch, args.sequences)
    model = args.scratch / "tiny_vggt"
    if "vggt" in args.reconstructors and not (model / "config.json").is_file():
        from pipeline.algo.models import VGGTConfig
        from pipeline.algo.models.generated_checkpoint import write_generated_checkpoint

        write_generated_checkpoint(model, VGGTConfig.tiny())
    results: dict[str, dict] = {}
    for name in args.reconstructors:
        extra = RECONSTRUCTORS[name] + (["--model", str(model)] if name == "vggt" else [])
        runs = {}
        for engine in args.engines:
            runs[f"--input-root ({engine})"] = one_run(root, args.scratch / f"{name}-{engine}",
                                                       extra, engine)
        if not args.no_separate:
            runs["one run per sequence"] = separate_runs(
                root, args.scratch / f"{name}-separate", extra)
        results[name] = runs
    print("| reconstructor | runs | wall s | windows ok | windows/s | model loads |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        for label, r in runs.items():
            print(f"| {name} | {label} | {r['wall_s']:.1f} | {r['ok']}/{r['windows']} | "
                  f"{r['windows'] / r['wall_s']:.3f} | {r['model_loads']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
