"""load_model / weights_available with generated tiny weights written to disk in every format."""

import json

import pytest
import torch

from pipeline.algo.models import (
    VGGT,
    CheckpointError,
    VGGTConfig,
    WeightsNotFoundError,
    load_model,
    read_state_dict,
    save_pretrained,
    weights_available,
)

REPO = "acme/VGGT-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


_compared = ("pose_enc", "depth", "world_points", "track", "vis")


@pytest.fixture
def same_as_tiny(tiny_model, tiny_inputs, tiny_outputs):
    """Check that a loaded model has the tiny model's weights, config and outputs."""

    def check(loaded):
        assert isinstance(loaded, VGGT) and not loaded.training
        assert loaded.config == VGGTConfig.tiny()
        loaded_state = loaded.state_dict()
        for key, value in tiny_model.state_dict().items():
            assert torch.equal(loaded_state[key], value), key
        with torch.inference_mode():
            out = loaded(*tiny_inputs)
        for key in _compared:
            assert torch.equal(out[key], tiny_outputs[key]), key

    return check


def test_safetensors_folder_round_trip(tmp_path, tiny_model, same_as_tiny):
    path = save_pretrained(tiny_model, tmp_path / "ckpt")
    assert path.name == "model.safetensors" and weights_available(tmp_path / "ckpt")
    same_as_tiny(load_model(tmp_path / "ckpt"))
    same_as_tiny(load_model(str(path)))  # file next to its config.json


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_torch_pickle_with_or_without_wrapper(tmp_path, tiny_model, same_as_tiny, wrapper):
    state = tiny_model.state_dict()
    path = tmp_path / "weights.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    assert set(read_state_dict(path)) == set(state)
    same_as_tiny(load_model(path, config=VGGTConfig.tiny()))


def test_pt_folder_with_config_json(tmp_path, tiny_model, same_as_tiny):
    save_pretrained(tiny_model, tmp_path, safetensors=False)
    assert (tmp_path / "model.pt").is_file()
    same_as_tiny(load_model(tmp_path))


def _fake_hub_cache(root, model):
    repo_dir = root / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    save_pretrained(model, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)


def test_hub_repo_id_from_offline_cache(tmp_path, monkeypatch, tiny_model, same_as_tiny):
    _fake_hub_cache(tmp_path, tiny_model)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights_available(REPO)
    same_as_tiny(load_model(REPO))


def test_missing_hub_weights_offline_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not weights_available("facebook/VGGT-1B")
    with pytest.raises(WeightsNotFoundError) as err:
        load_model("facebook/VGGT-1B")
    assert isinstance(err.value, FileNotFoundError)
    assert "hf download facebook/VGGT-1B" in str(err.value)
    assert "local path" in str(err.value)


def test_missing_local_path_and_empty_folder(tmp_path):
    for target in (tmp_path / "nope.safetensors", tmp_path):
        assert not weights_available(target)
        with pytest.raises(WeightsNotFoundError, match="hf download"):
            load_model(target)


def test_wrong_config_fails_loudly(tmp_path, tiny_model):
    save_pretrained(tiny_model, tmp_path)
    with pytest.raises(CheckpointError, match="does not fit the vggt network: size mismatch"):
        load_model(tmp_path, config=VGGTConfig(embed_dim=64))


def test_unknown_architecture_in_config(tmp_path, tiny_model):
    save_pretrained(tiny_model, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "nerf"}))
    with pytest.raises(ValueError, match="unknown architecture"):
        load_model(tmp_path)


def test_architecture_detected_from_keys_without_config(tmp_path, tiny_model, same_as_tiny):
    from safetensors.torch import save_file

    save_file(tiny_model.state_dict(), str(tmp_path / "x.safetensors"))
    same_as_tiny(load_model(tmp_path / "x.safetensors", config=VGGTConfig.tiny()))


def test_loaded_model_has_requested_compute_dtype(tmp_path, tiny_model):
    save_pretrained(tiny_model, tmp_path)
    assert load_model(tmp_path, dtype="auto").compute_dtype == torch.float32
    assert load_model(tmp_path, dtype="bf16").compute_dtype == torch.bfloat16
    assert load_model(tmp_path).aggregator._resnet_mean.device.type == "cpu"
