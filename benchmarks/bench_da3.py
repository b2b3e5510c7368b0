"""Benchmark: time and peak memory of one Depth Anything 3 forward vs frame count, with and
without frame batching in the backbone.

Weights are generated (the golden weight rule): speed and memory do not depend on their values.
Each measurement runs in a fresh subprocess (CPU: float32, peak RSS during the forward, as in
``bench_vggt.py``; GPU: autocast "auto", ``torch.cuda.max_memory_allocated``). ``--deviation``
also reports, per frame-batch size, how far the depth moves from the full model's (max relative
difference, same generated weights): the price of the approximation for these weights, not a
measure of quality on real images.

Example::

    python benchmarks/bench_da3.py --variant da3-base --frames 4 8 16 --frame-batch 0 4
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

from _measure import run_worker, settle_and_reset_peak, status_mib

logger = logging.getLogger(__name__)


def _build(variant: str, device: str):
    from pipeline.algo.models import DA3Config, build_da3, load_rule_weights_, resolve_dtype

    model = load_rule_weights_(build_da3(DA3Config.variant(variant), device="meta"), device)
    model.compute_dtype = resolve_dtype("auto", device)
    return model.eval()


def _forward(model, images, frame_batch: int):
    from pipeline.algo.models import DA3ForwardOptions

    return model(images, options=DA3ForwardOptions(frame_batch_size=frame_batch or None))


def worker(args: argparse.Namespace) -> dict:
    """One measurement in this process."""
    import torch

    torch.manual_seed(0)
    model = _build(args.variant, args.device)
    images = torch.rand(1, args.frame_count, 3, args.height, args.width, device=args.device)
    cuda = args.device.startswith("cuda")
    if not cuda:
        settle_and_reset_peak()
    rss_model = status_mib("VmRSS")
    with torch.inference_mode():
        if cuda:
            _forward(model, images, args.frame_batch_size)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = _forward(model, images, args.frame_batch_size)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    result = dict(variant=args.variant, device=args.device, frames=args.frame_count,
                  frame_batch_size=args.frame_batch_size or None, height=args.height,
                  width=args.width, seconds=round(seconds, 2), threads=torch.get_num_threads(),
                  dtype=str(model.compute_dtype).replace("torch.", ""))
    if cuda:
        result["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    else:
        peak = status_mib("VmHWM")
        result.update(rss_before_forward_mib=round(rss_model), peak_rss_mib=round(peak),
                      forward_peak_extra_mib=round(peak - rss_model),
                      lifetime_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF)
                                                  .ru_maxrss / 1024))
    if args.deviation and args.frame_batch_size:
        with torch.inference_mode():
            full = _forward(model, images, 0)["depth"]
        rel = (out["depth"] - full).abs() / full.abs().clamp_min(1e-6)
        result["depth_max_rel_diff_vs_full"] = float(rel.max())
    return result


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="da3-base", help="da3-small, da3-base, da3-large, ...")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--frames", type=int, nargs="+", default=[4, 8])
    p.add_argument("--frame-batch", type=int, nargs="+", default=[0, 4],
                   help="frame_batch_size values to measure (0: the full model)")
    p.add_argument("--height", type=int, default=378)
    p.add_argument("--width", type=int, default=504)
    p.add_argument("--deviation", action="store_true",
                   help="also compare the frame-batched depth with the full model's")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--frame-count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--frame-batch-size", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.worker:
        sys.stdout.write(json.dumps(worker(args)) + "\n")
        return 0
    results = []
    for frames in args.frames:
        for group in args.frame_batch:
            if group and group >= frames:
                continue
            extra = ["--deviation"] if args.deviation else []
            result = run_worker(__file__, ["--variant", args.variant, "--device", args.device,
                                           "--frame-count", str(frames), "--frame-batch-size",
                                           str(group), "--height", str(args.height),
                                           "--width", str(args.width), *extra])
            if result is not None:
                results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
