"""Depth Anything 3's sky filling and the nested model's metric alignment
(pipeline/models/da3_metric.py)."""

from __future__ import annotations

import pytest
import torch

from pipeline.algo.models import load_model
from pipeline.algo.models.da3 import DA3Config, DA3ForwardOptions, normalize_images
from pipeline.algo.models.da3_metric import (
    METRIC_FOCAL,
    SKY_DEPTH_CAP,
    align_to_metric,
    fill_sky,
    quantile,
)
from pipeline.algo.models.generated_checkpoint import write_generated_da3_checkpoint


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.99, 1.0])
def test_quantile_equals_torch_quantile(n, q):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(quantile(values, q), torch.quantile(values, q), rtol=0, atol=1e-6)


def scene(b=2, s=3, h=8, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(b, s, h, w, generator=g) * 4 + 0.5
    sky = torch.zeros(b, s, h, w)
    sky[:, :, :2] = 0.9  # the top two rows are sky
    return depth, sky


def test_fill_sky_sets_sky_to_the_99th_percentile_of_the_ground_per_window():
    depth, sky = scene()
    depth[1] *= 10  # windows differ: each gets its own statistic
    filled = fill_sky(depth, sky)
    for b in range(2):
        ground = depth[b][:, 2:]
        torch.testing.assert_close(filled[b][:, :2], quantile(ground, 0.99).expand(3, 2, 10))
        torch.testing.assert_close(filled[b][:, 2:], ground)
    no_sky = fill_sky(depth, torch.zeros_like(sky))  # nothing to fill: unchanged
    torch.testing.assert_close(no_sky, depth, rtol=0, atol=0)


def test_alignment_recovers_each_windows_metric_scale():
    depth, sky = scene()
    truth = torch.tensor([2.5, 0.4])
    focal = torch.tensor([600.0, 450.0])
    k = torch.zeros(2, 3, 3, 3)
    k[..., 0, 0], k[..., 1, 1], k[..., 2, 2] = focal[:, None], focal[:, None], 1.0
    metric_raw = depth * truth[:, None, None, None] / (focal / METRIC_FOCAL)[:, None, None, None]
    extrinsics = torch.randn(2, 3, 3, 4, generator=torch.Generator().manual_seed(1))
    conf = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(2)) + 1
    out = align_to_metric(
        {"depth": depth, "depth_conf": conf, "extrinsics": extrinsics, "intrinsics": k},
        {"depth": metric_raw, "sky": sky},
    )
    torch.testing.assert_close(out["scale_factor"], truth, rtol=1e-5, atol=0)
    scaled = depth * truth[:, None, None, None]
    torch.testing.assert_close(out["depth"][:, :, 2:], scaled[:, :, 2:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["extrinsics"][..., 3], extrinsics[..., 3] * truth[:, None, None])
    torch.testing.assert_close(out["extrinsics"][..., :3], extrinsics[..., :3], rtol=0, atol=0)
    for b in range(2):
        expected = min(float(quantile(scaled[b][:, 2:], 0.99)), SKY_DEPTH_CAP)
        torch.testing.assert_close(out["depth"][b][:, :2], torch.full((3, 2, 10), expected))
    assert torch.all(out["depth_conf"][:, :, :2] == 1.0) and out["is_metric"]


def test_alignment_needs_ground():
    depth, sky = scene()
    k = torch.eye(3).expand(2, 3, 3, 3)
    with pytest.raises(ValueError, match="non-sky"):
        align_to_metric(
            {
                "depth": depth,
                "depth_conf": depth,
                "extrinsics": torch.zeros(2, 3, 3, 4),
                "intrinsics": k,
            },
            {"depth": depth, "sky": torch.ones_like(sky)},
        )


def test_nested_model_is_its_any_view_network_in_metres(tmp_path):
    write_generated_da3_checkpoint(tmp_path, DA3Config.tiny_nested())
    model = load_model(tmp_path)
    images = torch.rand(2, 3, 3, 56, 70, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        nested = model(images)
        any_view = model.model.da3(normalize_images(images), options=DA3ForwardOptions())
        single = model(images[1:])
    scale = nested["scale_factor"]
    assert scale.shape == (2,) and torch.all(scale > 0)
    torch.testing.assert_close(
        nested["depth"], any_view["depth"] * scale[:, None, None, None], rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        nested["extrinsics"][..., 3], any_view["extrinsics"][..., 3] * scale[:, None, None]
    )
    torch.testing.assert_close(single["scale_factor"], scale[1:], rtol=1e-4, atol=0)
