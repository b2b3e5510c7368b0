"""Benchmark: time and peak memory of one full-size VGGT-1B forward vs frame count.

Compares the lean aggregator (keeps only the layers the heads read: 4, 11, 17, 23) with keeping
all 24 layers (the reference behaviour). Weights are generated (the golden weight rule on CPU,
random normal on GPU): speed and memory do not depend on their values.

* CPU (default): float32; each measurement runs in a fresh subprocess. After building the model
  the heap is trimmed and the kernel's peak-RSS counter reset (``/proc/self/clear_refs``), so
  ``peak_rss_mib`` (VmHWM) is the peak during the forward; ``rss_before_forward_mib`` is the
  weights alone and ``forward_peak_extra_mib`` the difference.
* GPU (``--device cuda``): compute dtype "auto" (bf16 on Ampere+),
``torch.cuda.max_memory_allocated``,
  timed with synchronisation after one warm-up forward.

Example::

    python benchmarks/bench_vggt.py --frames 2 4 8 --modes lean all --json bench.json
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


def _build(device: str):
    import torch

    from pipeline.algo.models import VGGTConfig, build_model, load_rule_weights_, resolve_dtype

    if device == "cpu":
        model = load_rule_weights_(build_model(VGGTConfig.vggt_1b(), device="meta"))
    else:
        model = build_model(VGGTConfig.vggt_1b(), device="meta").to_empty(device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(0.0, 0.02, generator=gen)
                if p.dim() == 1 and name.endswith((".weight", ".gamma")):
                    p.add_(1.0)
        model.reset_non_persistent_buffers(torch.device(device))
    model.compute_dtype = resolve_dtype("auto" if device != "cpu" else None, device)
    return model.eval()


def worker(args: argparse.Namespace) -> dict:
    """One measurement in this process; returns a result dict."""
    import torch

    torch.manual_seed(0)
    model = _build(args.device)
    images = torch.rand(1, args.frame_count, 3, args.height, args.width, device=args.device)
    queries = torch.rand(1, args.queries, 2, device=args.device) * torch.tensor(
        [args.width - 1, args.height - 1], device=args.device
    )
    opts = dict(keep_all_layers=args.mode == "all")
    run = lambda: model(images, queries if args.queries else None, **opts)
    cuda = args.device.startswith("cuda")
    if not cuda:
        settle_and_reset_peak()
    rss_model = status_mib("VmRSS")
    with torch.inference_mode():
        if cuda:
            run()  # warm-up (kernels, allocator)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    result = dict(
        device=args.device,
        mode=args.mode,
        frames=args.frame_count,
        height=args.height,
        width=args.width,
        queries=args.queries,
        dtype=str(model.compute_dtype).replace("torch.", ""),
        seconds=round(seconds, 2),
        threads=torch.get_num_threads(),
    )
    if cuda:
        result.update(
            gpu=torch.cuda.get_device_name(),
            peak_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20),
        )
    else:
        peak = status_mib("VmHWM")
        result.update(
            rss_before_forward_mib=round(rss_model),
            peak_rss_mib=round(peak),
            forward_peak_extra_mib=round(peak - rss_model),
            lifetime_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        )
    return result


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument(
        "--frames", type=int, nargs="+", default=[2, 4, 8], help="frame counts to measure"
    )
    p.add_argument("--modes", nargs="+", default=["lean", "all"], choices=["lean", "all"])
    p.add_argument("--height", type=int, default=392)
    p.add_argument("--width", type=int, default=518)
    p.add_argument("--queries", type=int, default=0, help="track queries (0: no track head)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--frame-count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.worker:
        sys.stdout.write(json.dumps(worker(args)) + "\n")
        return 0
    results = []
    for frames in args.frames:
        for mode in args.modes:
            result = run_worker(
                __file__,
                [
                    "--device",
                    args.device,
                    "--frame-count",
                    str(frames),
                    "--mode",
                    mode,
                    "--height",
                    str(args.height),
                    "--width",
                    str(args.width),
                    "--queries",
                    str(args.queries),
                ],
            )
            if result is not None:
                results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
