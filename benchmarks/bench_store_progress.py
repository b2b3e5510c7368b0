"""What the feature store's progress costs: ``build_store`` on the first 200 frames of 7-Scenes
with one pycolmap call per stage, and in quarters (the default), side by side in one run.

    python benchmarks/bench_store_progress.py

Skips (exit 0) when ``../shared/data/real/7scenes_redkitchen_000_199`` is absent.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

import pipeline.algo.classical_sfm as seq  # noqa: E402
from pipeline.reconstructors.colmap import ColmapOptions  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "real" / "7scenes_redkitchen_000_199"


def store_inputs(count: int = 200) -> tuple[list[tuple[str, str, tuple[int, int]]],
                                            list[tuple[str, str]]]:
    """The first ``count`` 7-Scenes frames as ``build_store`` takes them, and the store's pairs
    (each frame with 10 successors and those 2, 4, 8, ... ahead)."""
    paths = sorted(DATA.glob("*.color.jpg"))[:count]
    frames = [(p.name, str(p), Image.open(p).size) for p in paths]
    pairs = [(frames[i][0], frames[j][0])
             for i, j in sorted(seq.sequential_pairs(range(len(frames)), 10, True))]
    return frames, pairs


def main() -> int:
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    frames, pairs = store_inputs()
    options = replace(ColmapOptions(), num_threads=2)
    print("| slicing | features s | matching s | total s |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, steps in (("quarters (default)", seq.PROGRESS_STEPS),
                             ("one call per stage", 1)):
            seq.PROGRESS_STEPS = steps
            out = Path(tmp) / "store"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            stages = seq.build_store(out, frames, pairs, options)
            print(f"| {label} | {stages['features']['seconds']:.1f} | "
                  f"{stages['matching']['seconds']:.1f} | {time.perf_counter() - start:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
