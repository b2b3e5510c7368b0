"""remove_tree: folders the pipeline made are removed even after a ``chmod 000``; links are
removed, never followed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from pipeline.infra.files import remove_tree

NOBODY = 65534


def locked_tree(root: Path) -> Path:
    """``root/made`` holding files and folders whose permissions are all taken away, one of
    them a link to a folder outside it."""
    made = root / "made"
    (made / "a" / "b").mkdir(parents=True)
    (made / "a" / "b" / "file").write_text("x")
    (made / "c").mkdir()
    (root / "outside").mkdir()
    (root / "outside" / "keep").write_text("y")
    (made / "c" / "link").symlink_to(root / "outside")
    (root / "outside").chmod(0o500)
    for folder in (made / "a" / "b", made / "a", made / "c", made):
        folder.chmod(0)
    return made


def as_nobody(function) -> int:
    """Run ``function`` in a child process of user nobody (root ignores every mode, so that
    is the only way a test run as root meets a ``chmod 000``); its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os._exit(0 if function() else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def shared_tmp():
    """A folder user nobody can reach (pytest's own is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="test-files-"))
    folder.chmod(0o777)
    yield folder
    for root, dirs, _ in os.walk(folder):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o700)
    shutil.rmtree(folder)


def test_a_folder_whose_permissions_were_taken_away_is_removed(shared_tmp):
    if os.geteuid() == 0:
        root = shared_tmp / "user"
        root.mkdir()
        os.chown(root, NOBODY, NOBODY)
        status = as_nobody(lambda: remove_tree(locked_tree(root)))
    else:
        root = shared_tmp
        status = 0 if remove_tree(locked_tree(root)) else 1
    assert status == 0
    assert not (root / "made").exists()
    assert (root / "outside" / "keep").read_text() == "y"  # the link was not followed
    assert (root / "outside").stat().st_mode & 0o777 == 0o500  # nor its mode changed


def test_a_link_is_removed_not_followed(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert remove_tree(tmp_path / "link")
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "target" / "file").read_text() == "x"
    assert remove_tree(tmp_path / "nothing")  # already gone


def test_what_cannot_be_removed_stays_and_says_so(shared_tmp):
    """Another user's folder (or a read-only mount) is left, and False says so."""
    if os.geteuid() != 0:
        pytest.skip("needs a folder of another user")
    theirs = shared_tmp / "theirs"
    (theirs / "inner").mkdir(parents=True)
    (theirs / "inner" / "file").write_text("x")
    assert as_nobody(lambda: not remove_tree(theirs)) == 0
    assert (theirs / "inner" / "file").read_text() == "x"
