"""The GPU check: every GPU claim of the project measured by one prepared script.

A device machine is lent to some sessions only, for about 15 minutes with its start-up, so this
runs without thought: ``python benchmarks/gpu_check.py --out DIR`` on a CUDA machine, at most
about eight minutes, with generated weights (speed and memory do not depend on their values).
Each section runs in its own subprocess with its own time limit, and ``DIR/gpu_check.json`` and
``DIR/gpu_check.md`` (a table ready for BENCHMARKS.md) are rewritten after each one, so a
section that fails or runs out of time loses nothing of the others.

Sections (``--sections`` picks some):

* ``vggt_frames``: VGGT-1B, bf16 (the device's autocast dtype), 336x518 as the reference
  measured it, one window of 8 ... 200 frames: forward seconds and peak allocated memory,
  beside the reference's published figures (H100, flash attention 3).
* ``window_batching``: 8-frame windows stacked 1, 4, 16, 32 per forward: seconds per window.
* ``pipeline``: a whole vggt run on 160 generated frames, serial (``--cpu-workers 0``) and
  pipelined (the default workers): windows/s and the device's idle fraction (``run.json``).
* ``governor``: the same run with ``--max-memory-gb 12``, and with the process capped to 12 GB
  of the card (``torch.cuda.set_per_process_memory_fraction``) and batches too large for it:
  batch sizes chosen, measured peak, out-of-memory recovered without losing a window.
* ``offload``: ``--cpu-offload`` against none: peak memory, time, poses equal.
* ``da3_frames``: DA3-LARGE at 504 px, 10/50/100 frames, with and without frame batching.
* ``precision``: VGGT-1B bf16 and fp16 against fp32 on the golden input: largest relative
  error of depth and pose encoding.

``--smoke`` runs the same sections on the CPU with the tiny networks and a handful of frames in
a few minutes (``tests/test_gpu_check.py`` does, so the script cannot rot between device
sessions); what only a GPU can show is then reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("gpu_check")

REFERENCE = {1: (0.04, 1.88), 2: (0.05, 2.07), 4: (0.07, 2.45), 8: (0.11, 3.23),
             10: (0.14, 3.63), 20: (0.31, 5.58), 50: (1.04, 11.41), 100: (3.12, 21.15),
             200: (8.75, 40.63)}
"""VGGT's published runtime and peak memory (frames -> seconds, GB) on one H100 with flash
attention 3 at 336x518 (the VGGT paper, table 9; the repository's README)."""

GOAL_200_FRAMES_GB = 12.0
"""The memory goal: 200 frames in one window under this many GB."""


@dataclass(frozen=True)
class Settings:
    """The sizes of one mode (the GPU check, or its CPU smoke run)."""

    device: str
    vggt: str
    """VGGTConfig preset: ``vggt_1b`` or ``tiny``."""
    height: int
    width: int
    frames: tuple[int, ...]
    window_frames: int
    stacks: tuple[int, ...]
    pipeline_frames: int
    short_run_frames: int
    """Frames of the governor's and offload's runs (two runs each, within their limits)."""
    pipeline_window: int
    budget_gb: float
    da3: str
    """DA3Config: a released variant name, or ``tiny``."""
    da3_res: tuple[int, int]
    da3_frames: tuple[int, ...]
    da3_frame_batch: int
    process_res: int | None
    """The pipeline's network resolution (None: vggt's 518)."""
    query_points: int
    """Track queries per query frame in the pipeline runs."""


GPU = Settings(device="cuda", vggt="vggt_1b", height=336, width=518,
               frames=(8, 32, 64, 100, 200), window_frames=8, stacks=(1, 4, 16, 32),
               pipeline_frames=160, short_run_frames=80, pipeline_window=8, budget_gb=12.0,
               da3="da3-large",
               da3_res=(378, 504), da3_frames=(10, 50, 100), da3_frame_batch=8,
               process_res=None, query_points=2048)
SMOKE = Settings(device="cpu", vggt="tiny", height=56, width=70, frames=(2, 4),
                 window_frames=2, stacks=(1, 2), pipeline_frames=10, short_run_frames=10,
                 pipeline_window=4,
                 budget_gb=2.0, da3="tiny", da3_res=(56, 70), da3_frames=(2, 4),
                 da3_frame_batch=2, process_res=112, query_points=48)

SECTION_LIMIT_S = {"vggt_frames": 90, "window_batching": 45, "pipeline": 130, "governor": 70,
                   "offload": 60, "da3_frames": 60, "precision": 40}
"""Seconds each section may take on the GPU (the whole check: about eight minutes)."""


# ---- measuring ------------------------------------------------------------------------------

def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure(run: Callable[[], Any], device: str, *, warm: bool = True) -> dict[str, float]:
    """Seconds and peak memory (GiB) of ``run()`` after a warm-up call.

    On CUDA the device is synchronised and its peak statistics reset before the timed call
    (the cache stays warm: emptying it would make the timed call allocate its working set
    again); ``peak_gb`` is the peak allocated, weights and inputs included, and
    ``above_held_gb`` the peak above what was allocated before the call (the activations: the
    reference's published figures are of this kind, below the weights' own size for one
    frame). On the CPU both are the peak resident memory above what was resident before."""
    import torch

    cuda = device.startswith("cuda")
    if warm:  # kernels chosen, the allocator (and the CPU's lazy set-up) warm
        run()
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device) / 2**30
    else:
        from _measure import settle_and_reset_peak, status_mib

        settle_and_reset_peak()
        base = status_mib("VmRSS")
    start = time.perf_counter()
    out = run()
    _sync(device)
    seconds = time.perf_counter() - start
    del out
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        above = peak - held
    else:
        from _measure import status_mib

        peak = above = (status_mib("VmHWM") - base) / 1024
    return {"seconds": round(seconds, 3), "peak_gb": round(peak, 3),
            "above_held_gb": round(above, 3)}


def measure_into(row: dict[str, Any], run: Callable[[], Any], device: str) -> dict[str, Any]:
    """``row`` with :func:`measure` of ``run`` (in inference mode), or with ``error: out of
    memory`` when the device ran out (its cache emptied, so the next measurement starts
    clean)."""
    import torch

    from pipeline.infra.memory import is_out_of_memory

    try:
        with torch.inference_mode():
            row.update(measure(run, device))
    except RuntimeError as exc:
        if not is_out_of_memory(exc):
            raise
        row["error"] = "out of memory"
    if "error" in row and torch.cuda.is_available():
        torch.cuda.empty_cache()  # out of the except block: its traceback held the tensors
    return row


def _vggt(settings: Settings, dtype: Any = "auto"):
    """A VGGT of the preset with generated weights on the device (CUDA: initialised there,
    normal values; CPU: the golden weight rule), compute dtype ``dtype``."""
    import torch

    from pipeline.algo.models import VGGTConfig, build_model, load_rule_weights_, resolve_dtype

    config = getattr(VGGTConfig, settings.vggt)()
    if settings.device.startswith("cuda"):
        model = build_model(config, device="meta").to_empty(device=settings.device)
        gen = torch.Generator(device=settings.device).manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(0.0, 0.02, generator=gen)
                if p.dim() == 1 and name.endswith((".weight", ".gamma")):
                    p.add_(1.0)
        model.reset_non_persistent_buffers(torch.device(settings.device))
    else:
        model = load_rule_weights_(build_model(config, device="meta"))
    model.compute_dtype = resolve_dtype(dtype, settings.device)
    return model.eval()


def _images(settings: Settings, batch: int, frames: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, frames, 3, settings.height, settings.width, generator=gen)
    return images.to(settings.device)


# ---- sections: each returns {"rows": [...], "notes": [...]} ------------------------------------

def section_vggt_frames(settings: Settings) -> dict[str, Any]:
    """One window of each frame count through the whole network (no track queries)."""

    model = _vggt(settings)
    rows, notes = [], []
    for frames in settings.frames:
        images = _images(settings, 1, frames)
        row = measure_into({"frames": frames, "dtype": str(model.compute_dtype)[6:]},
                           partial(model, images), settings.device)
        reference = REFERENCE.get(frames)
        if reference and settings.device.startswith("cuda"):
            row.update(reference_seconds=reference[0], reference_gb=reference[1])
        rows.append(row)
        del images
    last = rows[-1]
    if settings.device.startswith("cuda") and last["frames"] == 200 and "peak_gb" in last:
        above = last["above_held_gb"]
        verdict = "met" if above < GOAL_200_FRAMES_GB else "not met"
        notes.append(f"200 frames: {above:.2f} GiB above the weights, as the reference counts "
                     f"({last['peak_gb']:.2f} GiB with them); goal: under "
                     f"{GOAL_200_FRAMES_GB} GB: {verdict}")
    return {"rows": rows, "notes": notes}


def section_window_batching(settings: Settings) -> dict[str, Any]:
    """Windows of ``window_frames`` stacked ``[B, S, 3, H, W]``: seconds per window."""

    model = _vggt(settings)
    rows = []
    for stack in settings.stacks:
        images = _images(settings, stack, settings.window_frames)
        row = measure_into({"windows_per_forward": stack, "frames": settings.window_frames},
                           partial(model, images), settings.device)
        if "seconds" in row:
            row["seconds_per_window"] = round(row["seconds"] / stack, 4)
        rows.append(row)
    single = rows[0].get("seconds_per_window")
    for row in rows:
        if single and row.get("seconds_per_window"):
            row["gain_over_one"] = round(single / row["seconds_per_window"], 2)
    return {"rows": rows, "notes": []}


def _frames(settings: Settings, work: Path) -> Path:
    """Generated frames (the synthetic room, a loop), made once per check."""
    from pipeline.io.synthetic import RenderOptions, render_sequence, write_sequence

    folder = work / "frames"
    if not (folder / "images").is_dir():
        write_sequence(render_sequence(RenderOptions(num_frames=settings.pipeline_frames,
                                                     path="loop")), folder)
    return folder / "images"


def _checkpoint(settings: Settings, work: Path) -> Path:
    """A generated VGGT checkpoint of the preset on disk (what ``--model`` loads)."""
    from pipeline.algo.models import VGGTConfig
    from pipeline.algo.models.generated_checkpoint import (
        valid_cameras_,
        write_generated_checkpoint,
    )
    from pipeline.algo.models.loading import save_pretrained

    folder = work / f"vggt-{settings.vggt}"
    if (folder / "config.json").is_file():
        return folder
    if settings.device.startswith("cuda"):  # normal values made on the card: seconds, not minutes
        save_pretrained(valid_cameras_(_vggt(settings)).to("cpu"), folder)
    else:
        write_generated_checkpoint(folder, getattr(VGGTConfig, settings.vggt)())
    return folder


def _run(settings: Settings, work: Path, name: str, *, short: bool = False,
         **options: Any) -> dict[str, Any]:
    """One vggt pipeline run over the generated frames (``short``: the first
    ``short_run_frames`` of them); what ``run.json`` says of it."""
    from pipeline.config import PipelineConfig
    from pipeline.runner import run

    out = work / name
    config = PipelineConfig(input_dir=_frames(settings, work), output_dir=out,
                            reconstructor="vggt", model=str(_checkpoint(settings, work)),
                            device=settings.device, window_size=settings.pipeline_window,
                            window_stride=settings.pipeline_window // 2, overwrite=True,
                            process_res=settings.process_res,
                            max_query_pts=settings.query_points,
                            min_points=0, min_frame_observations=0,  # generated weights
                            max_frames=settings.short_run_frames if short else None,
                            show_progress=False, **options)
    start = time.perf_counter()
    summary = run(config)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "run.json").read_text())
    throughput = manifest.get("throughput") or {}
    memory = manifest.get("memory") or {}
    batches = memory.get("observations") or []
    peaks = [row.get("peak_mb") for row in (manifest.get("profile") or {}).values()]
    peaks += [b["peak_mb"] for b in batches]
    return {"run": name, "windows": len(summary.windows), "ok": summary.count("ok"),
            "failed": summary.count("failed"), "wall_s": round(wall, 2),
            "windows_per_s": round(len(summary.windows) / wall, 3),
            "device_idle_fraction": throughput.get("device_idle_fraction"),
            "cpu_workers": throughput.get("cpu_workers"),
            "batch_sizes": [b["windows"] for b in batches],
            "peak_gb": round(max(p for p in peaks if p is not None) / 1024, 3) if any(
                p is not None for p in peaks) else None,
            "out_of_memory_at": memory.get("out_of_memory_at"), "output": str(out)}


def section_pipeline(settings: Settings, work: Path) -> dict[str, Any]:
    """The whole run, serial against pipelined (one worker per core left free)."""
    serial = _run(settings, work, "serial", cpu_workers=0)
    pipelined = _run(settings, work, "pipelined")
    notes = []
    if serial["windows_per_s"] and pipelined["windows_per_s"]:
        speedup = pipelined["windows_per_s"] / serial["windows_per_s"]
        idle = pipelined["device_idle_fraction"]
        notes.append(f"pipelined {speedup:.2f}x the serial windows/s (goal on 16 cores: 5x); "
                     f"device idle {idle if idle is None else f'{idle:.0%}'} (goal: under 20%)")
    return {"rows": [serial, pipelined], "notes": notes}


def section_governor(settings: Settings, work: Path) -> dict[str, Any]:
    """Automatic batch sizes within a budget, and recovery from running out of memory."""
    import torch

    rows = [_run(settings, work, "budget", short=True, max_memory_gb=settings.budget_gb)]
    notes = []
    if settings.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, settings.budget_gb * 2**30 / total))
        # the governor believes the whole card is there, so its batches outgrow the cap
        row = _run(settings, work, "capped", short=True)
        rows.append(row)
        notes.append(f"capped at {settings.budget_gb} GB, no --max-memory-gb: "
                     f"{row['ok']}/{row['windows']} windows ok, out of memory at "
                     f"{row['out_of_memory_at']}")
    else:
        notes.append("the capped run (set_per_process_memory_fraction) needs CUDA: skipped")
    return {"rows": rows, "notes": notes}


def section_offload(settings: Settings, work: Path) -> dict[str, Any]:
    """``--cpu-offload`` against none: memory, time and the same poses."""
    import numpy as np

    from pipeline.io.output import read_window_poses

    if not settings.device.startswith("cuda"):
        return {"rows": [], "notes": ["--cpu-offload moves weights between CPU and GPU: needs "
                                      "CUDA, skipped"]}
    plain = _run(settings, work, "resident", short=True, window_batch_size=4)
    offload = _run(settings, work, "offload", short=True, window_batch_size=4,
                   cpu_offload=True)
    largest, compared, unmatched = 0.0, 0, []
    for a in sorted(Path(plain["output"]).glob("batch_*/window_*")):
        b = Path(offload["output"]) / a.relative_to(plain["output"])
        try:  # a window without a model in either run is named, not the section lost
            pa, pb = read_window_poses(a), read_window_poses(b)
            largest = max([largest] + [float(np.abs(pa[k] - pb[k]).max()) for k in pa])
            compared += 1
        except (OSError, KeyError, ValueError) as exc:
            unmatched.append(f"{a.parent.name}/{a.name}: {type(exc).__name__}")
    notes = [f"largest pose difference with offload: {largest:.2e} over {compared} windows"]
    if unmatched:
        notes.append(f"not compared: {', '.join(unmatched[:5])}")
    return {"rows": [plain, offload], "notes": notes}


def _da3(settings: Settings):
    """A DA3 of the variant with generated weights (made on the CPU, moved to the device) and
    the device's autocast dtype."""
    from pipeline.algo.models import resolve_dtype
    from pipeline.algo.models.da3 import DA3Config
    from pipeline.algo.models.generated_checkpoint import generated_da3

    config = DA3Config.tiny() if settings.da3 == "tiny" else DA3Config.variant(settings.da3)
    model = generated_da3(config).to(settings.device)
    model.compute_dtype = resolve_dtype("auto", settings.device)
    return model.eval()


def section_da3_frames(settings: Settings) -> dict[str, Any]:
    """DA3 on one window of each frame count, all frames attending to each other and in
    groups of ``da3_frame_batch`` (frame batching)."""
    import torch

    from pipeline.algo.models.da3 import DA3ForwardOptions

    model = _da3(settings)
    dtype = model.compute_dtype
    height, width = settings.da3_res
    rows = []
    for frames in settings.da3_frames:
        gen = torch.Generator().manual_seed(0)
        images = torch.rand(1, frames, 3, height, width, generator=gen).to(settings.device)
        for group in (None, settings.da3_frame_batch):
            row = {"frames": frames, "frame_batch_size": group, "dtype": str(dtype)[6:],
                   "resolution": f"{width}x{height}"}
            options = DA3ForwardOptions(frame_batch_size=group)
            rows.append(measure_into(row, partial(model, images, options=options),
                                     settings.device))
    return {"rows": rows, "notes": []}


def section_precision(settings: Settings, golden: Path | None = None) -> dict[str, Any]:
    """Reduced precision against float32 on the same input (the golden input and query points
    when ``golden`` is given): the largest error of depth and pose encoding relative to their
    range, and of the tracks in network pixels."""
    import numpy as np
    import torch

    if settings.vggt == "vggt_1b" and golden is not None:
        data = np.load(golden)
        images = torch.from_numpy(data["images"]).float().to(settings.device)
        queries = torch.from_numpy(data["query_points"]).float().to(settings.device)
        source = "golden input"
    else:
        images, source = _images(settings, 1, 3, seed=1), "random input (seed 1)"
        gen = torch.Generator().manual_seed(1)
        size = torch.tensor([settings.width - 1, settings.height - 1], dtype=torch.float32)
        queries = (torch.rand(1, 8, 2, generator=gen) * size).to(settings.device)
    model = _vggt(settings, dtype=None)
    with torch.inference_mode():
        reference = model(images, queries)
        dtypes = ["bf16", "fp16"] if settings.device.startswith("cuda") else ["bf16"]
        rows = []
        for name in dtypes:
            model.compute_dtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[name])
            out = model(images, queries)
            row = {"dtype": name, "input": source}
            for key in ("depth", "pose_enc"):
                ref, got = reference[key].float(), out[key].float()
                scale = float(ref.abs().max()) or 1.0
                row[f"{key}_max_rel_error"] = float((got - ref).abs().max()) / scale
            moved = (out["track"].float() - reference["track"].float()).norm(dim=-1)
            row["track_max_px"] = float(moved.max())
            row["track_median_px"] = float(moved.median())
            rows.append(row)
    return {"rows": rows, "notes": []}


def default_golden() -> Path | None:
    """The VGGT-1B golden file: carried to a device machine in ``.device/`` (see
    ``benchmarks/device_prep.sh``), or in ``../shared/golden/`` beside the checkout."""
    for path in (ROOT / ".device" / "vggt_1b_golden.npz",
                 ROOT.parent / "shared" / "golden" / "vggt_1b_golden.npz"):
        if path.is_file():
            return path
    return None


SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "vggt_frames": section_vggt_frames, "window_batching": section_window_batching,
    "pipeline": section_pipeline, "governor": section_governor, "offload": section_offload,
    "da3_frames": section_da3_frames, "precision": section_precision}
"""Every section, in the order the check runs them (the most wanted first)."""
NEEDS_WORK_DIR = {"pipeline", "governor", "offload"}


# ---- the check: one subprocess per section, results kept after each --------------------------

def machine(settings: Settings) -> dict[str, Any]:
    """What the check ran on."""
    import platform

    import torch

    info = {"host": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": settings.device, "python": platform.python_version()}
    if settings.device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    cuda=torch.version.cuda)
    return info


def run_section(name: str, settings: Settings, work: Path,
                golden: Path | None = None) -> dict[str, Any]:
    """One section in this process (the worker side)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    fn = SECTIONS[name]
    start = time.perf_counter()
    if name in NEEDS_WORK_DIR:
        result = fn(settings, work)
    elif name == "precision":
        result = fn(settings, golden)
    else:
        result = fn(settings)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _spawn(name: str, args: argparse.Namespace, work: Path, limit: float) -> dict[str, Any]:
    """Run section ``name`` in a fresh Python process within ``limit`` seconds."""
    command = [sys.executable, __file__, "--worker", name, "--work", str(work),
               "--out", str(args.out)] + (["--smoke"] if args.smoke else []) + (
               ["--golden", str(args.golden)] if args.golden else [])
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=limit,
                              cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past its {limit:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the machine, then a table per section."""
    m = report["machine"]
    lines = [f"GPU check, {report['mode']}: {m.get('gpu', m['device'])}"
             f"{', ' + str(m['gpu_memory_gb']) + ' GB' if 'gpu_memory_gb' in m else ''}, "
             f"{m['cpu_count']} cores, torch {m['torch']}, {report['started']}", ""]
    for name, section in report["sections"].items():
        lines.append(f"**{name}** ({section.get('seconds', '-')} s)")
        lines.append("")
        if "error" in section:
            lines += [f"failed: {section['error']}", ""]
            continue
        rows = section.get("rows") or []
        if rows:
            keys = [k for k in rows[0] if k != "output"]
            for row in rows[1:]:
                keys += [k for k in row if k not in keys and k != "output"]
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
            lines.append("")
        lines += [f"- {note}" for note in section.get("notes", [])] + [""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def check(args: argparse.Namespace) -> int:
    """Every section asked for, each in its own process; the report rewritten after each."""
    settings = SMOKE if args.smoke else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"mode": "smoke (CPU, tiny networks)" if args.smoke else "GPU",
              "started": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(settings),
              "settings": asdict(settings), "sections": {}}
    names = args.sections or list(SECTIONS)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in names:
            limit = SECTION_LIMIT_S[name] * (4 if args.smoke else 1)
            logger.info("%s (at most %d s)", name, limit)
            report["sections"][name] = _spawn(name, args, Path(tmp), limit)
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
            (args.out / "gpu_check.md").write_text(markdown(report))
    failed = [n for n, s in report["sections"].items() if "error" in s]
    logger.info("done: %s", "every section measured" if not failed else f"failed: {failed}")
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json/.md")
    p.add_argument("--smoke", action="store_true",
                   help="the CPU with the tiny networks and a handful of frames")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), help="default: all")
    p.add_argument("--golden", type=Path, default=default_golden(),
                   help="vggt_1b_golden.npz for the precision section (default: .device/ or "
                        "../shared/golden/ when there; else a random input)")
    p.add_argument("--worker", choices=list(SECTIONS), help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.smoke and args.worker is None:
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device here: run with --smoke, or on a GPU machine")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        settings = SMOKE if args.smoke else GPU
        result = run_section(args.worker, settings, args.work, args.golden)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
