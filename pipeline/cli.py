"""The command line: ``python vae_data_pipeline_batch.py --input-dir DIR --output-dir OUT``.

Exit codes: 0 every window succeeded (and the merge, if asked for); 1 some windows failed (the
others are written), the merge failed, or the disk filled up during the run; 2 bad usage or
input, or an output folder that cannot be written or that another run holds (one ``error:``
line); 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path

from .config import CAMERA_TYPES, DA3_METHODS, IMAGE_MODES, PipelineConfig
from .errors import DiskFullError, PipelineError
from .reconstructors import available_reconstructors

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_WINDOWS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM or SIGHUP: handled like Ctrl-C (staging removed, workers
    stopped, ``run.json`` says ``interrupted``), then exit ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line (usage is in ``--help``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    if text.strip() == "0":
        return 0
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text!r}") \
            from None


def _batch_size(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") \
            from None


def _number(text: str) -> float:
    """A finite number (ranges are checked with the configuration)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    return Path(text)


def _add_input_args(p: argparse.ArgumentParser) -> None:
    """Where the frames come from, and which of them are used."""
    inp = p.add_argument_group("input")
    src = inp.add_mutually_exclusive_group(required=True)
    src.add_argument("--input-dir", type=_folder, help="folder of frames (jpg, jpeg, png, webp, "
                     "bmp, tif), ordered by natural sort (frame_2 before frame_10)")
    src.add_argument("--input-video", type=_folder, help="a video file; its frames are extracted "
                     "once (PyAV) into OUT/frames/")
    inp.add_argument("--frame-pattern", metavar="GLOB", help="with --input-dir: only file names "
                     "matching this glob, e.g. '*.color.jpg' for a folder that also holds depth "
                     "maps (default: every image)")
    inp.add_argument("--fps", type=_positive_float, help="with --input-video: frames per second "
                     "of video to extract (default: every frame)")
    inp.add_argument("--frame-step", type=_positive_int, default=1, metavar="N",
                     help="use every N-th frame, for dense video frame dumps whose consecutive "
                     "frames barely move (default 1)")
    inp.add_argument("--max-frames", type=_positive_int, help="use only the first N frames "
                     "(after --frame-step)")
    inp.add_argument("--skip-bad-frames", action="store_true", help="drop unreadable frames "
                     "with a warning (default: stop before any work, naming the file)")
    inp.add_argument("--output-dir", type=_folder, required=True, help="output folder (created)")


def _add_window_args(p: argparse.ArgumentParser) -> None:
    """Window size, stride and batching."""
    w = p.add_argument_group("windows")
    w.add_argument("--window-size", type=_positive_int, default=8, help="frames per window "
                   "(default 8)")
    w.add_argument("--window-stride", type=_positive_int, default=4, help="frames between window "
                   "starts; at most the window size (default 4)")
    w.add_argument("--window-batch-size", type=_batch_size, default=None, metavar="N|auto",
                   help="windows processed together (colmap: in parallel worker processes). "
                   "auto (default): vggt/da3 measure a first batch of one window and then take "
                   "the most windows that fit the free memory (the memory model goes to "
                   "run.json); colmap takes one per CPU core, at most 8")


def _add_reconstruction_args(p: argparse.ArgumentParser) -> None:
    """Which reconstructor, cameras, and the classical one's settings."""
    r = p.add_argument_group("reconstruction")
    r.add_argument("--reconstructor", choices=["auto", *available_reconstructors()],
                   default="auto", help="vggt: the VGGT network on batches of windows, then "
                   "tracks and bundle adjustment; da3: Depth Anything 3 on batches of windows "
                   "(checkpoint from --model), tracks from SIFT matching, bundle adjustment; colmap: classical SIFT + incremental mapping "
                   "with pycolmap, CPU, no weights; auto (default): vggt when its weights are "
                   "here or can be downloaded, else colmap (the choice and why are logged and "
                   "kept in run.json)")
    r.add_argument("--camera-type", choices=CAMERA_TYPES, default="SIMPLE_PINHOLE",
                   help="COLMAP camera model (default SIMPLE_PINHOLE)")
    r.add_argument("--camera-params", type=_float_list, metavar="P1,P2,...",
                   help="known intrinsics in COLMAP's order for --camera-type, in pixels of the "
                   "original frames, kept fixed: f,cx,cy (SIMPLE_PINHOLE), fx,fy,cx,cy (PINHOLE), "
                   "f,cx,cy,k (SIMPLE_RADIAL); default: estimated")
    r.add_argument("--shared-camera", action="store_true", help="one set of intrinsics for all "
                   "frames of a window (default: one per frame)")
    r.add_argument("--num-workers", type=_positive_int, help="colmap: worker processes per batch "
                   "(default: one per window, at most one per CPU core); windows always run in "
                   "workers, so that COLMAP aborting costs one window, not the run")
    r.add_argument("--chunk-frames", type=_non_negative_int, default=100, metavar="N",
                   help="colmap: frames of the sequence reconstructed together, each window cut "
                   "out of its chunk (features once per frame, matches once per pair, poses for "
                   "short windows of video); 0: each window from its own frames only "
                   "(default 100)")
    r.add_argument("--min-registered", dest="min_registered_fraction", type=_number, default=0.5,
                   metavar="FRACTION",
                   help="colmap: mark a window failed when fewer of its frames register "
                   "(default 0.5)")
    r.add_argument("--min-points", type=_non_negative_int, default=50, metavar="N",
                   help="mark a window failed when its model has fewer 3D points (default 50)")
    r.add_argument("--min-frame-observations", type=_non_negative_int, default=20, metavar="N",
                   help="mark a window failed when one of its registered frames sees fewer 3D "
                   "points (default 20)")


def _add_vggt_args(p: argparse.ArgumentParser) -> None:
    """The network reconstructor's settings."""
    n = p.add_argument_group("networks (vggt, da3)")
    n.add_argument("--model", default="facebook/VGGT-1B", help="vggt/da3 checkpoint: a "
                   ".safetensors/.pt file, a folder holding one, or a hub id (default "
                   "facebook/VGGT-1B, for vggt; da3 needs one given, e.g. "
                   "depth-anything/DA3-LARGE-1.1 or a folder)")
    n.add_argument("--device", default="auto", help="vggt/da3: auto (CUDA when available, "
                   "else CPU), cpu, cuda, cuda:1, ...")
    n.add_argument("--mixed-precision", choices=("auto", "bf16", "fp16", "no"), default="auto",
                   help="vggt/da3: auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 "
                   "on CPU")
    n.add_argument("--preprocess-mode", choices=("crop", "pad"), default="crop",
                   help="vggt: crop: --process-res px wide, centre-cropped to at most as many rows; "
                   "pad: longer side --process-res, padded to a square")
    n.add_argument("--query-frame-num", type=_positive_int, default=4, help="vggt: frames per "
                   "window whose SIFT keypoints are tracked (default 4)")
    n.add_argument("--max-query-pts", type=_positive_int, default=2048, help="vggt: keypoints "
                   "tracked per window (default 2048)")
    n.add_argument("--fine-tracking", action="store_true", help="vggt: run the track "
                   "head's refinement for twice as many iterations (slower, sometimes tighter tracks)")
    n.add_argument("--vis-thresh", type=_number, default=0.2, help="vggt: drop track "
                   "observations with a lower visibility score (default 0.2)")
    n.add_argument("--max-reproj-error", type=_number, default=8.0, help="drop observations with "
                   "a larger reprojection error in pixels (default 8)")
    n.add_argument("--use-ba", action=argparse.BooleanOptionalAction, default=True,
                   help="bundle-adjust the predicted cameras with the tracks (default on); "
                   "--no-use-ba writes points from the predicted depth instead")
    n.add_argument("--conf-thres-value", type=_number, default=5.0, help="without BA: depth "
                   "confidence a pixel needs to become a point (default 5)")
    n.add_argument("--allow-approximate", action="store_true", help="when one window runs out "
                   "of memory even with the smallest chunks, also try frame batching (attention "
                   "across frames within groups only: approximate) before failing it")
    n.add_argument("--save-depth", action="store_true", help="write per-frame depth and "
                   "confidence (float16 .npz, original size) into each window's depth/")


def _add_memory_args(p: argparse.ArgumentParser) -> None:
    """Resolution, memory budget, offloading, several processes."""
    m = p.add_argument_group("memory and devices")
    m.add_argument("--process-res", type=_positive_int, metavar="PX", help="network input size: "
                   "vggt, the long side (a multiple of 14); da3, the side --process-res-method "
                   "bounds. Default: the network's own (vggt 518, da3 504), lowered only when one "
                   "window does not fit in memory even with the smallest chunks")
    m.add_argument("--max-res", type=_positive_int, metavar="PX", help="upper bound on the "
                   "network input size (caps the default and --process-res)")
    m.add_argument("--max-memory-gb", type=_positive_float, metavar="GB", help="memory the run "
                   "may use (GPU memory on a GPU, RAM on the CPU; default: what is free)")
    m.add_argument("--cpu-offload", action="store_true", help="vggt/da3: keep the transformer "
                   "blocks' weights in CPU memory and move each to the GPU only while it runs "
                   "(6-8 GB cards; slower)")
    m.add_argument("--use-accelerate", action="store_true", help="schedule through Hugging Face "
                   "Accelerate; implied under 'accelerate launch', which splits the windows "
                   "between its processes (one GPU each) and merges run.json")
    m.add_argument("--profile-memory", action="store_true", help="print a per-stage table of "
                   "time and peak memory (load, forward, tracking, bundle adjustment, export)")


def _add_da3_args(p: argparse.ArgumentParser) -> None:
    """Depth Anything 3's input grid, and the network reconstructors' exports."""
    def export_format(text: str) -> str:
        from .export_formats import parse_export_format  # deferred: --help stays quick

        try:
            return "-".join(parse_export_format(text))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    d = p.add_argument_group("da3 and exports")
    d.add_argument("--process-res-method", choices=DA3_METHODS, default="upper_bound_resize",
                   help="da3: upper_bound_* bound the longer side, lower_bound_* the shorter; "
                   "*_resize rounds sides to multiples of 14 by resizing, *_crop by a centred "
                   "crop (default upper_bound_resize)")
    d.add_argument("--export-format", type=export_format, default="colmap", metavar="F1-F2",
                   help="da3: formats per window joined by '-': colmap (always), mini_npz "
                   "(exports/mini.npz), npz (exports/full.npz, with images), glb "
                   "(exports/scene.glb), e.g. colmap-mini_npz-glb (default colmap)")
    d.add_argument("--conf-thresh-percentile", type=_number, default=40.0, metavar="P",
                   help="glb: points from depth whose confidence reaches this percentile "
                   "(default 40)")
    d.add_argument("--num-max-points", type=_positive_int, default=1_000_000, metavar="N",
                   help="glb: at most this many points (default 1000000)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """What is written, and logging."""
    o = p.add_argument_group("output")
    o.add_argument("--images", choices=IMAGE_MODES, default="link", help="what each window's "
                   "images/ holds: absolute symlinks to the frames (default), copies, or nothing")
    o.add_argument("--merge", action="store_true", help="after the windows, join them into one "
                   "reconstruction per connected segment in OUT/merged/ (also: python -m "
                   "pipeline.merge OUT)")
    o.add_argument("--overwrite", action="store_true", help="redo every window, including "
                   "complete ones")
    v = p.add_mutually_exclusive_group()
    v.add_argument("-v", "--verbose", action="store_true", help="the pipeline's debug log "
                   "(every window's failure, every reason a window is redone), and COLMAP's own "
                   "warnings")
    v.add_argument("-q", "--quiet", action="store_true", help="warnings and the summary only; no "
                   "progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--help`` explains every flag."""
    p = _OneLineParser(
        prog="vae_data_pipeline_batch.py",
        description="Slide overlapping windows over a frame sequence and reconstruct each window "
                    "into a self-contained COLMAP scene (OUT/batch_XXX/window_YYY/sparse).",
        epilog="Exit status: 0 all windows succeeded, 1 some windows failed (the others are "
               "written) or the disk filled up, 2 bad usage or input or a busy output folder, "
               "130/143 interrupted/terminated. Rerunning into the same output folder skips "
               "windows made from the same frame contents and options, and redoes the rest.")
    _add_input_args(p)
    _add_window_args(p)
    _add_reconstruction_args(p)
    _add_vggt_args(p)
    _add_memory_args(p)
    _add_da3_args(p)
    _add_output_args(p)
    return p


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Map parsed flags to the run configuration (each flag's dest is a field's name)."""
    values = {f.name: getattr(args, f.name) for f in fields(PipelineConfig) if hasattr(args, f.name)}
    return PipelineConfig(**values, show_progress=not args.quiet)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the run lasts, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread,
    so they end the run the way Ctrl-C does; the previous handlers are restored after."""
    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _configure_logging(*, verbose: bool, quiet: bool) -> None:
    """The pipeline's own logs at INFO (DEBUG with ``-v``, WARNING with ``-q``); other
    libraries' only from WARNING, so that ``-v`` shows the pipeline's stages, not their debug
    output."""
    logging.basicConfig(level=logging.WARNING, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger("pipeline").setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline from command-line arguments; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fps is not None and args.input_video is None:
        parser.error("--fps applies only to --input-video")
    if args.frame_pattern is not None and args.input_dir is None:
        parser.error("--frame-pattern applies only to --input-dir")
    _configure_logging(verbose=args.verbose, quiet=args.quiet)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .runner import run

    config = config_from_args(args)
    import pycolmap  # noqa: F401 - before our SIGTERM handler: importing pycolmap installs
    # glog's failure signal handler, which would abort on SIGTERM instead of ending the run
    try:
        with logging_redirect_tqdm(), _terminate_as_interrupt():
            summary = run(config)
    except DiskFullError as exc:  # windows were under way: what is written stays
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_WINDOWS_FAILED
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print("interrupted; rerun the same command to finish the remaining windows",
              file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    if config.profile_memory and summary.profile is not None:
        print(summary.profile.format(summary.device))
    if summary.is_main:
        print(summary.line())
        for line in summary.digest():
            print(f"  {line}")
    return EXIT_OK if summary.success else EXIT_WINDOWS_FAILED
