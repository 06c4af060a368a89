"""fileio: the one place that puts files and folders into place atomically."""

from __future__ import annotations

import os
import stat

import pytest

from trojanscope.fileio import create_atomic, replace_dir_atomic, write_atomic


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_atomic_replaces_the_file_with_the_users_mode_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    old = os.umask(0o027)
    try:
        write_atomic(target, b"new")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new" and _names(tmp_path) == ["out.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_create_atomic_links_a_new_file_and_removes_its_leftovers(tmp_path):
    target = tmp_path / "catalog.sqlite"
    with create_atomic(target, suffixes=("-journal",)) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-")
        tmp.write_bytes(b"made")
        (tmp.parent / (tmp.name + "-journal")).write_bytes(b"")
    assert target.read_bytes() == b"made" and _names(tmp_path) == ["catalog.sqlite"]


def test_create_atomic_keeps_a_file_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "catalog.sqlite"
    with create_atomic(target) as tmp:
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")
    assert target.read_bytes() == b"theirs" and _names(tmp_path) == ["catalog.sqlite"]


def test_create_atomic_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "catalog.sqlite"
    with pytest.raises(KeyboardInterrupt), create_atomic(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_replace_dir_atomic_renames_the_tree_into_an_empty_folder(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    with replace_dir_atomic(out) as tmp:
        assert tmp.is_dir() and tmp.name.startswith(".tmp-")
        (tmp / "a").mkdir()
        (tmp / "a" / "f").write_bytes(b"x")
    assert (out / "a" / "f").read_bytes() == b"x" and _names(tmp_path) == ["export"]


def test_replace_dir_atomic_leaves_no_half_tree(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(RuntimeError), replace_dir_atomic(out) as tmp:
        (tmp / "f").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert _names(tmp_path) == []
