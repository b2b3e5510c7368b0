"""The module tree's state_dict equals the released VGGT-1B checkpoint manifest."""


import pytest

from conftest import ROOT
from pipeline.algo.models import VGGTConfig, build_model

MANIFEST = ROOT.parent / "shared" / "golden" / "vggt_1b_keys.tsv"


def _manifest():
    if not MANIFEST.is_file():
        pytest.skip(f"manifest {MANIFEST} not present")
    rows = [
        line.rstrip("\n").split("\t")
        for line in MANIFEST.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return {key: (shape, dtype) for key, shape, dtype in rows}


def test_state_dict_matches_manifest_exactly():
    manifest = _manifest()
    model = build_model(VGGTConfig.vggt_1b(), device="meta")
    state = model.state_dict()
    assert len(manifest) == 1797
    assert sorted(state) == sorted(manifest)
    for key, tensor in state.items():
        assert str(tuple(tensor.shape)) == manifest[key][0], key
        assert str(tensor.dtype).replace("torch.", "") == manifest[key][1], key
    assert sum(t.numel() for t in state.values()) == 1_256_537_516


def test_normalisation_buffers_are_not_persistent():
    model = build_model(VGGTConfig.vggt_1b(), device="meta")
    buffers = dict(model.named_buffers())
    assert {"aggregator._resnet_mean", "aggregator._resnet_std"} <= set(buffers)
    assert not any("_resnet" in key for key in model.state_dict())


def test_tiny_config_is_a_different_shape_of_the_same_modules():
    tiny = build_model(VGGTConfig.tiny(), device="meta").state_dict()
    full = build_model(VGGTConfig.vggt_1b(), device="meta").state_dict()
    strip = lambda keys: {
        k for k in keys if ".blocks." not in k and "_blocks." not in k and "trunk." not in k
    }
    assert strip(tiny) == strip(full)
    assert sum(t.numel() for t in tiny.values()) < 5_000_000
