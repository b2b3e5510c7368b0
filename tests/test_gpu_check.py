"""The GPU check (``benchmarks/gpu_check.py``) runs, so that it cannot rot between the sessions
that have a device: its CPU smoke run measures every section with the tiny networks, and the
GPU-only parts say they were skipped and why."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    """The script as a module (registered, as dataclasses need)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def test_a_failed_section_is_reported_and_the_others_kept():
    check = load_script()
    report = {"mode": "GPU", "started": "now", "machine": {"device": "cuda", "cpu_count": 16,
                                                            "torch": "2.13", "gpu": "H200",
                                                            "gpu_memory_gb": 139.8},
              "sections": {"vggt_frames": {"rows": [{"frames": 8, "seconds": 0.1234}],
                                           "notes": ["a note"], "seconds": 3.0},
                           "pipeline": {"error": "ran past its 130 s"}}}
    text = check.markdown(report)
    assert "H200, 139.8 GB" in text and "| frames | seconds |" in text and "| 8 | 0.123 |" in text
    assert "- a note" in text and "failed: ran past its 130 s" in text
    assert sum(check.SECTION_LIMIT_S.values()) <= 8.5 * 60  # the device's time, with margin


def test_the_device_scripts_name_what_the_check_reads():
    """device_prep.sh fills .device/ (git-ignored) with what device_run.sh installs and what
    the precision section reads by default."""
    check = load_script()
    prep = (ROOT / "benchmarks" / "device_prep.sh").read_text()
    run = (ROOT / "benchmarks" / "device_run.sh").read_text()
    assert ".device/whl" in prep and ".device/whl/*.whl" in run and "gpu_check.py" in run
    assert "vggt_1b_golden.npz" in prep
    assert "/.device/" in (ROOT / ".gitignore").read_text().splitlines()
    golden = check.default_golden()
    assert golden is None or golden.name == "vggt_1b_golden.npz"


def test_without_a_gpu_it_asks_for_smoke(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA device here: run with --smoke" in done.stderr


@pytest.mark.slow
def test_the_smoke_run_measures_every_section(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    check = load_script()
    assert list(report["sections"]) == list(check.SECTIONS)
    sections = report["sections"]
    assert not [name for name, s in sections.items() if "error" in s]
    frames = [row["frames"] for row in sections["vggt_frames"]["rows"]]
    assert frames == list(check.SMOKE.frames)
    assert all(row["seconds"] > 0 and "peak_gb" in row and "above_held_gb" in row
               for row in sections["vggt_frames"]["rows"])
    stacks = sections["window_batching"]["rows"]
    assert [row["windows_per_forward"] for row in stacks] == list(check.SMOKE.stacks)
    for row in sections["pipeline"]["rows"] + sections["governor"]["rows"]:
        assert row["windows"] > 0 and row["ok"] == row["windows"], row
    assert [row["cpu_workers"] for row in sections["pipeline"]["rows"]][0] == 0
    assert any("needs CUDA" in note for note in sections["governor"]["notes"])
    assert any("needs CUDA" in note for note in sections["offload"]["notes"])
    assert len(sections["da3_frames"]["rows"]) == 2 * len(check.SMOKE.da3_frames)
    [bf16] = sections["precision"]["rows"]
    assert 0 <= bf16["pose_enc_max_rel_error"] < 0.1
    assert 0 <= bf16["track_median_px"] <= bf16["track_max_px"]
    text = (tmp_path / "gpu_check.md").read_text()
    assert all(f"**{name}**" in text for name in check.SECTIONS)
