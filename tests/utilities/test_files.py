"""Atomic outputs: whole or absent, and nothing left behind on error."""

from __future__ import annotations

import pytest

from lightning_unlearn.utilities.files import atomic_file, atomic_folder, write_text_atomically


def test_file_is_replaced_whole_and_errors_leave_the_old_one(tmp_path):
    path = tmp_path / "out" / "a.txt"
    write_text_atomically(path, "first")
    with pytest.raises(RuntimeError), atomic_file(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "first"
    write_text_atomically(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_folder_overwrite_or_keep(tmp_path):
    path = tmp_path / "model"
    with atomic_folder(path) as staging:
        (staging / "x").write_text("1")
    with atomic_folder(path) as staging:
        (staging / "y").write_text("2")
    assert sorted(p.name for p in path.iterdir()) == ["y"]  # replaced
    with atomic_folder(path, overwrite=False) as staging:
        (staging / "z").write_text("3")
    assert sorted(p.name for p in path.iterdir()) == ["y"]  # kept: someone finished it first
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "other") as staging:
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_outputs_get_the_permissions_a_plain_write_gives(tmp_path):
    """Written aside under a private temporary name, the result is readable as a file or folder made in place."""
    from lightning_unlearn.utilities.files import atomic_folder, write_text_atomically

    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "plain").mkdir()
    write_text_atomically(tmp_path / "atomic.txt", "x")
    with atomic_folder(tmp_path / "atomic") as staging:
        (staging / "inside.txt").write_text("x")
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("atomic.txt") == mode("plain.txt") and mode("atomic") == mode("plain")
