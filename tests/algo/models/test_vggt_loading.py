"""load_model / weights_available with generated tiny weights written to disk in every format."""

import argparse
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


def test_a_state_dict_saved_from_distributed_data_parallel(tmp_path, tiny_model, same_as_tiny):
    state = {f"module.{k}": v for k, v in tiny_model.state_dict().items()}
    torch.save({"model": state}, tmp_path / "ddp.pt")
    same_as_tiny(load_model(tmp_path / "ddp.pt", config=VGGTConfig.tiny()))


def _save_sharded(model, folder, shards=3):
    """The Hugging Face sharded layout: ``model-0000K-of-0000N.safetensors`` and the index."""
    from safetensors.torch import save_file

    state = model.state_dict()
    keys = sorted(state)
    names = [f"model-{k + 1:05d}-of-{shards:05d}.safetensors" for k in range(shards)]
    weight_map = {key: names[i * shards // len(keys)] for i, key in enumerate(keys)}
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        save_file({k: v.contiguous() for k, v in state.items() if weight_map[k] == name},
                  str(folder / name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(VGGTConfig.tiny().to_dict()))


def test_a_checkpoint_in_shards(tmp_path, monkeypatch, tiny_model, same_as_tiny):
    from pipeline.algo.models import checkpoint_fingerprint

    _save_sharded(tiny_model, tmp_path / "local")
    assert weights_available(tmp_path / "local")
    same_as_tiny(load_model(tmp_path / "local"))
    same_as_tiny(load_model(tmp_path / "local" / "model.safetensors.index.json"))
    before = checkpoint_fingerprint(tmp_path / "local")
    assert len(before["shards"]) == 3
    shard = tmp_path / "local" / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes() + b" ")  # a shard changed: another checkpoint
    assert checkpoint_fingerprint(tmp_path / "local") != before
    shard.unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003"):
        checkpoint_fingerprint(tmp_path / "local")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path / "local")
    # from the hub cache: every shard in the snapshot
    snapshot = tmp_path / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    _save_sharded(tiny_model, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    same_as_tiny(load_model(REPO))
    (snapshot / "model-00003-of-00003.safetensors").unlink()  # a download cut short
    with pytest.raises(WeightsNotFoundError):
        load_model(REPO)


def test_files_that_are_no_checkpoint_say_so_in_one_line(tmp_path, tiny_model):
    (tmp_path / "notes.txt").write_text("weights are on the other disk")
    with pytest.raises(CheckpointError, match="unsupported checkpoint format '.txt'"):
        load_model(tmp_path / "notes.txt")
    # a training checkpoint with its arguments: objects other than tensors are never unpickled
    torch.save({"model": tiny_model.state_dict(), "args": argparse.Namespace(lr=0.1)},
               tmp_path / "run.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "run.pt")
    message = str(err.value)
    assert "not a checkpoint of tensors only" in message and "Namespace" in message
    assert "weights_only" not in message and "\n" not in message


def test_a_checkpoint_of_another_network_is_refused_before_it_is_loaded(tmp_path, tiny_model):
    from pipeline.algo.models.da3 import DA3Config
    from pipeline.algo.models.generated_checkpoint import write_generated_da3_checkpoint

    save_pretrained(tiny_model, tmp_path / "vggt")
    write_generated_da3_checkpoint(tmp_path / "da3", DA3Config.tiny())
    with pytest.raises(CheckpointError, match="holds a da3 network, not vggt"):
        load_model(tmp_path / "da3", expect="vggt")
    with pytest.raises(CheckpointError, match="holds a vggt network, not da3"):
        load_model(tmp_path / "vggt", expect="da3")
    assert isinstance(load_model(tmp_path / "vggt", expect="vggt"), VGGT)


def test_a_relative_path_that_does_not_exist_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=f"no file or folder {tmp_path}/ck/vggt"):
        load_model("ck/vggt")
