"""The memory governor's measurements and batch sizing (pipeline/memory.py)."""

from __future__ import annotations

import unittest

import numpy as np

from pipeline.infra.memory import (
    BatchObservation,
    MemoryGovernor,
    PeakMeter,
    StageTable,
    budget_mb,
    can_reset_cpu_peak,
    current_mb,
    lower_resolutions,
    settle,
)


@unittest.skipUnless(can_reset_cpu_peak(), "needs Linux /proc/self/clear_refs")
class PeakMeterTest(unittest.TestCase):
    def test_nested_spans_see_their_own_and_inner_peaks(self):
        meter = PeakMeter()
        settle()
        with meter.measure() as outer:
            big = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
            del big
            settle()
            with meter.measure() as inner:
                small = np.ones(50 * 2**20 // 8)  # 50 MiB
                del small
        self.assertGreater(outer.peak_mb - outer.held_mb, 280)  # the inner reset lost nothing
        self.assertGreater(inner.peak_mb - inner.held_mb, 45)
        self.assertLess(inner.peak_mb - inner.held_mb, 200)  # the outer's 300 MiB came before
        self.assertEqual(outer.peak_mb, outer.rss_peak_mb)  # on the CPU both are the RSS
        self.assertGreater(outer.seconds, 0)

    def test_stage_stores_the_span(self):
        meter, stages = PeakMeter(), {}
        with meter.stage("work", stages):
            np.ones(10 * 2**20 // 8)
        self.assertEqual(set(stages["work"]), {"held_mb", "peak_mb", "rss_peak_mb", "seconds"})


class GovernorTest(unittest.TestCase):
    def governor(self, **kwargs):
        return MemoryGovernor(budget_mb=10_000, **kwargs)

    def test_one_window_until_measured_then_what_fits(self):
        g = self.governor()
        self.assertEqual(g.windows_per_batch(), 1)
        self.assertIsNone(g.predicted_peak_mb(2))
        g.observe(BatchObservation(windows=1, held_mb=2000, peak_mb=3000, process_res=518))
        # 10000 * 0.85 = 8500; (8500 - 2000) / 1000 = 6.5 -> 6
        self.assertEqual(g.windows_per_batch(), 6)
        self.assertAlmostEqual(g.predicted_peak_mb(6), 8000)

    def test_keeps_the_largest_cost_per_window(self):
        g = self.governor()
        g.observe(BatchObservation(windows=1, held_mb=2000, peak_mb=3000, process_res=518))
        g.observe(BatchObservation(windows=4, held_mb=2000, peak_mb=8000, process_res=518))
        self.assertEqual(g.per_window_mb, 1500)
        self.assertEqual(g.windows_per_batch(), 4)  # 6500 / 1500 = 4.3

    def test_a_new_resolution_starts_a_new_estimate(self):
        g = self.governor()
        g.observe(BatchObservation(windows=1, held_mb=2000, peak_mb=5000, process_res=518))
        g.observe(BatchObservation(windows=1, held_mb=2000, peak_mb=3000, process_res=392))
        self.assertEqual(g.per_window_mb, 1000)

    def test_stays_below_a_batch_that_ran_out_of_memory_and_within_limits(self):
        g = self.governor(max_windows=5)
        g.observe(BatchObservation(windows=1, held_mb=100, peak_mb=200, process_res=518))
        self.assertEqual(g.windows_per_batch(), 5)
        g.observe_out_of_memory(4)
        self.assertEqual(g.windows_per_batch(), 3)
        g.observe_out_of_memory(1)  # a single window cannot be split: no ceiling from it
        self.assertEqual(g.windows_per_batch(), 3)
        tight = self.governor()
        tight.observe(BatchObservation(windows=1, held_mb=9000, peak_mb=12000, process_res=518))
        self.assertEqual(tight.windows_per_batch(), 1)  # never below one window
        record = g.to_json()
        self.assertEqual((record["windows_per_batch"], record["out_of_memory_at"]), (3, 4))


class LowerResolutionsTest(unittest.TestCase):
    def test_steps_of_an_eighth_in_multiples_of_14_down_to_the_lowest(self):
        self.assertEqual(lower_resolutions(518), [448, 392, 336, 294, 252, 224])
        self.assertEqual(lower_resolutions(504, 300), [434, 378, 322, 300])
        self.assertEqual(lower_resolutions(224), [])


class BudgetTest(unittest.TestCase):
    def test_cpu_budget_and_cap(self):
        import torch

        budget, source = budget_mb(torch.device("cpu"))
        self.assertGreater(budget, current_mb())
        self.assertIn("available system memory", source)
        halves, _ = budget_mb(torch.device("cpu"), processes=2)
        self.assertLess(halves, budget)
        capped, source = budget_mb(torch.device("cpu"), 0.5)
        self.assertEqual((capped, source), (512.0, "--max-memory-gb 0.5"))


class StageTableTest(unittest.TestCase):
    def test_totals_and_peaks(self):
        table = StageTable()
        table.add("forward", {"seconds": 1.0, "peak_mb": 100.0, "rss_peak_mb": 150.0})
        table.add("forward", {"seconds": 3.0, "peak_mb": 300.0, "rss_peak_mb": 120.0})
        table.add("export", {"seconds": 0.5, "peak_mb": 50.0, "rss_peak_mb": 60.0})
        self.assertEqual(table.rows["forward"], {"calls": 2, "seconds": 4.0, "peak_mb": 300.0,
                                                 "rss_peak_mb": 150.0})
        lines = table.format("cuda:0").splitlines()
        self.assertEqual([line.split()[0] for line in lines], ["stage", "forward", "export"])
        self.assertEqual(lines[1].split()[1:], ["2", "4.00", "2.00", "300", "150"])


if __name__ == "__main__":
    unittest.main()


class OverBudgetTest(unittest.TestCase):
    def test_a_batch_over_the_budget_is_named_once(self):
        """--max-memory-gb below what the model holds ran on at one window, without a word."""
        governor = MemoryGovernor(budget_mb=1.0, budget_source="--max-memory-gb")
        with self.assertLogs("pipeline.infra.memory", "WARNING") as logs:
            governor.observe(BatchObservation(windows=1, held_mb=509.0, peak_mb=620.0))
            governor.observe(BatchObservation(windows=1, held_mb=509.0, peak_mb=625.0))
        [line] = logs.output
        self.assertIn("held 620 MiB, more than the memory budget of 1 MiB (--max-memory-gb)", line)
        self.assertEqual(governor.windows_per_batch(), 1)
