"""Windows cover every frame exactly as documented, and batches group equal shapes."""

import unittest
from pathlib import Path

from pipeline.core.windows import (
    WINDOWS_PER_BATCH_DIR,
    Window,
    create_windows,
    make_batches,
    take_batch,
    window_relative_dir,
)


def spans(windows):
    return [(w.start, w.stop) for w in windows]


class CreateWindowsTest(unittest.TestCase):
    def test_even_division(self):
        windows = create_windows([f"f{i}" for i in range(16)], 8, 4)
        self.assertEqual(spans(windows), [(0, 8), (4, 12), (8, 16)])
        self.assertEqual([w.index for w in windows], [0, 1, 2])

    def test_tail_window_ends_on_last_frame(self):
        windows = create_windows(list(range(18)), 8, 4)
        self.assertEqual(spans(windows), [(0, 8), (4, 12), (8, 16), (10, 18)])

    def test_no_duplicate_tail_when_last_window_already_ends_on_last_frame(self):
        windows = create_windows(list(range(12)), 8, 4)
        self.assertEqual(spans(windows), [(0, 8), (4, 12)])

    def test_every_frame_covered_for_many_shapes(self):
        for n in range(2, 40):
            for size in range(2, 10):
                for stride in range(1, size + 1):
                    windows = create_windows(list(range(n)), size, stride)
                    covered = {i for w in windows for i in w.items}
                    self.assertEqual(covered, set(range(n)), (n, size, stride))
                    self.assertEqual(len(set(spans(windows))), len(windows))
                    self.assertEqual(windows[-1].stop, n)
                    self.assertTrue(all(len(w) == min(size, n) for w in windows))

    def test_fewer_frames_than_window_gives_one_window(self):
        windows = create_windows(["a", "b", "c"], 8, 4)
        self.assertEqual(len(windows), 1)
        self.assertEqual(windows[0].items, ("a", "b", "c"))

    def test_exactly_window_size(self):
        self.assertEqual(spans(create_windows(list(range(8)), 8, 4)), [(0, 8)])

    def test_invalid_arguments(self):
        cases = [(list(range(10)), 1, 1, "window size"),
                 (list(range(10)), 8, 0, "stride"),
                 (list(range(10)), 4, 5, "must not exceed"),
                 (["only"], 8, 4, "at least 2 frames"),
                 ([], 8, 4, "at least 2 frames"),
                 (list(range(10)), 8.0, 4, "window size")]
        for frames, size, stride, message in cases:
            with self.assertRaisesRegex(ValueError, message):
                create_windows(frames, size, stride)

    def test_indices_are_stable(self):
        a = create_windows(list(range(30)), 8, 4)
        b = create_windows(list(range(30)), 8, 4)
        self.assertEqual([(w.index, w.start) for w in a], [(w.index, w.start) for w in b])


class OutputPathTest(unittest.TestCase):
    def test_path_depends_only_on_window_index(self):
        self.assertEqual(window_relative_dir(0), Path("batch_000/window_000"))
        self.assertEqual(window_relative_dir(WINDOWS_PER_BATCH_DIR + 1),
                         Path("batch_001/window_005"))
        self.assertEqual(Window(7, 0, ("a",)).relative_dir, window_relative_dir(7))


class MakeBatchesTest(unittest.TestCase):
    def test_batches_respect_size_and_order(self):
        windows = create_windows(list(range(40)), 8, 4)
        batches = make_batches(windows, 3)
        self.assertEqual([len(b) for b in batches], [3, 3, 3])
        self.assertEqual([w.index for b in batches for w in b.windows], list(range(9)))
        self.assertEqual([b.index for b in batches], [0, 1, 2])

    def test_different_image_sizes_never_share_a_batch(self):
        sizes = {i: (320, 240) if i < 12 else (640, 480) for i in range(24)}
        windows = create_windows(list(range(24)), 4, 4)
        batches = make_batches(windows, 4, size_of=sizes.__getitem__)
        for batch in batches:
            keys = {tuple(sizes[i] for i in w.items) for w in batch.windows}
            self.assertEqual(len(keys), 1)
        self.assertEqual([len(b) for b in batches], [3, 3])

    def test_different_frame_counts_never_share_a_batch(self):
        windows = [Window(0, 0, (0, 1, 2)), Window(1, 3, (3, 4)), Window(2, 5, (5, 6, 7))]
        batches = make_batches(windows, 4)
        self.assertEqual([[w.index for w in b.windows] for b in batches], [[0, 2], [1]])

    def test_invalid_batch_size(self):
        for bad in (0, -1, 1.5, True):
            with self.assertRaisesRegex(ValueError, "batch size"):
                make_batches([], bad)


class TakeBatchTest(unittest.TestCase):
    def test_sizes_chosen_batch_by_batch_keep_order_and_shape(self):
        sizes = {i: (320, 240) if i < 12 else (640, 480) for i in range(24)}
        pending = create_windows(list(range(24)), 4, 4)
        batches = []
        for size in (1, 4, 4):
            batch, pending = take_batch(pending, size, len(batches), size_of=sizes.__getitem__)
            batches.append(batch)
        self.assertEqual([[w.index for w in b.windows] for b in batches], [[0], [1, 2], [3, 4, 5]])
        self.assertEqual(([b.index for b in batches], pending), ([0, 1, 2], []))

    def test_invalid(self):
        with self.assertRaisesRegex(ValueError, "no windows"):
            take_batch([], 1, 0)
        with self.assertRaisesRegex(ValueError, "batch size"):
            take_batch(create_windows(list(range(8)), 4, 4), 0, 0)


if __name__ == "__main__":
    unittest.main()
