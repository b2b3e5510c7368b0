"""Exact SIFT matching (:mod:`pipeline.algo.sift_matching`) against pycolmap's FAISS matcher,
on the pairs of the 7-Scenes feature store (first 200 frames, 2 threads), side by side.

    python benchmarks/bench_matching.py [--parallel 2] [--rounds 3]

The features are extracted once; each matcher then matches and verifies every pair of a copy
of that database, ``--parallel`` copies at once in separate processes (as the pipeline's
workers share the cores), ``--rounds`` times. Reported per matcher: seconds per copy, raw and
verified matches of the first copy, and how many copies differ from the first in any raw match
or geometry. Skips (exit 0) when ``../shared/data/real/7scenes_redkitchen_000_199`` is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_store_progress import DATA, store_inputs  # noqa: E402

import pipeline.algo.classical_sfm as seq  # noqa: E402
from pipeline.reconstructors.colmap import ColmapOptions  # noqa: E402

THREADS = 2


def match_copy(source: str, target: str, pairs: list[tuple[str, str]], exact: bool
               ) -> tuple[float, str, tuple[int, int, int]]:
    """Match and verify ``pairs`` in a copy of ``source``; (seconds, digest, counts)."""
    import pycolmap

    from pipeline.algo import sift_matching

    shutil.copy(source, target)
    options = ColmapOptions()
    pycolmap.logging.minloglevel = 3
    start = time.perf_counter()
    if exact:
        sift_matching.match_and_verify(Path(target), pairs, options.matching,
                                       options.verification, THREADS,
                                       Path(target).with_suffix(".txt"))
    else:
        listed = Path(target).with_suffix(".txt")
        listed.write_text("".join(f"{a} {b}\n" for a, b in pairs))
        imported = pycolmap.ImportedPairingOptions()
        imported.match_list_path = listed
        matching = options.matching
        matching.num_threads = THREADS
        pycolmap.match_image_pairs(target, matching_options=matching,
                                   pairing_options=imported,
                                   verification_options=options.verification,
                                   device=pycolmap.Device.cpu)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    with sqlite3.connect(target) as db:
        for table in ("matches", "two_view_geometries"):
            for row in db.execute(f"select * from {table} order by pair_id"):
                digest.update(repr(row).encode())
        raw = db.execute("select sum(rows) from matches").fetchone()[0]
        inliers, verified = db.execute(
            "select sum(rows), sum(rows >= 15) from two_view_geometries").fetchone()
    return seconds, digest.hexdigest(), (raw, inliers, verified)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parallel", type=int, default=2, help="copies matched at once")
    parser.add_argument("--rounds", type=int, default=3, help="times each matcher runs")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found")
        return 0
    frames, pairs = store_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        seq.build_store(store, frames, [], replace(ColmapOptions(), num_threads=THREADS))
        print(f"{len(frames)} frames, {len(pairs)} pairs, {THREADS} threads per copy, "
              f"{args.parallel} copies at once\n")
        print("| matcher | s per copy | raw matches | inliers | pairs >= 15 inliers | "
              "copies unlike the first |\n|---|---|---|---|---|---|")
        with ProcessPoolExecutor(args.parallel) as pool:
            for label, exact in (("pycolmap (FAISS)", False), ("exact", True)):
                results = []
                for r in range(args.rounds):
                    jobs = [pool.submit(match_copy, str(store / "database.db"),
                                        str(Path(tmp) / f"{exact}-{r}-{k}.db"), pairs, exact)
                            for k in range(args.parallel)]
                    results += [job.result() for job in jobs]
                seconds = sorted(s for s, _, _ in results)
                unlike = sum(d != results[0][1] for _, d, _ in results)
                raw, inliers, verified = results[0][2]
                print(f"| {label} | {seconds[0]:.1f}-{seconds[-1]:.1f} | {raw} | {inliers} | "
                      f"{verified} | {unlike} of {len(results) - 1} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
