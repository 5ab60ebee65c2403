"""Atomic result files: old or new content, never half, with normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from toy_problems.store import write_json_atomic, write_text_atomic


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
