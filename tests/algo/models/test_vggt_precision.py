"""resolve_dtype policy (GPU branches via an explicit capability) and float32 heads under
autocast."""

import pytest
import torch

from pipeline.algo.models import choose_dtype, resolve_dtype


def test_auto_is_float32_on_cpu():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert choose_dtype("cpu") == torch.float32
    assert choose_dtype("mps") == torch.float32


@pytest.mark.parametrize(
    "capability, expected",
    [
        ((9, 0), torch.bfloat16),
        ((8, 0), torch.bfloat16),
        ((8, 6), torch.bfloat16),
        ((7, 5), torch.float16),
        ((7, 0), torch.float16),
        ((6, 1), torch.float16),
    ],
)
def test_auto_on_cuda_depends_on_capability(capability, expected):
    assert choose_dtype("cuda", capability) == expected
    assert resolve_dtype("auto", "cuda", capability=capability) == expected


def test_explicit_values():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("torch.float16") == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("float8")
    with pytest.raises(ValueError):
        choose_dtype("cuda", None)
    with pytest.raises(TypeError):
        resolve_dtype(16)


def test_heads_stay_float32_under_bfloat16_autocast(tiny_model, tiny_inputs, tiny_outputs):
    images, queries = tiny_inputs
    tiny_model.compute_dtype = torch.bfloat16
    try:
        with torch.inference_mode():
            out = tiny_model(images, queries, return_tokens=True)
    finally:
        tiny_model.compute_dtype = torch.float32
    with torch.inference_mode():
        ref_tokens = tiny_model(images, queries, return_tokens=True)["aggregated_tokens"][-1]
    assert not torch.allclose(
        out["aggregated_tokens"][-1].float(), ref_tokens, atol=1e-4
    )  # bf16 did run
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert out[key].dtype == torch.float32, key
    # bf16 changes numbers, but not wildly (same network)
    assert torch.allclose(out["depth"], tiny_outputs["depth"], rtol=0.1, atol=0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_track_lookups_keep_sub_pixel_coordinates_in_half_precision(dtype):
    """The tracker samples its correlation maps at sub-pixel coordinates; held in bf16 a
    coordinate near 200 is rounded to a whole pixel. Half-precision maps are sampled at the
    float32 coordinates: the same as sampling their float32 copy."""
    from pipeline.algo.models.tracker import sample_bilinear

    gen = torch.Generator().manual_seed(0)
    xs = torch.arange(300, dtype=torch.float32)
    ramp = (xs / 300).expand(1, 1, 40, 300)  # a smooth map: sampling it reads the coordinate
    noise = 0.01 * torch.rand(1, 1, 40, 300, generator=gen)
    values = (ramp + noise).to(dtype)
    xy = torch.tensor([[[[200.37, 20.6], [130.81, 7.25], [255.5, 33.9]]]])
    got = sample_bilinear(values, xy)
    want = sample_bilinear(values.float(), xy)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # what a lookup at the coordinates rounded to the map's dtype reads: off by a large part
    # of the step between neighbouring pixels (1/300)
    rounded = sample_bilinear(values.float(), xy.to(dtype).float())
    if dtype == torch.bfloat16:
        assert (rounded - want).abs().max() > 0.2 / 300
