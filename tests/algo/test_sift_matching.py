"""Exact SIFT matching: COLMAP's nearest-neighbour tests on exact integer distances, the same
database whatever the thread count, and as many verified matches as pycolmap's own matcher on
the bundled sequence."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import numpy as np
import pycolmap
import pytest

from conftest import TESTDATA
from pipeline.algo import sift_matching as sm
from pipeline.algo.classical_sfm import extract_in_order
from pipeline.reconstructors.colmap import ColmapOptions

SIFT = SimpleNamespace(max_ratio=0.8, max_distance=0.7, cross_check=True)


def reference_matches(d1: np.ndarray, d2: np.ndarray, sift) -> np.ndarray:
    """COLMAP's ``FindBestMatchesIndex`` on exact squared L2 distances (int64, brute force)."""
    dist = ((d1[:, None, :].astype(np.int64) - d2[None, :, :].astype(np.int64)) ** 2).sum(-1)

    def one_way(dist):
        out = np.full(len(dist), -1)
        for i, row in enumerate(dist):
            order = np.argsort(row, kind="stable")
            best = row[order[0]]
            second = row[order[1]] if len(row) > 1 else np.inf
            if best > 512.0 ** 2 * sift.max_distance ** 2:
                continue
            if np.sqrt(best) >= sift.max_ratio * np.sqrt(second):
                continue
            out[i] = order[0]
        return out

    forward = one_way(dist)
    keep = [(i, j) for i, j in enumerate(forward) if j >= 0]
    if sift.cross_check:
        backward = one_way(dist.T)
        keep = [(i, j) for i, j in keep if backward[j] == i]
    return np.array(keep, dtype=np.uint32).reshape(-1, 2)


def sift_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 128)`` uint8 descriptors normalised to about 512, as COLMAP stores them."""
    d = rng.random((n, 128)) ** 3
    d = 512 * d / np.linalg.norm(d, axis=1, keepdims=True)
    return np.minimum(np.round(d), 255).astype(np.uint8)


def noisy_copy(rng: np.random.Generator, d: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(d.astype(np.int64) + rng.normal(0, sigma, d.shape).round(), 0,
                   255).astype(np.uint8)


@pytest.mark.parametrize("cross_check", [True, False])
@pytest.mark.parametrize("max_ratio,max_distance", [(0.8, 0.7), (0.95, 1.0), (0.6, 0.3)])
def test_matches_are_colmaps_tests_on_exact_distances(cross_check, max_ratio, max_distance):
    rng = np.random.default_rng(0)
    d1 = sift_like(rng, 300)
    d2 = np.concatenate([noisy_copy(rng, d1[:150], 6.0), sift_like(rng, 200),
                         noisy_copy(rng, d1[150:200], 25.0)])[rng.permutation(400)]
    sift = SimpleNamespace(max_ratio=max_ratio, max_distance=max_distance,
                           cross_check=cross_check)
    got = sm.match_descriptors(sm._Descriptors(d1), sm._Descriptors(d2), sift)
    want = reference_matches(d1, d2, sift)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, want)
    if (max_ratio, max_distance) == (0.8, 0.7):
        assert 120 <= len(got) <= 200  # the planted near copies, not the random rest


def test_extreme_bytes_give_exact_distances():
    """All-0 and all-255 descriptors: the largest distance (128 * 255**2) is exact in int32."""
    d1 = np.array([[0] * 128, [255] * 128, [255] * 64 + [0] * 64], np.uint8)
    d2 = np.array([[255] * 128, [0] * 128, [1] * 128], np.uint8)
    nearest, best, second = sm._nearest_two(sm._Descriptors(d1), sm._Descriptors(d2))
    dist = ((d1[:, None].astype(np.int64) - d2[None].astype(np.int64)) ** 2).sum(-1)
    np.testing.assert_array_equal(nearest, dist.argmin(1))
    np.testing.assert_array_equal(best, np.sort(dist, 1)[:, 0])
    np.testing.assert_array_equal(second, np.sort(dist, 1)[:, 1])
    assert best[0] == 0 and dist.max() == 128 * 255 ** 2


def test_one_or_no_descriptor():
    rng = np.random.default_rng(1)
    d = sift_like(rng, 5)
    one = sm._Descriptors(d[:1])
    got = sm.match_descriptors(sm._Descriptors(d), one, SIFT)
    np.testing.assert_array_equal(got, reference_matches(d, d[:1], SIFT))
    assert got.tolist() == [[0, 0]]  # a lone candidate passes the ratio test (second = inf)
    empty = sm._Descriptors(np.zeros((0, 128), np.uint8))
    assert sm.match_descriptors(empty, one, SIFT).shape == (0, 2)
    assert sm.match_descriptors(one, empty, SIFT).shape == (0, 2)
    with pytest.raises(ValueError, match="uint8"):
        sm._Descriptors(d.astype(np.float32))


def test_the_float_product_gives_the_same_matches(monkeypatch):
    """Where torch has no int8 product the float32 one is used, and is exact as well."""
    import torch

    rng = np.random.default_rng(2)
    d1, d2 = sift_like(rng, 200), sift_like(rng, 150)
    d2[:100] = noisy_copy(rng, d1[:100], 5.0)
    a, b = sm._Descriptors(d1), sm._Descriptors(d2)
    fast = sm.match_descriptors(a, b, SIFT)

    def no_int_mm(*args):
        raise RuntimeError("no int8 kernel")

    monkeypatch.setattr(torch, "_int_mm", no_int_mm)
    np.testing.assert_array_equal(sm.match_descriptors(a, b, SIFT), fast)
    assert len(fast) > 50


def test_row_blocks_change_nothing(monkeypatch):
    """Descriptors are looked up in blocks of rows (bounded memory): any block size gives the
    same matches."""
    rng = np.random.default_rng(3)
    d1, d2 = sift_like(rng, 100), sift_like(rng, 90)
    d2[:60] = noisy_copy(rng, d1[:60], 5.0)
    a, b = sm._Descriptors(d1), sm._Descriptors(d2)
    whole = sm.match_descriptors(a, b, SIFT)
    monkeypatch.setattr(sm, "ROW_BLOCK", 7)
    np.testing.assert_array_equal(sm.match_descriptors(a, b, SIFT), whole)
    np.testing.assert_array_equal(whole, reference_matches(d1, d2, SIFT))


def test_only_sift_nearest_neighbour_matching_is_exact():
    options = pycolmap.FeatureMatchingOptions()
    assert sm.exact_applies(options) and sm.matcher_name(options) == sm.EXACT_MATCHER
    options.guided_matching = True
    assert not sm.exact_applies(options)
    assert sm.matcher_name(options).startswith("pycolmap-")
    options = pycolmap.FeatureMatchingOptions()
    options.type = pycolmap.FeatureMatcherType.SIFT_LIGHTGLUE
    assert not sm.exact_applies(options)


@pytest.fixture(scope="module")
def feature_db(tmp_path_factory):
    """A COLMAP database with the SIFT features of the first 10 bundled frames."""
    folder = tmp_path_factory.mktemp("features")
    images = sorted((TESTDATA / "images").iterdir())[:10]
    db = folder / "database.db"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = 1
    extract_in_order(db, TESTDATA / "images", [p.name for p in images],
                     camera_mode=pycolmap.CameraMode.SINGLE,
                     reader=pycolmap.ImageReaderOptions(), extraction=extraction)
    names = [p.name for p in images]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:i + 4]]
    return db, pairs


def tables(db, *names):
    with sqlite3.connect(db) as c:
        return [c.execute(f"select * from {t} order by 1").fetchall() for t in names]


def copy_db(source, target):
    target.write_bytes(source.read_bytes())
    return target


def test_the_database_is_the_same_whatever_the_thread_count(feature_db, tmp_path):
    db, pairs = feature_db
    options = ColmapOptions()
    results = []
    for threads in (1, 3):
        copy = copy_db(db, tmp_path / f"t{threads}.db")
        sm.match_and_verify(copy, pairs, options.matching, options.verification, threads,
                            tmp_path / "pairs.txt")
        results.append(tables(copy, "matches", "two_view_geometries"))
    assert results[0] == results[1]
    matches, geometries = results[0]
    assert len(matches) == len(geometries) == len(pairs)
    # every pair's stored matches are what match_descriptors gives
    handle = pycolmap.Database.open(str(tmp_path / "t1.db"))
    try:
        ids = {image.name: image.image_id for image in handle.read_all_images()}
        for a, b in pairs[:4]:
            want = sm.match_descriptors(
                sm._Descriptors(np.asarray(handle.read_descriptors(ids[a]).data)),
                sm._Descriptors(np.asarray(handle.read_descriptors(ids[b]).data)),
                options.matching.sift)
            np.testing.assert_array_equal(handle.read_matches(ids[a], ids[b]), want)
    finally:
        handle.close()


def test_pairs_already_matched_are_kept_and_progress_is_told(feature_db, tmp_path):
    db, pairs = feature_db
    options = ColmapOptions()
    copy = copy_db(db, tmp_path / "d.db")
    said = []
    sm.match_pairs(copy, pairs[:5], options.matching, 2, on_pair=said.append)
    assert said == [1, 2, 3, 4, 5]
    first = tables(copy, "matches")
    sm.match_pairs(copy, pairs, options.matching, 2)
    second = tables(copy, "matches")[0]
    assert set(first[0]) <= set(second) and len(second) == len(pairs)
    again = [pairs[0], pairs[0][::-1], (pairs[0][0], pairs[0][0])]
    fresh = copy_db(db, tmp_path / "e.db")
    sm.match_pairs(fresh, again, options.matching, 2)  # a repeat, reversed, self: one pair
    assert len(tables(fresh, "matches")[0]) == 1
    with pytest.raises(KeyError):
        sm.match_pairs(copy, [(pairs[0][0], "missing.png")], options.matching, 1)


def test_as_many_verified_matches_as_pycolmaps_matcher(feature_db, tmp_path):
    """On real images, exact search finds what pycolmap's approximate one finds (the same
    pairs verified, within 3% as many inliers)."""
    db, pairs = feature_db
    options = ColmapOptions()
    exact = copy_db(db, tmp_path / "exact.db")
    sm.match_and_verify(exact, pairs, options.matching, options.verification, 2,
                        tmp_path / "pairs.txt")
    theirs = copy_db(db, tmp_path / "theirs.db")
    imported = pycolmap.ImportedPairingOptions()
    (tmp_path / "list.txt").write_text("".join(f"{a} {b}\n" for a, b in pairs))
    imported.match_list_path = tmp_path / "list.txt"
    pycolmap.match_image_pairs(theirs, matching_options=pycolmap.FeatureMatchingOptions(),
                               pairing_options=imported, verification_options=options.verification,
                               device=pycolmap.Device.cpu)

    def inliers(db):
        with sqlite3.connect(db) as c:
            return dict(c.execute("select pair_id, rows from two_view_geometries"))

    ours, reference = inliers(exact), inliers(theirs)
    assert ours.keys() == reference.keys()
    assert sum(ours.values()) == pytest.approx(sum(reference.values()), rel=0.03)
    assert sum(v >= 15 for v in ours.values()) == sum(v >= 15 for v in reference.values())


def test_other_matchers_are_pycolmaps(feature_db, tmp_path):
    """Guided matching is not exact matching: pycolmap's matcher makes the matches."""
    db, pairs = feature_db
    options = ColmapOptions()
    matching = pycolmap.FeatureMatchingOptions()
    matching.guided_matching = True
    copy = copy_db(db, tmp_path / "guided.db")
    sm.match_and_verify(copy, pairs[:3], matching, options.verification, 1,
                        tmp_path / "pairs.txt")
    assert (tmp_path / "pairs.txt").read_text().count("\n") == 3
    assert len(tables(copy, "two_view_geometries")[0]) == 3
