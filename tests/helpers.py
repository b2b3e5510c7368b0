"""Small helpers shared by the tests: reading a pipeline output folder."""

from __future__ import annotations

import json
from pathlib import Path


def window_dirs(out: Path) -> list[Path]:
    """The window folders of an output folder, in window order."""
    return sorted(Path(out).glob("batch_*/window_*"), key=lambda p: p.name)


def window_info(window: Path) -> dict:
    """A window's ``window_info.json``."""
    return json.loads((Path(window) / "window_info.json").read_text())


def frames_with_blank_window(images: Path, out: Path, count: int = 12,
                             blank: range = range(4, 8)) -> Path:
    """Copy the first ``count`` frames of ``images`` into ``out``, replacing the frames whose
    positions are in ``blank`` by flat grey images of the same size (no texture: no keypoint,
    no match, no model), so that a window made of exactly those frames must fail."""
    from shutil import copy

    from PIL import Image

    out.mkdir(parents=True)
    for i, path in enumerate(sorted(Path(images).iterdir())[:count]):
        if i in blank:
            with Image.open(path) as image:
                Image.new("RGB", image.size, (110, 110, 110)).save(out / path.name)
        else:
            copy(path, out / path.name)
    return out
