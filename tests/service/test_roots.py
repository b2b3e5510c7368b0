"""A job's paths must lie under an allowed root, resolved."""

from __future__ import annotations

import pytest

from pipeline.service.roots import AllowedRoots, ForbiddenPathError


def test_paths_are_resolved_before_they_are_compared(tmp_path):
    data, data2, outside = tmp_path / "data", tmp_path / "data2", tmp_path / "outside"
    for folder in (data, data2, outside):
        folder.mkdir()
    (data / "escape").symlink_to(outside)
    roots = AllowedRoots.of([data])
    assert roots.check(data / "seq", "--input-dir") == (data / "seq").resolve()
    assert roots.contains(data) and roots.contains(data / "new" / "deeper")
    for bad in (data2 / "seq", data / ".." / "outside", data / "escape" / "out",
                data / "escape"):
        assert not roots.contains(bad), bad
        with pytest.raises(ForbiddenPathError, match="outside the folders"):
            roots.check(bad, "--output-dir")
    with pytest.raises(ForbiddenPathError, match="absolute path"):
        roots.check("relative/out", "--output-dir")
    with pytest.raises(ForbiddenPathError, match="not an existing folder"):
        AllowedRoots.of([tmp_path / "missing"])
