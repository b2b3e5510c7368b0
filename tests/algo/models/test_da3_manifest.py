"""The DA3 module trees' state_dicts equal the released checkpoint manifests (keys, shapes, dtypes,
order)."""

import ast

import pytest
import torch

from conftest import ROOT
from pipeline.algo.models.da3 import DA3Config, build_da3

GOLDEN_DIR = ROOT.parent / "shared" / "golden"
VARIANTS = {  # manifest file stem -> (model_name, key count)
    "da3_small": ("da3-small", 443),
    "da3_base": ("da3-base", 443),
    "da3_large": ("da3-large", 643),
    "da3_giant": ("da3-giant", 977),
    "da3_metric_large": ("da3metric-large", 406),
    "da3_mono_large": ("da3mono-large", 406),
    "da3_nested_giant_large": ("da3nested-giant-large", 1383),
}


def _manifest(stem):
    path = GOLDEN_DIR / f"{stem}_keys.tsv"
    if not path.is_file():
        pytest.skip(f"manifest {path} not present")
    rows = [
        line.split("\t")
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return [(key, ast.literal_eval(shape), dtype) for key, shape, dtype in rows]


@pytest.mark.parametrize("stem", sorted(VARIANTS))
def test_state_dict_matches_manifest(stem):
    name, count = VARIANTS[stem]
    manifest = _manifest(stem)
    state = build_da3(DA3Config.variant(name), device="meta").state_dict()
    assert len(manifest) == count
    assert list(state) == [key for key, _, _ in manifest]  # same keys in the same order
    for key, shape, dtype in manifest:
        assert tuple(state[key].shape) == shape, key
        assert str(state[key].dtype).replace("torch.", "") == dtype, key


def test_ray_head_layer_norm_is_one_shared_module():
    head = build_da3(DA3Config.variant("da3-base"), device="meta").model.head
    norms = {id(head.scratch.output_conv2_aux[i][2]) for i in range(4)}
    assert len(norms) == 1 and isinstance(head.scratch.output_conv2_aux[0][2], torch.nn.LayerNorm)


def test_giant_uses_swiglu_and_metric_has_no_camera():
    giant = build_da3(DA3Config.variant("DA3-GIANT-1.1"), device="meta").model
    assert giant.backbone.pretrained.blocks[0].mlp.w3.in_features == 4096
    metric = build_da3(DA3Config.variant("da3metric-large"), device="meta").model
    assert metric.cam_dec is None and metric.backbone.pretrained.camera_token is None


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown DA3 model_name"):
        DA3Config.variant("da3-huge")
