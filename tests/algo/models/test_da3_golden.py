"""Full-size DA3-BASE / DA3-LARGE forward against the reference's golden arrays (weights by the
golden rule,
seeded with the full ``model.``-prefixed key). Tolerances from ``shared/golden/DA3_NOTES.md``
(absolute;
depth itself barely varies under these weights, so its logits are compared instead of using rtol).
The base pass takes about 20 s on 2 cores, the large one about 50 s (marked slow).
"""


import numpy as np
import pytest
import torch

from conftest import ROOT
from pipeline.algo.models.da3 import DA3Config, build_da3, normalize_images
from pipeline.algo.models.generated_weights import load_rule_weights_

GOLDEN_DIR = ROOT.parent / "shared" / "golden"
TOLERANCES = {
    "depth_logits": 2e-6,
    "ray_logits": 5e-6,
    "ray": 5e-6,
    "ray_conf": 1e-5,
    "depth_conf": 1e-5,
    "pose_enc": 1e-5,
    "extrinsics": 1e-5,
    "features": 1e-4,
}


def _run(stem, name):
    path = GOLDEN_DIR / f"{stem}_golden.npz"
    if not path.is_file():
        pytest.skip(f"golden file {path} not present")
    golden = dict(np.load(path))
    model = load_rule_weights_(build_da3(DA3Config.variant(name), device="meta"))
    images = torch.from_numpy(golden["image_01"])
    assert torch.equal(normalize_images(images), torch.from_numpy(golden["image"]))
    with torch.inference_mode():
        out = model(images, keep_logits=True, return_features=True)
    return golden, out, model.config.out_layers


def _diff(actual, expected):
    actual = actual.detach().float().numpy()
    assert actual.shape == expected.shape and np.isfinite(actual).all()
    return float(np.abs(actual - expected).max())


def _check_all(golden, out, layers):
    assert torch.equal(out["ref_view_index"], torch.from_numpy(golden["ref_view_index"]))
    pairs = {
        "depth_logits": "dbg_head_main_logits",
        "ray_logits": "dbg_head_aux_logits",
        "ray": "ray",
        "ray_conf": "ray_conf",
        "depth_conf": "depth_conf",
        "pose_enc": "pose_enc",
        "extrinsics": "extrinsics",
    }
    diffs = {k: _diff(out[k], golden[g]) for k, g in pairs.items()}
    diffs["depth"] = _diff(out["depth"], golden["depth"])
    diffs["fov_logits"] = _diff(out["fov_logits"], golden["dbg_cam_dec_fov_prerelu"])
    for i, layer in enumerate(layers):
        diffs[f"features_L{layer}"] = _diff(
            out["features"][i][:, :, :8], golden[f"dbg_feat_L{layer}_first8tok"]
        )
        diffs[f"camtok_L{layer}"] = _diff(out["camera_tokens"][i], golden[f"dbg_camtok_L{layer}"])
    rel = np.abs(out["intrinsics"].numpy() - golden["intrinsics"]) / np.maximum(
        np.abs(golden["intrinsics"]), 1.0
    )
    assert float(rel.max()) <= 1e-5, rel.max()
    for key, diff in diffs.items():
        tol = TOLERANCES.get(key.split("_L")[0].replace("camtok", "features"), 2e-6)
        assert diff <= tol, f"{key}: max abs diff {diff} > {tol}"


def test_da3_base_matches_golden():
    _check_all(*_run("da3_base", "da3-base"))


@pytest.mark.slow
def test_da3_large_matches_golden():
    _check_all(*_run("da3_large", "da3-large"))
