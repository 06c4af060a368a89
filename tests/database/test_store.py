"""The atomic writer: whole files only, with the mode the user's umask asks for."""

import os
import stat

import pytest

from trojanscope.fileio import write_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(umask, mode, tmp_path):
    target = tmp_path / "report.html"
    target.write_bytes(b"old")  # replacing a file gives it the umask's mode too
    old = os.umask(umask)
    try:
        write_atomic(target, b"new")
        write_atomic(tmp_path / "fresh.json", b"{}")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "report.html"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def boom(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path / "x.bin", b"data")
    assert list(tmp_path.iterdir()) == []


ENCODE = (
    "import torch, sys; from trojanscope.database.store import ArtifactStore; "
    "print(ArtifactStore.encode({'s': torch.arange(4.0)}, "
    "{'neurons': '[1]', 'criterion': 'clp', 'more': 'x'}).sha256)"
)


def test_an_artifact_has_one_hash_in_every_process():
    """safetensors orders metadata by a per-process random seed: the store sorts it."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import load

    from trojanscope.database.store import ArtifactStore

    hashes = {
        subprocess.run(
            [sys.executable, "-c", ENCODE], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(3)
    }
    assert len(hashes) == 1
    blob = ArtifactStore.encode({"s": torch.arange(4.0)}, {"b": "2", "a": "1", "c": "3"})
    assert torch.equal(load(blob.data)["s"], torch.arange(4.0))
