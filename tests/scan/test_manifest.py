"""Integrity manifests: create/verify round trip, tampering, hostile entries and symlinks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from trojanscope.errors import TrojanscopeError
from trojanscope.scan import manifest as manifest_mod
from trojanscope.scan.manifest import (
    MANIFEST_NAME,
    ManifestResult,
    create_manifest,
    verify_manifest,
)


def _tree(root: Path) -> Path:
    """A small model release with nested folders."""
    files = {
        "config.json": b'{"arch": "resnet18"}',
        "weights/model.safetensors": b"\x00\x01weights" * 100,
        "weights/shards/part-0001.bin": b"shard one",
        "weights/shards/part-0002.bin": b"shard two",
        "tokenizer/vocab.txt": b"a\nb\nc\n",
        "empty.bin": b"",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_manifest(path: Path, files: list[dict[str, object]]) -> Path:
    doc = {"version": 1, "algorithm": "sha256", "created": "2024-01-01T00:00:00+00:00"}
    path.write_text(json.dumps({**doc, "files": files}))
    return path


def _symlink(link: Path, target: Path) -> None:
    try:
        link.symlink_to(target)
    except (OSError, NotImplementedError):
        pytest.skip("symbolic links are not available on this system")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    root.mkdir()
    return _tree(root)


def _verify_spying(monkeypatch, root, manifest):
    """verify_manifest with every os.open recorded (refused entries must never be opened)."""
    opened: list[str] = []
    real_open = os.open

    def spy(path: object, *args: object, **kwargs: object) -> int:
        opened.append(os.fspath(path))  # type: ignore[arg-type]
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(manifest_mod.os, "open", spy)
    result = verify_manifest(root, manifest)
    monkeypatch.undo()
    return result, opened


def test_round_trip_nested_tree_is_ok(model: Path) -> None:
    out = create_manifest(model)
    assert out == model.resolve() / MANIFEST_NAME
    doc = json.loads(out.read_text())
    assert doc["version"] == 1 and doc["algorithm"] == "sha256"
    paths = [f["path"] for f in doc["files"]]
    assert paths == sorted(paths)
    assert "weights/shards/part-0001.bin" in paths
    assert MANIFEST_NAME not in paths
    entry = next(f for f in doc["files"] if f["path"] == "tokenizer/vocab.txt")
    assert entry == {"path": "tokenizer/vocab.txt", "size": 6, "sha256": _sha(b"a\nb\nc\n")}

    result = verify_manifest(model)
    assert result.ok, result.as_dict()
    assert len(result.verified) == 6
    # No temporary file is left behind by the atomic write.
    assert sorted(p.name for p in model.iterdir() if p.name.startswith(".")) == []


def test_manifest_does_not_list_itself_when_recreated(model: Path) -> None:
    create_manifest(model)
    doc = json.loads(create_manifest(model).read_text())
    assert MANIFEST_NAME not in [f["path"] for f in doc["files"]]
    assert verify_manifest(model).ok


def test_custom_output_location(model: Path, tmp_path: Path) -> None:
    out = create_manifest(model, tmp_path / "release.json")
    assert out == tmp_path / "release.json"
    assert not (model / MANIFEST_NAME).exists()
    assert verify_manifest(model, out).ok


def test_stale_default_manifest_is_ignored(model: Path, tmp_path: Path) -> None:
    """A stale ``trojanscope-manifest.json`` in the folder is neither hashed nor extra."""
    (model / MANIFEST_NAME).write_text("stale")
    out = create_manifest(model, tmp_path / "release.json")
    assert MANIFEST_NAME not in [f["path"] for f in json.loads(out.read_text())["files"]]
    result = verify_manifest(model, out)
    assert result.ok, result.as_dict()


def test_edited_byte_is_reported(model: Path) -> None:
    create_manifest(model)
    target = model / "weights" / "model.safetensors"
    data = bytearray(target.read_bytes())
    expected = _sha(bytes(data))
    data[5] ^= 0x01
    target.write_bytes(bytes(data))

    result = verify_manifest(model)
    assert not result.ok
    assert [(e.path, e.expected_sha256, e.actual_sha256) for e in result.edited] == [
        ("weights/model.safetensors", expected, _sha(bytes(data)))
    ]
    assert result.missing == [] and result.extra == [] and result.refused == []


def test_deleted_file_is_missing(model: Path) -> None:
    create_manifest(model)
    (model / "weights" / "shards" / "part-0002.bin").unlink()
    result = verify_manifest(model)
    assert not result.ok
    assert result.missing == ["weights/shards/part-0002.bin"]
    assert result.edited == [] and result.extra == []


def test_added_file_is_extra(model: Path) -> None:
    create_manifest(model)
    (model / "tokenizer" / "merges.txt").write_text("new")
    result = verify_manifest(model)
    assert not result.ok
    assert result.extra == ["tokenizer/merges.txt"]
    assert result.edited == [] and result.missing == []


@pytest.mark.parametrize(
    ("bad_path", "reason_word"),
    [
        ("../secret.bin", ".."),
        ("a/../../secret.bin", ".."),
        ("/etc/passwd", "absolute"),
        ("a\\b", "backslash"),
        ("", "empty"),
        ("a\x00b", "NUL"),
        ("./config.json", "canonical"),
        ("C:/secret.bin", "absolute"),
    ],
)
def test_hostile_entries_are_refused_and_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_path: str, reason_word: str
) -> None:
    root = tmp_path / "model"
    (root / "a").mkdir(parents=True)
    secret = b"outside the release"
    (tmp_path / "secret.bin").write_bytes(secret)  # what '../secret.bin' would reach
    manifest = _write_manifest(
        tmp_path / "m.json", [{"path": bad_path, "size": len(secret), "sha256": _sha(secret)}]
    )
    result, opened = _verify_spying(monkeypatch, root, manifest)

    assert opened == []
    assert result.verified == [] and result.edited == [] and result.missing == []
    assert [r.path for r in result.refused] == [bad_path]
    assert reason_word in result.refused[0].reason
    assert not result.ok


def test_absolute_path_to_real_outside_file_is_not_verified(tmp_path: Path) -> None:
    root = tmp_path / "model"
    root.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    manifest = _write_manifest(
        tmp_path / "m.json", [{"path": str(outside), "size": 1, "sha256": _sha(b"x")}]
    )
    result = verify_manifest(root, manifest)
    assert result.verified == []
    assert [r.path for r in result.refused] == [str(outside)]


def test_symlink_leaving_directory_is_refused_at_create(model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the release")
    _symlink(model / "weights" / "escape.bin", outside)
    with pytest.raises(TrojanscopeError, match=r"'weights/escape\.bin'.*outside the directory"):
        create_manifest(model)
    assert not (model / MANIFEST_NAME).exists()


def test_symlink_inside_directory_is_refused_at_create(model: Path) -> None:
    _symlink(model / "alias.json", model / "config.json")
    with pytest.raises(TrojanscopeError, match=r"'alias\.json'.*symbolic link"):
        create_manifest(model)


def test_symlink_leaving_directory_is_refused_at_verify(model: Path, tmp_path: Path) -> None:
    create_manifest(model)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the release")
    _symlink(model / "escape.bin", outside)
    result = verify_manifest(model)
    assert not result.ok
    assert [(r.path, "outside" in r.reason) for r in result.refused] == [("escape.bin", True)]
    assert result.extra == []


def test_entry_through_symlinked_folder_is_refused(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listed path that matches a file outside, reached via a linked folder, is not opened."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "w.bin").write_bytes(b"w")
    _symlink(model / "linked", elsewhere)
    manifest = _write_manifest(
        tmp_path / "m.json", [{"path": "linked/w.bin", "size": 1, "sha256": _sha(b"w")}]
    )
    result, opened = _verify_spying(monkeypatch, model, manifest)

    assert opened == []
    assert result.verified == []
    refused = {r.path: r.reason for r in result.refused}
    assert "outside" in refused["linked/w.bin"]
    assert "outside" in refused["linked"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe garbage",
        b"[]",
        b'{"version": 2, "algorithm": "sha256", "created": "x", "files": []}',
        b'{"version": 1, "algorithm": "md5", "created": "x", "files": []}',
        b'{"version": true, "algorithm": "sha256", "created": "x", "files": []}',
        b'{"version": 1, "algorithm": "sha256", "created": "x", "files": {}}',
        b'{"version": 1, "algorithm": "sha256", "created": "x",'
        b' "files": [{"path": "a", "size": -1, "sha256": "' + b"0" * 64 + b'"}]}',
        b'{"version": 1, "algorithm": "sha256", "created": "x",'
        b' "files": [{"path": "a", "size": 1, "sha256": "XYZ"}]}',
        b'{"version": 1, "algorithm": "sha256", "created": "x",'
        b' "files": [{"path": 3, "size": 1, "sha256": "' + b"0" * 64 + b'"}]}',
    ],
)
def test_bad_manifest_raises_one_sentence(model: Path, content: bytes) -> None:
    (model / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(TrojanscopeError) as info:
        verify_manifest(model)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message
    assert MANIFEST_NAME in message


def test_duplicate_entries_are_rejected(model: Path, tmp_path: Path) -> None:
    entry = {"path": "config.json", "size": 1, "sha256": "0" * 64}
    manifest = _write_manifest(tmp_path / "m.json", [entry, entry])
    with pytest.raises(TrojanscopeError, match="more than once"):
        verify_manifest(model, manifest)


def test_oversized_manifest_is_not_read(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_manifest(model)
    monkeypatch.setattr(manifest_mod, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(TrojanscopeError, match="larger than 100 bytes"):
        verify_manifest(model)


def test_hashing_streams_in_bounded_chunks(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tiny chunk size the digests are unchanged, so hashing really is chunked."""
    big = model / "weights" / "model.safetensors"
    monkeypatch.setattr(manifest_mod, "CHUNK_SIZE", 7)
    doc = json.loads(create_manifest(model).read_text())
    entry = next(f for f in doc["files"] if f["path"] == "weights/model.safetensors")
    assert entry["sha256"] == _sha(big.read_bytes())
    assert entry["size"] == big.stat().st_size


def test_output_is_deterministic_except_created(model: Path, tmp_path: Path) -> None:
    first = create_manifest(model, tmp_path / "one.json").read_text()
    second = create_manifest(model, tmp_path / "two.json").read_text()
    one, two = json.loads(first), json.loads(second)
    assert isinstance(one.pop("created"), str) and isinstance(two.pop("created"), str)
    assert one == two
    normalised = [
        text.replace(json.dumps(json.loads(text)["created"]), '"T"') for text in (first, second)
    ]
    assert normalised[0] == normalised[1]


def test_result_as_dict_is_json_ready(model: Path) -> None:
    create_manifest(model)
    (model / "config.json").write_text("{}")
    (model / "empty.bin").unlink()
    (model / "new.bin").write_bytes(b"n")
    data = verify_manifest(model).as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["ok"] is False
    assert [e["path"] for e in data["edited"]] == ["config.json"]
    assert data["missing"] == ["empty.bin"] and data["extra"] == ["new.bin"]
    assert set(data) == {"ok", "verified", "edited", "missing", "extra", "refused"}


def test_empty_result_is_ok() -> None:
    assert ManifestResult().ok
    assert not ManifestResult(missing=["x"]).ok


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_manifest_mode_follows_the_umask(model: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        out = create_manifest(model)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == mode
