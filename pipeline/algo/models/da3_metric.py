"""Depth Anything 3's sky handling and the nested model's metric alignment.

Mono/metric networks (DPT head) predict a sky score per pixel; a pixel is sky where the score
reaches :data:`SKY_THRESHOLD`. Their depth in sky pixels is replaced by the 0.99 quantile of the
non-sky depth (:func:`fill_sky`).

The nested model (DA3NESTED-GIANT-LARGE) runs the any-view network (cameras, depth, confidence)
and the metric network on the same frames, then (:func:`align_to_metric`):

1. metric depth in metres = metric output x focal / 300 (focal: mean of ``fx``, ``fy`` of the
   any-view network's intrinsics, in network pixels);
2. scale ``s`` = least squares of ``metric ~ s * depth`` over non-sky pixels whose confidence
   reaches the median non-sky confidence (and depths above 1e-3, metric depths above 1e-2);
3. depth and camera translations are multiplied by ``s``;
4. sky pixels get the 0.99 quantile of the non-sky depth (at most 200 m) and confidence 1.

Same arithmetic as the reference, with two deliberate differences: every window of a batch
(``B``) gets its own scale and sky statistics (the reference pools the whole batch, which it runs
with one sequence), and quantiles are exact where the reference samples 100 000 pixels at random
(so results are deterministic; with at most 100 000 pixels they are the reference's).
"""

from __future__ import annotations

from typing import Any

import torch

SKY_THRESHOLD = 0.3
"""Sky score from which a pixel counts as sky."""
METRIC_FOCAL = 300.0
"""Focal length (pixels) the metric network's depth is expressed for."""
SKY_DEPTH_CAP = 200.0
"""Largest depth given to sky pixels by the nested model, metres."""
MIN_PIXELS = 10
"""Fewer sky (or non-sky) pixels than this leave a window as it is (mono) or fail it (nested)."""


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Exact ``q`` quantile of all elements with linear interpolation (``torch.quantile``'s
    default), for any number of elements (``torch.quantile`` stops at 2**24)."""
    v = values.flatten().float().sort().values
    pos = q * (v.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def fill_sky(depth: torch.Tensor, sky: torch.Tensor) -> torch.Tensor:
    """Mono/metric networks: ``depth`` ``[B, S, H, W]`` with each window's sky pixels (``sky``
    score >= :data:`SKY_THRESHOLD`) set to the 0.99 quantile of its non-sky depth; a window with
    at most :data:`MIN_PIXELS` sky or non-sky pixels is left as it is. Returns a new tensor."""
    depth = depth.clone()
    for b in range(depth.shape[0]):
        ground = sky[b] < SKY_THRESHOLD
        if ground.sum() <= MIN_PIXELS or (~ground).sum() <= MIN_PIXELS:
            continue
        depth[b][~ground] = quantile(depth[b][ground], 0.99).to(depth.dtype)
    return depth


def align_to_metric(out: dict[str, Any], metric: dict[str, Any]) -> dict[str, Any]:
    """The nested model's outputs: any-view ``out`` (``depth``, ``depth_conf`` ``[B, S, H, W]``,
    ``extrinsics`` ``[B, S, 3, 4]`` w2c, ``intrinsics`` ``[B, S, 3, 3]``) brought to the metric
    scale of ``metric`` (``depth``, ``sky`` ``[B, S, H, W]``), see the module docstring.

    Adds ``scale_factor`` ``[B]``, ``sky`` (the metric network's scores) and ``is_metric``.

    Raises:
        ValueError: a window has at most :data:`MIN_PIXELS` non-sky pixels.
    """
    k = out["intrinsics"].float()
    focal = (k[..., 0, 0] + k[..., 1, 1]) / 2
    metric_depth = metric["depth"].float() * (focal / METRIC_FOCAL)[..., None, None]
    depth, conf = out["depth"].float().clone(), out["depth_conf"].float().clone()
    extrinsics = out["extrinsics"].float().clone()
    scales = []
    for b in range(depth.shape[0]):
        ground = metric["sky"][b] < SKY_THRESHOLD
        if ground.sum() <= MIN_PIXELS:
            raise ValueError("too few non-sky pixels to bring the depth to metric scale")
        median_conf = quantile(conf[b][ground], 0.5)
        mask = (ground & (conf[b] >= median_conf) & (metric_depth[b] > 1e-2)
                & (depth[b] > 1e-3))
        d, m = depth[b][mask], metric_depth[b][mask]
        scale = torch.dot(m, d) / torch.dot(d, d).clamp_min(1e-12)
        depth[b] *= scale
        extrinsics[b, :, :3, 3] *= scale
        depth[b][~ground] = torch.clamp(quantile(depth[b][ground], 0.99), max=SKY_DEPTH_CAP)
        conf[b][~ground] = 1.0
        scales.append(scale)
    return {**out, "depth": depth, "depth_conf": conf, "extrinsics": extrinsics,
            "scale_factor": torch.stack(scales), "sky": metric["sky"], "is_metric": True}
