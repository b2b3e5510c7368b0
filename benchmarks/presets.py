"""Presets from a measured memory model: the resolution and batch size each memory size gets.

The model is the one the memory governor measures during a run (``run.json`` -> ``memory``:
``held_mb``, ``per_window_mb`` at ``process_res``) or numbers given on the command line. For
each memory size the table applies the governor's own rules (:mod:`pipeline.infra.memory`): the
highest resolution of out-of-memory recovery's steps (``lower_resolutions``) at which one window
fits within the headroom, then
as many windows as fit. A window's cost is scaled with its number of image patches (the
frames' aspect ratio is kept, as the crop preprocessing does).

    python benchmarks/presets.py --run OUT/run.json
    python benchmarks/presets.py --held-mb 5045 --per-window-mb 2554 --res 518 --label "CPU fp32"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.algo.preprocess import PreprocessOptions, _resized_size  # noqa: E402
from pipeline.infra.memory import BatchObservation, MemoryGovernor, lower_resolutions  # noqa: E402

MEMORY_SIZES_GB = (6, 8, 12, 16, 24, 40, 48, 80)


def patches(res: int, frame_hw: tuple[int, int]) -> int:
    """Patches of one frame on VGGT's crop grid of width ``res``."""
    h, w = _resized_size(*frame_hw, PreprocessOptions(mode="crop", target_size=res))
    return min(h, res) // 14 * (w // 14)


def preset(
    memory_gb: float, held_mb: float, per_window_mb: float, res: int, frame_hw: tuple[int, int]
) -> tuple[int | None, int]:
    """(resolution, windows per batch) for ``memory_gb``; resolution None when nothing fits."""
    for r in [res, *lower_resolutions(res)]:
        cost = per_window_mb * patches(r, frame_hw) / patches(res, frame_hw)
        governor = MemoryGovernor(budget_mb=memory_gb * 1024)
        governor.observe(
            BatchObservation(windows=1, held_mb=held_mb, peak_mb=held_mb + cost, process_res=r)
        )
        if held_mb + cost <= governor.budget_mb * governor.headroom:
            return r, governor.windows_per_batch()
    return None, 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a run.json whose memory model to use")
    p.add_argument("--held-mb", type=float, help="memory held before a forward (weights...)")
    p.add_argument("--per-window-mb", type=float, help="what one window adds at --res")
    p.add_argument("--res", type=int, default=518, help="resolution of --per-window-mb")
    p.add_argument("--frame-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--label", default="", help="where the model was measured, for the title")
    args = p.parse_args()
    if args.run is not None:
        memory = json.loads(args.run.read_text())["memory"]
        held, per_window = memory["held_mb"], memory["per_window_mb"]
        res = memory["observations"][-1]["process_res"]
    else:
        held, per_window, res = args.held_mb, args.per_window_mb, args.res
    print(
        f"model: held {held:.0f} MiB + {per_window:.0f} MiB per window at {res} px "
        f"{args.label}".rstrip()
    )
    print("| memory | resolution | windows per batch |")
    print("|---|---|---|")
    for gb in MEMORY_SIZES_GB:
        r, windows = preset(gb, held, per_window, res, tuple(args.frame_size))
        cells = (f"{r} px", str(windows)) if r else ("does not fit: --cpu-offload", "-")
        print(f"| {gb} GB | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
