"""Atomic result files: old or new content, never half, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from toy_problems.store import unwritable_reason, write_json_atomic, write_text_atomic


def test_atomic_text_replaces_whole_files_with_umask_permissions(tmp_path) -> None:
    path = write_text_atomic(tmp_path / "deep" / "result.txt", "first")
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["result.txt"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = write_json_atomic(tmp_path / "result.json", {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not JSON-serialisable
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_unwritable_reason_accepts_a_new_folder_and_leaves_no_probe(tmp_path) -> None:
    assert unwritable_reason(tmp_path / "new" / "deeper") is None
    assert list(tmp_path.iterdir()) == []  # nothing created, the probe removed


def test_unwritable_reason_names_a_file_in_the_way(tmp_path) -> None:
    (tmp_path / "a_file").write_text("")
    assert "is not a folder" in unwritable_reason(tmp_path / "a_file" / "results")


def test_unwritable_reason_reports_a_refused_write(tmp_path, monkeypatch) -> None:
    """A read-only mount (or a folder root cannot write) refuses the file itself: the probe's error is the reason."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    reason = unwritable_reason(tmp_path / "results")
    assert "not writable" in reason and "Read-only file system" in reason


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_unwritable_reason_reports_a_folder_without_write_permission(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "not writable" in unwritable_reason(locked / "results")
    finally:
        locked.chmod(0o700)
