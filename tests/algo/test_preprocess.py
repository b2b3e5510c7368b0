"""Preprocessing to the network grid and its exact inverse."""

import numpy as np
import pytest
import torch

from pipeline.algo.preprocess import FrameTransform, PreprocessOptions, preprocess_frames


def _frame(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "hw, mode, net_hw, resized",
    [
        ((480, 640), "crop", (392, 518), (392, 518)),
        ((1000, 500), "crop", (518, 518), (1036, 518)),  # tall: centre-cropped to 518 rows
        ((480, 640), "pad", (518, 518), (392, 518)),
        ((1000, 500), "pad", (518, 518), (518, 252)),  # tall: longer side 518, padded to a square
        ((300, 300), "crop", (518, 518), (518, 518)),
    ],
)
def test_sizes_follow_the_reference(hw, mode, net_hw, resized):
    out = preprocess_frames([_frame(*hw)], PreprocessOptions(mode=mode))
    assert out.images.shape == (1, 3, *net_hw) and out.images.dtype == torch.float32
    assert out.images.shape[2] % 14 == 0 and out.images.shape[3] % 14 == 0
    tr = out.transforms[0]
    assert tr.resized_hw == resized and tr.original_hw == hw and tr.network_hw == net_hw
    assert 0.0 <= float(out.images.min()) and float(out.images.max()) <= 1.0


def test_pixels_equal_pil_bicubic_and_padding_is_white():
    from PIL import Image

    frame = _frame(100, 259)
    out = preprocess_frames([frame], PreprocessOptions(mode="pad"))
    tr = out.transforms[0]
    expected = (
        np.asarray(Image.fromarray(frame).resize((518, 196), Image.Resampling.BICUBIC), np.float32)
        / 255.0
    )
    oy = int(tr.offset_xy[1])
    assert tr.resized_hw == (196, 518) and oy == (518 - 196) // 2
    assert torch.equal(out.images[0, :, oy : oy + 196].permute(1, 2, 0), torch.from_numpy(expected))
    assert bool((out.images[0, :, :oy] == 1.0).all()) and bool(
        (out.images[0, :, oy + 196 :] == 1.0).all()
    )


def test_points_round_trip_in_both_conventions():
    out = preprocess_frames([_frame(1000, 500), _frame(480, 640, 1)])
    pts = np.array([[0.0, 0.0], [12.25, 400.5], [499.0, 999.0]])
    for tr in out.transforms:
        for conv in ("colmap", "index"):
            assert np.allclose(tr.to_original(tr.to_network(pts, conv), conv), pts, atol=1e-9)
    tr = preprocess_frames([_frame(480, 640)]).transforms[0]  # 640x480 -> 518x392: a pure scale
    assert tr.offset_xy == (0.0, 0.0)
    sx, sy = tr.scale_xy
    assert np.allclose(tr.to_network([[640.0, 480.0]]), [[518.0, 392.0]])
    # index convention: the centre of the first pixel stays half a (network) pixel in
    assert np.allclose(tr.to_network([[0.0, 0.0]], "index"), [[0.5 * sx - 0.5, 0.5 * sy - 0.5]])
    with pytest.raises(ValueError):
        tr.to_network(pts, "opengl")


def test_intrinsics_inverse_is_consistent_with_points():
    tr = preprocess_frames([_frame(1000, 500)]).transforms[0]
    K_orig = np.array([[700.0, 0.0, 251.0], [0.0, 690.0, 498.0], [0.0, 0.0, 1.0]])
    X = np.array([[0.1, -0.3, 2.0], [-0.2, 0.4, 3.0]])
    project = lambda K: (X @ K.T)[:, :2] / (X @ K.T)[:, 2:]
    K_net = tr.intrinsics_to_network(K_orig)
    assert np.allclose(project(K_net), tr.to_network(project(K_orig)))
    assert np.allclose(tr.intrinsics_to_original(K_net), K_orig)


def test_network_image_centre_maps_to_original_centre_when_not_cropped_off_centre():
    tr = preprocess_frames([_frame(480, 640)], PreprocessOptions(mode="pad")).transforms[0]
    h, w = tr.network_hw
    assert np.allclose(tr.to_original([[w / 2, h / 2]]), [[320.0, 240.0]])


def test_an_edge_lands_where_the_transform_says():
    # upscaling by ~2.6 separates the conventions: mixing them up moves the edge by ~0.8 px
    frame = np.zeros((150, 200, 3), np.uint8)
    frame[:, 61:] = 255  # vertical edge at x = 61 ("colmap": between pixel columns 60 and 61)
    frame[97:, :] = 255  # horizontal edge at y = 97
    out = preprocess_frames([frame], PreprocessOptions(mode="pad"))
    tr = out.transforms[0]
    img = out.images[0, 0].numpy()
    ex, ey = tr.to_network([[61.0, 97.0]])[0]
    row, col = img[int(ey * 0.5), :], img[:, int(ex * 0.5)]
    x_half = np.interp(
        0.5, row[: int(ex) + 4], np.arange(int(ex) + 4) + 0.5
    )  # where the ramp crosses 0.5
    y_half = np.interp(
        0.5,
        col[int(tr.offset_xy[1]) + 1 : int(ey) + 4],
        np.arange(int(tr.offset_xy[1]) + 1, int(ey) + 4) + 0.5,
    )
    assert abs(x_half - ex) < 0.1 and abs(y_half - ey) < 0.1


def test_mixed_sizes_are_padded_to_a_common_size():
    out = preprocess_frames([_frame(480, 640), _frame(600, 640), _frame(640, 480)])
    assert out.images.shape[0] == 3
    hws = {tr.network_hw for tr in out.transforms}
    assert hws == {tuple(out.images.shape[2:])}
    first = out.transforms[0]
    assert first.offset_xy[1] > 0 and bool((out.images[0, :, 0] == 1.0).all())


def test_rgba_is_composited_on_white_and_bad_input_is_rejected():
    rgba = np.zeros((28, 28, 4), np.uint8)
    out = preprocess_frames([rgba])  # fully transparent -> white
    assert torch.allclose(out.images, torch.ones_like(out.images))
    for bad in ([np.zeros((10, 10, 3), np.float32)], [np.zeros((10, 10), np.uint8)], []):
        with pytest.raises(ValueError):
            preprocess_frames(bad)
    with pytest.raises(ValueError):
        preprocess_frames([_frame(10, 10)], PreprocessOptions(mode="stretch"))


def test_transform_matrix_is_affine():
    tr = FrameTransform(
        original_hw=(100, 200), resized_hw=(50, 100), offset_xy=(3.0, -4.0), network_hw=(42, 106)
    )
    assert np.allclose(tr.matrix, [[0.5, 0, 3.0], [0, 0.5, -4.0], [0, 0, 1]])


@pytest.mark.parametrize(
    "hw, method, steps",
    [
        ((240, 320), "upper_bound_resize", [((378, 504), "cubic")]),
        ((750, 1000), "upper_bound_resize", [((378, 504), "area")]),
        ((481, 640), "upper_bound_resize", [((379, 504), "area"), ((378, 504), "area")]),
        ((241, 320), "lower_bound_resize", [((504, 669), "cubic"), ((504, 672), "cubic")]),
    ],
)
def test_da3_pixels_equal_the_references_opencv_resizes(hw, method, steps):
    """DA3's InputProcessor: cv2 INTER_CUBIC when enlarging, INTER_AREA when shrinking, on uint8."""
    import cv2

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    expected = frame
    for (h, w), mode in steps:
        flag = cv2.INTER_CUBIC if mode == "cubic" else cv2.INTER_AREA
        expected = cv2.resize(expected, (w, h), interpolation=flag)
    out = preprocess_frames([frame], PreprocessOptions(mode=method, process_res=504)).images[0]
    torch.testing.assert_close(
        out, torch.from_numpy(expected / 255.0).permute(2, 0, 1).float(), rtol=0, atol=1e-7
    )
