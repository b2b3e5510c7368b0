"""Tiny DA3 forward: reference-view reordering, frame batching in the backbone, head chunking,
outputs."""

import pytest
import torch

from pipeline.algo.models.da3 import DA3Config, build_da3, pose_encoding_to_cameras
from pipeline.algo.models.da3_backbone import reference_first_order, select_reference_view
from pipeline.algo.models.generated_weights import load_rule_weights_

KEYS = ("depth", "depth_conf", "ray", "ray_conf", "pose_enc")


@pytest.fixture(scope="module")
def model():
    return load_rule_weights_(build_da3(DA3Config.tiny(), device="meta"))


@pytest.fixture(scope="module")
def images():
    return torch.rand(1, 5, 3, 56, 70, generator=torch.Generator().manual_seed(1))


def _run(model, images, **kw):
    with torch.inference_mode():
        return model(images, **kw)


def test_output_shapes(model, images):
    out = _run(model, images)
    assert out["depth"].shape == (1, 5, 56, 70) and out["ray"].shape == (1, 5, 32, 40, 6)
    assert out["extrinsics"].shape == (1, 5, 3, 4) and out["intrinsics"].shape == (1, 5, 3, 3)
    assert out["ref_view_index"].shape == (1,) and (out["depth_conf"] > 1).all()
    assert _run(model, images[:, :2])["ref_view_index"] is None  # fewer than 3 views: no selection


def test_reference_reorder_equals_feeding_the_reference_first(model, images):
    out = _run(model, images, ref_view_strategy="middle")
    assert out["ref_view_index"].tolist() == [2]
    order = [2, 0, 1, 3, 4]
    moved = _run(model, images[:, order], ref_view_strategy="first")
    for key in KEYS:
        assert torch.allclose(moved[key], out[key][:, order], rtol=0, atol=1e-6), key
    other = _run(model, images, ref_view_strategy="first")
    assert not torch.allclose(
        other["pose_enc"], out["pose_enc"], rtol=0, atol=1e-6
    )  # the reference view matters


@pytest.mark.parametrize("size", [None, 5, 9])
def test_frame_batch_size_none_or_all_is_the_full_model(model, images, size):
    full, batched = _run(model, images), _run(model, images, frame_batch_size=size)
    for key in KEYS:
        assert torch.equal(full[key], batched[key]), key


def test_frame_batches_share_the_reference_view(model, images):
    out = _run(
        model, images, frame_batch_size=2, ref_view_strategy="middle"
    )  # groups (2,0) (2,1) (2,3) (2,4)
    full = _run(model, images, ref_view_strategy="middle")
    assert not torch.allclose(
        out["pose_enc"], full["pose_enc"], rtol=0, atol=1e-6
    )  # approximate, not the full model
    for group in ([2, 0], [2, 1], [2, 3], [2, 4]):
        alone = _run(model, images[:, group])  # two views: no selection, the first is the reference
        view = group[1]
        for key in KEYS:
            assert torch.allclose(out[key][:, view], alone[key][:, 1], rtol=0, atol=1e-5), (
                key,
                group,
            )
    alone = _run(model, images[:, [2, 0]])
    assert torch.allclose(out["depth"][:, 2], alone["depth"][:, 0], rtol=0, atol=1e-5)


def test_frame_batch_size_one_is_rejected(model, images):
    with pytest.raises(ValueError, match="frame_batch_size"):
        _run(model, images, frame_batch_size=1)


def test_head_chunking_does_not_change_results(model, images):
    a, b = _run(model, images, head_chunk_size=None), _run(model, images, head_chunk_size=2)
    for key in KEYS:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    with pytest.raises(ValueError, match="chunk_size"):
        _run(model, images, head_chunk_size=0)


def test_camera_conditioning_changes_the_backbone(model, images):
    extr = torch.eye(4).expand(1, 5, 4, 4).clone()
    extr[..., 0, 3] = torch.arange(5.0)
    intr = torch.tensor([[60.0, 0, 35], [0, 60, 28], [0, 0, 1]]).expand(1, 5, 3, 3)
    out = _run(model, images, extrinsics=extr, intrinsics=intr)
    assert out["ref_view_index"] is None
    assert not torch.allclose(out["pose_enc"], _run(model, images)["pose_enc"], rtol=0, atol=1e-6)


def test_saddle_balanced_selection_and_order():
    tokens = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]]])
    assert select_reference_view(tokens, "first").tolist() == [0]
    assert select_reference_view(tokens, "middle").tolist() == [2]
    assert reference_first_order(torch.tensor([2]), 5).tolist() == [[2, 0, 1, 3, 4]]
    with pytest.raises(ValueError, match="strategy"):
        select_reference_view(tokens, "best")


def test_fov_clamp_and_w2c():
    enc = torch.tensor([[[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]])
    w2c, k = pose_encoding_to_cameras(enc, (294, 392))
    assert torch.allclose(w2c[..., 3], -enc[..., :3]) and k[0, 0, 0, 0].item() == pytest.approx(
        196 / 1e-6
    )
