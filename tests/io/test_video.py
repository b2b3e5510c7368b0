"""A video's frames are extracted once, upright, and sampled evenly in video time."""

from fractions import Fraction

import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.io.frames import load_image
from pipeline.io.video import (
    display_turn,
    extract_video_frames,
    sample_slot,
    video_frame_times,
)

av = pytest.importorskip("av")

W, H = 64, 48


def write_video(path, times, *, rate=30, rotation=None, fmt=None):
    """A video of frames shown at ``times`` (seconds, multiples of 1/``rate``), each frame a
    grey level rising with its index and a white 16x16 block in its top-left corner;
    ``rotation``: the display rotation written into the container (degrees counter-clockwise)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.time_base = Fraction(1, rate)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, t in enumerate(times):
            arr = np.full((H, W, 3), min(40 + 4 * i, 255), np.uint8)
            arr[:16, :16] = 255
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts, frame.time_base = round(t * rate), Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_extract_at_fps_once(tmp_path):
    video = write_video(tmp_path / "clip.mp4", np.arange(30) / 30)
    out = tmp_path / "frames"
    files = extract_video_frames(video, out, fps=10, show_progress=False)
    assert len(files) == 10  # 1 s of video at 10 fps
    assert files[0].name == "frame_000000.jpg"
    brightness = [load_image(f).mean() for f in files]
    assert all(b2 > b1 for b1, b2 in zip(brightness, brightness[1:]))
    mtime = files[0].stat().st_mtime_ns
    again = extract_video_frames(video, out, fps=10, show_progress=False)
    assert again == files
    assert files[0].stat().st_mtime_ns == mtime  # not decoded again
    times = video_frame_times(out)  # each frame's video time, for trajectory timestamps
    np.testing.assert_allclose(times, np.arange(10) / 10, atol=1 / 30 + 1e-6)


def test_all_frames_and_max_frames(tmp_path):
    video = write_video(tmp_path / "clip.mp4", np.arange(12) / 30)
    assert len(extract_video_frames(video, tmp_path / "a", show_progress=False)) == 12
    assert len(extract_video_frames(video, tmp_path / "b", max_frames=5,
                                    show_progress=False)) == 5


@pytest.mark.parametrize("fmt,suffix", [("matroska", "mkv"), ("mpegts", "ts")])
def test_a_video_starting_late_is_sampled_from_its_first_frame(tmp_path, fmt, suffix):
    """Streams cut from a camera or a broadcast start at any time: 2 fps of a video whose
    first frame is at 3 s are the frames at 3.0, 3.5, 4.0, ..., never a burst of neighbours
    while the sampling clock catches up from 0."""
    video = write_video(tmp_path / f"late.{suffix}", 3 + np.arange(150) / 30, fmt=fmt)
    files = extract_video_frames(video, tmp_path / "f", fps=2, show_progress=False)
    times = video_frame_times(tmp_path / "f")
    assert len(files) == 10
    np.testing.assert_allclose(times, 3 + np.arange(10) / 2, atol=1e-3)


def test_a_gap_in_the_video_is_skipped_not_filled_with_a_burst(tmp_path):
    """A variable-frame-rate video with 2 s missing (a camera that paused): the instants in
    the gap have no frame, and the frames after it are sampled at the same rate again."""
    shown = np.concatenate([np.arange(30) / 30, 3 + np.arange(30) / 30])
    video = write_video(tmp_path / "gap.mkv", shown, fmt="matroska")
    extract_video_frames(video, tmp_path / "f", fps=5, show_progress=False)
    times = np.array(video_frame_times(tmp_path / "f"))
    np.testing.assert_allclose(times, [0, .2, .4, .6, .8, 3, 3.2, 3.4, 3.6, 3.8], atol=1e-3)


def white_corner(path):
    """Which corner of the frame holds the white block: 'top-left', 'bottom-right', ..."""
    grey = load_image(path).mean(axis=2)
    ys, xs = np.nonzero(grey > 200)
    h, w = grey.shape
    return ("top" if ys.mean() < h / 2 else "bottom") + "-" + ("left" if xs.mean() < w / 2
                                                               else "right")


@pytest.mark.parametrize("rotation,size,corner", [
    (90, (W, H), "bottom-left"),     # portrait phone video held one way ...
    (-90, (W, H), "top-right"),      # ... and the other
    (180, (H, W), "bottom-right"),   # upside down
    (0, (H, W), "top-left"),
])
def test_frames_are_turned_upright_as_players_show_them(tmp_path, rotation, size, corner):
    """Phones store portrait video as landscape pictures with a display rotation; the frames
    are what a player shows (checked against ffmpeg's own autorotation by hand: a frame of
    a video rotated 90 degrees counter-clockwise has its top-left corner bottom-left)."""
    if rotation and not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    video = write_video(tmp_path / "phone.mp4", np.arange(6) / 30,
                        rotation=rotation or None)
    files = extract_video_frames(video, tmp_path / "f", show_progress=False)
    assert load_image(files[0]).shape[:2] == size
    assert white_corner(files[0]) == corner


def test_frames_extracted_by_an_older_rule_are_extracted_again(tmp_path):
    video = write_video(tmp_path / "clip.mp4", np.arange(6) / 30)
    out = tmp_path / "f"
    extract_video_frames(video, out, show_progress=False)
    manifest = out / "video.json"
    import json

    record = json.loads(manifest.read_text())
    del record["settings"]["extraction"]  # as written before frames were turned upright
    manifest.write_text(json.dumps(record))
    mtime = (out / "frame_000000.jpg").stat().st_mtime_ns
    extract_video_frames(video, out, show_progress=False)
    assert (out / "frame_000000.jpg").stat().st_mtime_ns != mtime
    assert "extraction" in json.loads(manifest.read_text())["settings"]


def test_display_turn_and_sample_slot():
    assert [display_turn(r) for r in (None, 0, 90, -90, 180, -180, 89.6, -44)] == \
        [0, 0, 90, 270, 180, 180, 90, 0]
    assert sample_slot(3.1, 3.0, 10) == 1  # 0.1 s * 10 is 0.99999... in floating point
    assert sample_slot(3.05, 3.0, 10) == 0


def test_max_frames_counts_frames_after_the_frame_step(tmp_path):
    """--max-frames N with --frame-step K on a video gives N frames, as on a folder."""
    from pipeline.runner import load_frames
    from pipeline.runner.config import PipelineConfig

    video = write_video(tmp_path / "clip.mp4", np.arange(40) / 30)
    frames = load_frames(PipelineConfig(input_video=video, output_dir=tmp_path / "out",
                                        frame_step=3, max_frames=5, show_progress=False))
    assert len(frames) == 5
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(0, 15, 3) / 30,
                               atol=1e-3)


def test_bad_video(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        extract_video_frames(tmp_path / "none.mp4", tmp_path / "f")
    (tmp_path / "bad.mp4").write_bytes(b"garbage" * 100)
    with pytest.raises(InputError, match="cannot decode video"):
        extract_video_frames(tmp_path / "bad.mp4", tmp_path / "f")


def test_a_video_cut_short_is_named(tmp_path, caplog):
    """A copy or download that did not finish decoded its first part without a word."""
    whole = write_video(tmp_path / "clip.mkv", np.arange(60) / 30)  # 2 s; Matroska decodes cut
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger="pipeline.io.video"):
        assert len(extract_video_frames(whole, tmp_path / "a", show_progress=False)) == 60
        assert len(extract_video_frames(whole, tmp_path / "b", fps=5, max_frames=3,
                                        show_progress=False)) == 3
        assert "truncated" not in caplog.text
        short = extract_video_frames(cut, tmp_path / "c", show_progress=False)
    assert 0 < len(short) < 60
    assert "says it lasts 2.0 s, but decoding stopped after" in caplog.text
