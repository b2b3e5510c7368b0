"""The service's page in a real browser (Debian's chromium, headless, WebGL in SwiftShader):
the job list and a window's 3D view, screenshotted and checked not blank."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs it)")

VIEW_BACKGROUND = np.array([0x10, 0x15, 0x1B])
"""The 3D view's clear colour (``style.css`` / ``app.js``)."""


def _chromium(tmp_path, url, *, screenshot=None, size=(1200, 1000)) -> str:
    """Load ``url`` headless, give its scripts 8 s of virtual time; the DOM then, and a
    screenshot when asked."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--enable-unsafe-swiftshader",
            "--use-angle=swiftshader", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}", f"--window-size={size[0]},{size[1]}",
            "--virtual-time-budget=8000"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_job_list_and_a_windows_3d_view_render(tmp_path, colmap_job):
    served, job_id = colmap_job.served, colmap_job.job_id
    assert served.job(job_id)["state"] == "finished"

    dom = _chromium(tmp_path, f"{served.url}/")
    assert 'data-ready="jobs"' in dom and job_id in dom and "finished" in dom
    listing = tmp_path / "jobs.png"
    _chromium(tmp_path, f"{served.url}/", screenshot=listing)
    pixels = np.asarray(Image.open(listing).convert("RGB"))
    assert pixels.std() > 10, "the job list is blank"

    dom = _chromium(tmp_path, f"{served.url}/#/job/{job_id}")
    assert 'data-ready="job"' in dom and "batch_000/window_001" in dom
    assert f"/jobs/{job_id}/file/merged/trajectory.png" in dom

    view = tmp_path / "window.png"
    _chromium(tmp_path, f"{served.url}/#/job/{job_id}/window/batch_000/window_000",
              screenshot=view, size=(1200, 1100))
    pixels = np.asarray(Image.open(view).convert("RGB")).astype(int)
    canvas = np.all(np.abs(pixels - VIEW_BACKGROUND) <= 2, axis=-1)
    rows, cols = np.nonzero(canvas)
    assert rows.size > 100_000, "no 3D view on the page"
    inside = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    drawn = ~np.all(np.abs(inside - VIEW_BACKGROUND) <= 2, axis=-1)
    assert drawn.sum() > 2_000, "the 3D view shows nothing"
    colours = {tuple(c) for c in inside[drawn][::7]}
    assert len(colours) > 100, "the 3D view's pixels are not varied (points and cameras)"
