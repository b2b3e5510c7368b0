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
