"""Exact SIFT matching of image pairs into a COLMAP database: the same matches on every run.

pycolmap's CPU matcher looks each descriptor up in a FAISS IVF index of the other image
(k-means cells, 8 of them probed): approximate, and not repeatable. Measured here on the
7-Scenes feature store (200 frames, 2342 pairs, two stores matched at once): 1 run in 4 gave
35-39 pairs other raw matches, all the pairs of one or two images whose index came out
different (one pair 492 matches instead of 196), with ``OMP_NUM_THREADS=1`` too; the
geometries, focal lengths and poses built on them moved with them. COLMAP's own brute-force
CPU matcher is exact but about 20 times slower.

This module finds the same nearest neighbours exactly and fast. SIFT descriptors are 128 bytes;
squared L2 distances between them are integers below ``2 * 128 * 255**2 < 2**31``, computed as
an int8 matrix product (``torch._int_mm``, descriptors shifted by -128 and the shift added back)
in int32: exact whatever the summation order, thread count or machine. The tests are COLMAP's
(``FindBestMatchesIndex``): a descriptor's nearest neighbour in the other image is its match if
its squared distance is at most ``(512 * max_distance)**2`` (descriptors are normalised to 512),
if ``sqrt(best) < max_ratio * sqrt(second best)``, and, with ``cross_check``, if the match is
also the other descriptor's own best. Matches are written in order of the first image's
keypoints, then verified by pycolmap (:func:`pycolmap.geometric_verification`, seeded RANSAC).
On the 7-Scenes store this takes the time pycolmap's matcher takes (BENCHMARKS.md, "Exact SIFT
matching").
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from .colmap_options import copy_options

logger = logging.getLogger(__name__)

SIFT_DIM = 128
"""Length of a SIFT descriptor (uint8)."""
SQ_DESCRIPTOR_NORM = 512.0 ** 2
"""Squared norm of a normalised COLMAP SIFT descriptor, the unit of ``max_distance``."""
ROW_BLOCK = 256
"""Descriptors looked up per matrix product: its int32 distances (``ROW_BLOCK * N2 * 4`` bytes,
8 MiB against an image of 8192 features) stay in the cache for the top-2 search. Measured on
one core (2 cores, AMD EPYC): 8192 x 8192 descriptors 142 ms with 256 rows per product, 270 ms
with 2048 or all; 2400 x 2400 12 ms against 17 ms."""


def exact_applies(matching: pycolmap.FeatureMatchingOptions) -> bool:
    """Whether ``matching`` asks for what :func:`match_pairs` computes: SIFT descriptors matched
    by nearest neighbours, not guided by the geometry. Other matchers (LightGlue, ALIKED, ...)
    are pycolmap's."""
    return (matching.type == pycolmap.FeatureMatcherType.SIFT_BRUTEFORCE
            and not matching.guided_matching and not matching.skip_geometric_verification)


EXACT_MATCHER = "exact-sift-l2/1"
"""Name and version of this module's matching, in resume signatures and the store's key: bumped
when its matches change."""


def matcher_name(matching: pycolmap.FeatureMatchingOptions) -> str:
    """What makes the raw matches for ``matching``: :data:`EXACT_MATCHER`, or pycolmap's."""
    return EXACT_MATCHER if exact_applies(matching) else f"pycolmap-{pycolmap.__version__}"


class _Descriptors:
    """One image's descriptors, kept in the forms the products need.

    Attributes:
        shifted: ``(N, 128)`` int8 tensor, descriptor bytes minus 128.
        shifted_t: ``(128, N)`` int8 tensor, the same transposed (contiguous).
        offset: ``(N,)`` int32 tensor, ``|d|^2 - 256 * sum(d - 128) - 128**3`` of each descriptor:
            with it ``|d1 - d2|^2 = offset1 + offset2 - 2 * (d1 - 128).(d2 - 128)``.
    """

    def __init__(self, data: np.ndarray) -> None:
        import torch

        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != SIFT_DIM:
            raise ValueError(f"SIFT descriptors must be (N, {SIFT_DIM}) uint8, "
                             f"got {data.dtype} {data.shape}")
        wide = data.astype(np.int32)
        shifted = wide - 128
        self.shifted = torch.from_numpy(shifted.astype(np.int8))
        self.shifted_t = self.shifted.T.contiguous()
        offset = (wide * wide).sum(1) - 256 * shifted.sum(1) - 128 ** 3
        self.offset = torch.from_numpy(offset.astype(np.int32))

    def __len__(self) -> int:
        return int(self.shifted.shape[0])


def _product(a: Any, b: Any) -> Any:
    """``a @ b`` of int8 tensors ``(n, 128)`` and ``(128, m)`` as int32, exactly: an int8 product
    where torch has one for this machine, else float32 (each partial sum is an integer below
    ``128 * 128**2 < 2**24``, so float32 holds it exactly too)."""
    import torch

    int_mm = getattr(torch, "_int_mm", None)
    if int_mm is not None:
        try:
            return int_mm(a, b)
        except RuntimeError:  # no int8 kernel for this build or machine
            logger.debug("torch._int_mm unavailable, float32 product", exc_info=True)
    return (a.to(torch.float32) @ b.to(torch.float32)).to(torch.int32)


def _nearest_two(query: _Descriptors, index: _Descriptors, rows: Any = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query descriptor's nearest and second nearest descriptor of ``index``, exactly.

    Args:
        query: Descriptors looked up (N1 of them).
        index: Descriptors searched (N2 >= 1).
        rows: Optional int64 tensor of the query descriptors to look up (all when None).

    Returns:
        ``(best_index, best_sq_dist, second_sq_dist)``, each of the looked-up rows: int64,
        int64 and float64 (``inf`` when ``index`` holds one descriptor).
    """
    import torch

    shifted = query.shifted if rows is None else query.shifted[rows]
    offset = query.offset if rows is None else query.offset[rows]
    k = min(2, len(index))
    values, indices = [], []
    for start in range(0, max(1, len(shifted)), ROW_BLOCK):
        product = _product(shifted[start:start + ROW_BLOCK], index.shifted_t)  # int32, exact
        product.mul_(-2).add_(index.offset[None, :])  # |d1 - d2|^2 - offset1, still exact
        block_values, block_indices = torch.topk(product, k, dim=1, largest=False, sorted=True)
        values.append(block_values)
        indices.append(block_indices)
    value = torch.cat(values).to(torch.int64) + offset.to(torch.int64)[:, None]
    best = value[:, 0].numpy()
    second = (value[:, 1].numpy().astype(np.float64) if k == 2
              else np.full(len(best), np.inf))
    return torch.cat(indices)[:, 0].numpy().astype(np.int64), best, second


def _passes(best: np.ndarray, second: np.ndarray, sift: Any) -> np.ndarray:
    """COLMAP's distance and ratio tests on squared distances (boolean mask)."""
    max_sq = SQ_DESCRIPTOR_NORM * float(sift.max_distance) ** 2
    best = best.astype(np.float64)
    return (best <= max_sq) & (np.sqrt(best) < float(sift.max_ratio) * np.sqrt(second))


def match_descriptors(first: _Descriptors, second: _Descriptors, sift: Any) -> np.ndarray:
    """Matches between two images' descriptors (see the module's docstring).

    Args:
        first: The first image's descriptors.
        second: The second image's.
        sift: :class:`pycolmap.SiftMatchingOptions` (``max_ratio``, ``max_distance``,
            ``cross_check``).

    Returns:
        ``(M, 2)`` uint32 array of ``(keypoint in first, keypoint in second)``, sorted by the
        first column.
    """
    import torch

    if len(first) == 0 or len(second) == 0:
        return np.zeros((0, 2), np.uint32)
    nearest, best, runner_up = _nearest_two(first, second)
    keep = np.flatnonzero(_passes(best, runner_up, sift))
    matches = np.stack([keep, nearest[keep]], axis=1)
    if sift.cross_check and len(matches):
        # only the candidates' own nearest neighbours are needed, not every column's
        targets = np.unique(matches[:, 1])
        back, back_best, back_second = _nearest_two(second, first,
                                                    torch.from_numpy(targets))
        ok = _passes(back_best, back_second, sift)
        owner = np.full(len(second), -1, np.int64)
        owner[targets[ok]] = back[ok]
        matches = matches[owner[matches[:, 1]] == matches[:, 0]]
    return matches.astype(np.uint32)


def match_pairs(
    database: Path,
    pairs: Sequence[tuple[str, str]],
    matching: pycolmap.FeatureMatchingOptions,
    num_threads: int,
    on_pair: Callable[[int], None] | None = None,
) -> None:
    """Match ``pairs`` of images of ``database`` exactly and write their raw matches.

    Pairs that already have matches, repeated pairs and an image paired with itself are
    skipped. ``num_threads`` threads match whole pairs, each product on one thread (torch's own
    threads wait on each other at every operation: two processes matching the 7-Scenes store at
    once took 140 s each that way, 73 s this way); the matches are written in the order of
    ``pairs``. Each image's descriptors are read once and
    dropped after its last pair, so memory holds only the images of pairs in flight.

    Args:
        database: A COLMAP database with the images' SIFT descriptors.
        pairs: Image-name pairs, matched in this order.
        matching: pycolmap's matching options (``sift`` is read; see :func:`exact_applies`).
        num_threads: Pairs matched at once.
        on_pair: Called with the number of pairs done, after each pair.

    Raises:
        KeyError: A name is not an image of the database.
    """
    import torch

    last_use = {name: i for i, pair in enumerate(pairs) for name in pair}
    kept: dict[str, _Descriptors] = {}
    seen: set[tuple[int, int]] = set()
    in_flight: deque[tuple[int, int, int, Future[np.ndarray] | None]] = deque()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    db = pycolmap.Database.open(str(database))
    workers = max(1, num_threads)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="sift-match") as pool:
            ids = {image.name: image.image_id for image in db.read_all_images()}
            for i, (name1, name2) in enumerate(pairs):
                id1, id2 = ids[name1], ids[name2]
                job, key = None, (min(id1, id2), max(id1, id2))
                if id1 != id2 and key not in seen and not db.exists_matches(id1, id2):
                    seen.add(key)
                    for name, image_id in ((name1, id1), (name2, id2)):
                        if name not in kept:
                            kept[name] = _Descriptors(
                                np.asarray(db.read_descriptors(image_id).data))
                    job = pool.submit(match_descriptors, kept[name1], kept[name2],
                                      matching.sift)
                in_flight.append((i, id1, id2, job))
                for name in (name1, name2):
                    if last_use[name] == i:
                        kept.pop(name, None)
                while len(in_flight) > 2 * workers:
                    _write_next(db, in_flight, on_pair)
            while in_flight:
                _write_next(db, in_flight, on_pair)
    finally:
        db.close()
        torch.set_num_threads(threads)


def _write_next(db: pycolmap.Database,
                in_flight: deque[tuple[int, int, int, Future[np.ndarray] | None]],
                on_pair: Callable[[int], None] | None) -> None:
    """Write the oldest pair's matches (waiting for them) and report it done."""
    i, id1, id2, job = in_flight.popleft()
    if job is not None:
        db.write_matches(id1, id2, job.result())
    if on_pair is not None:
        on_pair(i + 1)


def verify_pairs(database: Path, verification: pycolmap.TwoViewGeometryOptions,
                 num_threads: int) -> None:
    """Two-view geometry of every matched pair of ``database`` that has none yet: pycolmap's
    verification, on ``num_threads`` threads (its RANSAC is seeded per pair by
    ``verification.ransac.random_seed``, so which thread verifies a pair does not matter)."""
    verifier = pycolmap.GeometricVerifierOptions()
    verifier.num_threads = max(1, num_threads)
    pycolmap.geometric_verification(
        database,
        verifier_options=verifier,
        pairing_options=pycolmap.ExistingMatchedPairingOptions(),
        two_view_geometry_options=verification,
    )


def match_and_verify(
    database: Path,
    pairs: Sequence[tuple[str, str]],
    matching: pycolmap.FeatureMatchingOptions,
    verification: pycolmap.TwoViewGeometryOptions,
    num_threads: int,
    pairs_file: Path,
) -> None:
    """Raw matches and two-view geometries of ``pairs`` of images of ``database``.

    SIFT matching (the default) is this module's exact matching (:func:`match_pairs`; pycolmap's
    ``max_num_matches`` bounds GPU memory and does not apply), then :func:`verify_pairs`. Other
    matchers are pycolmap's (:func:`pycolmap.match_image_pairs`, the pairs listed in
    ``pairs_file``).
    """
    if exact_applies(matching):
        match_pairs(database, pairs, matching, num_threads)
        verify_pairs(database, verification, num_threads)
        return
    pairs_file.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    imported = pycolmap.ImportedPairingOptions()
    imported.match_list_path = pairs_file
    options = copy_options(matching)
    options.num_threads = num_threads
    pycolmap.match_image_pairs(database, matching_options=options, pairing_options=imported,
                               verification_options=verification, device=pycolmap.Device.cpu)
