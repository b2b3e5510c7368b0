"""load_model for DA3: released layout (``model.`` prefix, tied LayerNorm stored once), folders, hub
ids, variants."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from pipeline.algo.models import (
    DA3Config,
    DepthAnything3,
    build_da3,
    load_model,
    load_rule_weights_,
    save_pretrained,
)

LN = "model.head.scratch.output_conv2_aux.{}.2.weight"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_da3():
    return load_rule_weights_(build_da3(DA3Config.tiny(), device="meta"))


@pytest.fixture(scope="module")
def tiny_images():
    return torch.rand(1, 3, 3, 56, 70, generator=torch.Generator().manual_seed(0))


def _same(loaded, model, images):
    assert (
        isinstance(loaded, DepthAnything3) and not loaded.training and loaded.config == model.config
    )
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.inference_mode():
        a, b = loaded(images), model(images)
    for key in ("depth", "ray", "pose_enc", "extrinsics"):
        assert torch.equal(a[key], b[key]), key


def _released_folder(folder, model, config_json):
    """What the hub holds: safetensors.save_model (tied LN once, aliases in metadata) +
    config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config_json))
    return folder


def test_released_layout_loads_strictly(tmp_path, tiny_da3, tiny_images):
    folder = _released_folder(
        tmp_path / "ckpt", tiny_da3, DA3Config.tiny().to_dict()
    )  # no "architecture" key
    stored = load_file(str(folder / "model.safetensors"))
    assert (
        all(k.startswith("model.") for k in stored)
        and LN.format(0) in stored
        and LN.format(3) not in stored
    )
    _same(load_model(folder), tiny_da3, tiny_images)


def test_save_pretrained_round_trip(tmp_path, tiny_da3, tiny_images):
    path = save_pretrained(tiny_da3, tmp_path, architecture="da3")
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == "da3"
    assert LN.format(1) not in load_file(str(path))
    _same(load_model(tmp_path), tiny_da3, tiny_images)


def test_bare_network_keys_get_the_prefix(tmp_path, tiny_da3, tiny_images):
    save_file(
        {k: v.clone() for k, v in tiny_da3.model.state_dict().items()},
        str(tmp_path / "net.safetensors"),
    )
    _same(load_model(tmp_path / "net.safetensors", config=DA3Config.tiny()), tiny_da3, tiny_images)


def test_all_tied_aliases_present_last_one_wins():
    model = build_da3(DA3Config.tiny(), device="meta")
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    for i in range(4):
        state[LN.format(i)] = torch.full((32,), float(i))
    model.load_state_dict(state, strict=True, assign=True)
    assert torch.equal(
        model.model.head.scratch.output_conv2_aux[3][2].weight, torch.full((32,), 3.0)
    )


def test_other_missing_keys_still_fail(tmp_path, tiny_da3):
    state = {k: v.clone() for k, v in tiny_da3.state_dict().items() if "cam_dec.fc_t" not in k}
    with pytest.raises(RuntimeError, match="fc_t"):
        build_da3(DA3Config.tiny(), device="meta").load_state_dict(state, strict=True, assign=True)


def test_hub_id_and_variant_from_model_name(tmp_path, monkeypatch):
    repo = "depth-anything/DA3-SMALL-1.1"
    model = load_rule_weights_(build_da3(DA3Config.variant("da3-small"), device="meta"))
    repo_dir = tmp_path / ("models--" + repo.replace("/", "--"))
    _released_folder(repo_dir / "snapshots" / COMMIT, model, {"model_name": "da3-small"})
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(repo, dtype="bf16")
    assert (
        loaded.config == DA3Config.variant("da3-small") and loaded.compute_dtype == torch.bfloat16
    )
    assert torch.equal(
        loaded.model.head.scratch.output_conv2_aux[2][2].bias,
        model.state_dict()["model.head.scratch.output_conv2_aux.3.2.bias"],
    )


def test_da3_without_config_asks_for_one(tmp_path, tiny_da3):
    save_model(tiny_da3, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="model_name"):
        load_model(tmp_path / "x.safetensors")
