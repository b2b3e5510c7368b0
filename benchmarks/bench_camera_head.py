"""Benchmark: the full-size VGGT-1B camera head on stacked windows against one window at a time
(:func:`pipeline.algo.models.layers.per_window`, which the model uses so that a window's
cameras do not depend on the other windows of its batch).

Weights are generated (speed does not depend on their values); only the camera tokens are
read, so the tokens are ``[B, S, 5, 2048]``. Best of ``--repeats`` after two warm-up calls.

Example::

    python benchmarks/bench_camera_head.py --windows 4 --frames 8
"""

from __future__ import annotations

import argparse
import time


def _best(call, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import torch

    from pipeline.algo.models import VGGTConfig
    from pipeline.algo.models.camera_head import CameraHead
    from pipeline.algo.models.layers import per_window

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    head_dim = 2 * VGGTConfig().embed_dim
    head = CameraHead(dim_in=head_dim).eval().to(args.device)
    tokens = torch.randn(args.windows, args.frames, 5, head_dim, device=args.device)

    def stacked():
        return head([tokens])[-1]

    def alone():
        return per_window(lambda t: head([t]), tokens)[-1]

    def synced(call):
        def run():
            out = call()
            if tokens.is_cuda:
                torch.cuda.synchronize()
            return out
        return run

    with torch.inference_mode():
        for _ in range(2):
            stacked(), alone()
        a, b = _best(synced(stacked), args.repeats), _best(synced(alone), args.repeats)
        diff = float((stacked() - alone()).abs().max())
    print(f"camera head ({head_dim} wide), {args.windows} windows x {args.frames} frames on "
          f"{args.device}: stacked {a * 1e3:.1f} ms, per window {b * 1e3:.1f} ms, "
          f"largest difference {diff:.2e}")


if __name__ == "__main__":
    main()
