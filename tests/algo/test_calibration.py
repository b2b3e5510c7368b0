"""The classical reconstructor's calibration: the fundamental-matrix estimate and its support,
and the judgement of the chunks' bundle-adjusted focal lengths (pipeline.algo.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.algo import calibration as calib
from pipeline.io.synthetic import look_at


def _skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])


def _fundamentals(poses, k, noise, rng):
    """F of every pair of camera-from-world ``poses`` with intrinsics ``k``; the essential
    matrices (unit norm) disturbed by Gaussian ``noise``."""
    k_inv = np.linalg.inv(k)
    out = []
    for i in range(len(poses)):
        for j in range(i + 1, len(poses)):
            r = poses[j][:, :3] @ poses[i][:, :3].T
            t = poses[j][:, 3] - r @ poses[i][:, 3]
            e = _skew(t) @ r
            e = e / np.linalg.norm(e) + noise * rng.normal(size=(3, 3))
            out.append(k_inv.T @ e @ k_inv)
    return np.stack(out)


K = np.array([[578.0, 0.0, 160.0], [0.0, 578.0, 120.0], [0.0, 0.0, 1.0]])


def test_the_fundamental_matrices_of_a_general_motion_give_the_focal_length():
    rng = np.random.default_rng(0)
    poses = [look_at(np.array([0.1 * k, -3 + 0.05 * k, 1.5]),
                     np.array([0.3 * np.sin(k), 0.5 * k, 1.0 + 0.2 * np.cos(k)]))
             for k in range(12)]
    estimate = calib.focal_from_fundamentals(_fundamentals(poses, K, 3e-3, rng), 320,
                                             (160.0, 120.0))
    assert estimate.focal == pytest.approx(578.0, rel=0.02)
    assert estimate.supported and estimate.support > 2 * calib.MIN_SUPPORT


def test_cameras_that_all_look_at_one_point_leave_the_focal_length_unsupported():
    """Optical axes that meet in one point (an object scanned from around it, as DTU) are a
    degenerate motion for the fundamental-matrix criterion: its minimum is nearly flat."""
    rng = np.random.default_rng(0)
    angles = np.radians(np.linspace(-40, 40, 12))
    poses = [look_at(np.array([3 * np.sin(a), -3 * np.cos(a), 1.0]), np.zeros(3))
             for a in angles]
    estimate = calib.focal_from_fundamentals(_fundamentals(poses, K, 3e-3, rng), 320,
                                             (160.0, 120.0))
    assert not estimate.supported


def test_too_few_pairs_or_an_unexplained_cost_give_no_estimate():
    rng = np.random.default_rng(1)
    noise = np.stack([rng.normal(size=(3, 3)) for _ in range(30)])
    assert calib.focal_from_fundamentals(noise, 320, (160.0, 120.0)).focal is None


def test_field_of_view_and_plausibility():
    assert calib.field_of_view(400.0, 800) == pytest.approx(90.0)
    assert calib.plausible(1446.0, 800)  # DTU: 31 degrees
    assert not calib.plausible(12500.0, 640)  # 2.9 degrees: a drifting self-calibration
    assert not calib.plausible(50.0, 640) and not calib.plausible(float("nan"), 640)
    assert not calib.plausible(None, 640)


CAMERA = calib.CameraInfo(camera_id=1, width=640, height=480, focal=768.0, exif=False)


def _chunk(focal, registered=100, frames=104, std=0.001):
    return {"cameras": {"1": {"focal": focal, "registered": registered, "frames": frames,
                              "relative_std": std}}, "reprojection_error": 0.7}


SUPPORTED = {1: calib.FocalEstimate(focal=551.0, pairs=500, cost=0.004, support=1.8)}
FLAT = {1: calib.FocalEstimate(focal=512.0, pairs=300, cost=0.003, support=0.04)}


def test_chunks_that_agree_keep_their_own_values():
    [d] = calib.decide({1: CAMERA}, SUPPORTED, {"a": _chunk(551.6), "b": _chunk(542.6)})
    assert d.initial == {"focal": 551.0, "source": calib.SOURCE_FUNDAMENTAL}
    assert d.support == "strong" and not d.remap and not d.warnings
    assert d.focal == pytest.approx((551.6 + 542.6) / 2)
    assert d.source == calib.SOURCE_ADJUSTMENT
    sources = [c["source"] for c in d.candidates]
    assert sources[:2] == [calib.SOURCE_DEFAULT, calib.SOURCE_FUNDAMENTAL]
    assert len(sources) == 4  # and each chunk's bundle-adjusted value


def test_an_unsupported_estimate_is_not_where_mapping_starts():
    [d] = calib.decide({1: CAMERA}, FLAT, {"a": _chunk(1437.0)})
    assert d.initial == {"focal": 768.0, "source": calib.SOURCE_DEFAULT}
    assert d.focal == pytest.approx(1437.0) and d.support == "strong"


def test_exif_is_where_mapping_starts():
    camera = calib.CameraInfo(camera_id=1, width=640, height=480, focal=600.0, exif=True)
    [d] = calib.decide({1: camera}, {}, {"a": _chunk(590.0)})
    assert d.initial == {"focal": 600.0, "source": calib.SOURCE_EXIF}
    assert d.support == "strong"


def test_a_chunk_that_disagrees_is_mapped_again_with_the_consensus():
    evidence = {"a": _chunk(551.0), "b": _chunk(548.0), "c": _chunk(12500.0),
                "d": _chunk(700.0)}
    [d] = calib.decide({1: CAMERA}, SUPPORTED, evidence)
    assert d.focal == pytest.approx(np.median([551.0, 548.0, 700.0]))
    assert d.remap == ["c", "d"] and d.source == calib.SOURCE_CONSENSUS
    assert d.support == "weak"
    text = " ".join(d.warnings)
    assert "no camera has" in text and "disagree" in text
    assert [c["agrees"] for c in d.chunks] == [True, True, False, False]


def test_a_chunk_that_registered_too_little_does_not_vote():
    evidence = {"a": _chunk(551.0), "b": _chunk(900.0, registered=10)}
    [d] = calib.decide({1: CAMERA}, SUPPORTED, evidence)
    assert d.focal == pytest.approx(551.0) and d.remap == ["b"]


def test_a_camera_of_one_frame_keeps_the_value_its_chunk_adjusted():
    """One frame of a size no other frame has: its chunk's bundle adjustment is the only
    evidence; mapping it again with the default focal length would lose the frame."""
    big = calib.CameraInfo(camera_id=1, width=6000, height=4500, focal=7200.0, exif=False)
    [d] = calib.decide({1: big}, {}, {"a": _chunk(5188.0, registered=1, frames=1)})
    assert d.focal == pytest.approx(5188.0) and not d.remap
    [lost] = calib.decide({1: big}, {}, {"a": _chunk(5188.0, registered=0, frames=1)})
    assert lost.focal == pytest.approx(7200.0)


def test_little_evidence_is_weak_support():
    [uncertain] = calib.decide({1: CAMERA}, FLAT, {"a": _chunk(900.0, std=0.2)})
    assert uncertain.support == "weak" and "uncertain" in uncertain.warnings[0]
    [unchecked] = calib.decide({1: CAMERA}, FLAT, {"a": _chunk(900.0, registered=1)})
    assert unchecked.focal == pytest.approx(768.0) and unchecked.support == "weak"
    [contradicted] = calib.decide({1: CAMERA}, SUPPORTED, {"a": _chunk(800.0)})
    assert contradicted.support == "weak" and "suggest 551" in contradicted.warnings[0]
    [nothing] = calib.decide({1: CAMERA}, {}, {"a": _chunk(20000.0)})
    assert nothing.focal is not None  # COLMAP's default is plausible, but unchecked
    tiny = calib.CameraInfo(camera_id=1, width=64, height=48, focal=5000.0, exif=True)
    [none] = calib.decide({1: tiny}, {}, {})
    assert none.focal is None and none.support == "weak"


def test_estimates_are_kept_and_read_back(tmp_path):
    import json

    (tmp_path / calib.ESTIMATES_FILE).write_text(json.dumps(calib.estimates_json(SUPPORTED)))
    assert calib.read_estimates(tmp_path) == SUPPORTED
    (tmp_path / calib.ESTIMATES_FILE).write_text('{"1": 551.0}')  # an older format
    assert calib.read_estimates(tmp_path) is None
