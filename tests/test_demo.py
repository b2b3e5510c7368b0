"""The demo runs both modes on real windows, measures them and checks they agree."""

import unittest

import pytest

import demo_batch_processing


@pytest.mark.slow
class DemoTest(unittest.TestCase):
    def test_demo_agrees_and_reports(self):
        from contextlib import redirect_stdout
        from io import StringIO

        out = StringIO()
        with redirect_stdout(out):
            code = demo_batch_processing.main(["--max-frames", "12", "--window-size", "4",
                                               "--window-stride", "4", "--batch-size", "3"])
        text = out.getvalue()
        self.assertEqual(code, 0, text)
        self.assertIn("results agree", text)
        self.assertRegex(text, r"one at a time\s+3\s+3\s+[\d.]+\s+[\d.]+")
        self.assertRegex(text, r"batched is [\d.]+x the speed")

    def test_demo_vggt_with_generated_weights(self):
        from contextlib import redirect_stdout
        from io import StringIO

        out = StringIO()
        with redirect_stdout(out):
            code = demo_batch_processing.main([
                "--reconstructor", "vggt", "--model", "/nonexistent/vggt", "--max-frames", "8",
                "--window-size", "4", "--window-stride", "4", "--batch-size", "2",
                "--max-query-pts", "32"])
        text = out.getvalue()
        self.assertEqual(code, 0, text)
        self.assertIn("generated weights", text)
        self.assertIn("results agree", text)


if __name__ == "__main__":
    unittest.main()
