"""Full-size VGGT-1B forward against the reference's golden arrays (weights by the golden rule).

One forward pass (about 1 minute and 6.5 GB on 2 CPU cores), shared by every check below.
Tolerances are those of ``shared/golden/README.md`` (max absolute difference, float32, CPU).
"""


import numpy as np
import pytest
import torch

from conftest import ROOT
from pipeline.algo.models import VGGTConfig, build_model, load_rule_weights_

GOLDEN = ROOT.parent / "shared" / "golden" / "vggt_1b_golden.npz"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def golden_run():
    if not GOLDEN.is_file():
        pytest.skip(f"golden file {GOLDEN} not present")
    golden = dict(np.load(GOLDEN))
    model = load_rule_weights_(build_model(VGGTConfig.vggt_1b(), device="meta"))
    with torch.inference_mode():
        out = model(
            torch.from_numpy(golden["images"]),
            torch.from_numpy(golden["query_points"]),
            return_tokens=True,
            return_track_features=True,
        )
    del model
    return golden, out


def _check(actual, expected, tol):
    actual = (
        actual.detach().float().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    )
    assert actual.shape == expected.shape
    assert np.isfinite(actual).all()
    diff = float(np.abs(actual - expected).max())
    assert diff <= tol, f"max abs diff {diff} > {tol}"


@pytest.mark.parametrize("layer", [4, 11, 17, 23])
def test_aggregator_layers(golden_run, layer):
    golden, out = golden_run
    assert int(golden["patch_start_idx"]) == 5
    _check(out["aggregated_tokens"][layer][:, :, :8], golden[f"aggregator_layer{layer}_head"], 1e-3)


def test_camera(golden_run):
    golden, out = golden_run
    _check(out["pose_enc"], golden["pose_enc"], 1e-4)
    _check(torch.stack(out["pose_enc_list"]), golden["pose_enc_list"], 1e-4)


@pytest.mark.parametrize("key", ["depth", "depth_conf", "world_points", "world_points_conf"])
def test_dense_heads(golden_run, key):
    golden, out = golden_run
    _check(out[key], golden[key], 1e-5)


def test_track_features(golden_run):
    golden, out = golden_run
    _check(out["track_features"][..., :16, :16], golden["track_features_head"], 1e-5)


def test_tracks(golden_run):
    golden, out = golden_run
    tracks = torch.stack(out["track_list"])
    for i, tol in enumerate([1e-3, 1e-2, 0.2, 2.0]):
        _check(tracks[i], golden["track_list"][i], tol)
    _check(out["track"], golden["track"], 2.0)
    _check(out["vis"], golden["vis"], 1e-2)
    _check(out["conf"], golden["conf"], 1e-2)


def test_lean_path_kept_only_the_layers_the_heads_read(golden_run):
    _, out = golden_run
    kept = [i for i, t in enumerate(out["aggregated_tokens"]) if t is not None]
    assert kept == [4, 11, 17, 23]
