"""Entries and their artifacts: written together under the write lock, never half; orphans of
a killed writer found by verify and removed by sweep; tampered and missing files reported."""

import sqlite3
import subprocess
import sys
import textwrap

import torch

from tests.subprocesses import subprocess_env
from trojanscope.database.catalog import CATALOG_FILE
from trojanscope.database.integrity import sweep, verify
from trojanscope.database.schema import CleanModel


def clean_row(key: str, sha: str) -> CleanModel:
    """A clean-model entry naming artifact ``sha`` (the figures do not matter here)."""
    return CleanModel(
        key=key,
        dataset="digits",
        dataset_params={},
        arch="cnn-small",
        arch_params={},
        seed=0,
        training={},
        input_shape={},
        clean_acc=1.0,
        weights_sha256=sha,
        seconds=0.0,
    )


def test_artifacts_are_written_only_under_the_write_lock(catalog, monkeypatch):
    blob = catalog.store.encode({"w": torch.arange(4.0)})
    real_write = catalog.store.write
    probes = []

    def probing_write(blobs):
        other = sqlite3.connect(catalog.root / CATALOG_FILE, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            probes.append("free")
        except sqlite3.OperationalError as exc:
            probes.append(str(exc))
        finally:
            other.close()
        real_write(blobs)

    monkeypatch.setattr(catalog.store, "write", probing_write)
    assert catalog.record(clean_row("a", blob.sha256), [blob])
    assert probes == ["database is locked"]
    assert verify(catalog).ok


def test_the_loser_of_a_race_writes_nothing(catalog):
    first = catalog.store.encode({"w": torch.zeros(3)})
    second = catalog.store.encode({"w": torch.ones(3)})
    assert catalog.record(clean_row("same", first.sha256), [first])
    assert not catalog.record(clean_row("same", second.sha256), [second])
    assert not catalog.store.path(second.sha256).exists()
    report = verify(catalog)
    assert report.ok and report.checked == 1


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from trojanscope.database.catalog import Catalog
    from tests.database.test_integrity import clean_row

    catalog = Catalog.open(sys.argv[1])
    real_write = catalog.store.write

    def write_then_die(blobs):
        real_write(blobs)
        os.kill(os.getpid(), signal.SIGKILL)  # after the files, before the commit

    catalog.store.write = write_then_die
    blob = catalog.store.encode({"w": torch.full((5,), 7.0)})
    catalog.record(clean_row("killed", blob.sha256), [blob])
    """
)


def test_a_writer_killed_before_its_commit_leaves_an_orphan_that_sweep_removes(catalog, tmp_path):
    kept = catalog.store.encode({"w": torch.arange(3.0)})
    assert catalog.record(clean_row("kept", kept.sha256), [kept])
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    done = subprocess.run([sys.executable, str(script), str(catalog.root)], env=subprocess_env())
    assert done.returncode == -9
    with catalog.session() as session:  # the entry was rolled back ...
        assert [r.key for r in session.query(CleanModel)] == ["kept"]
    report = verify(catalog)  # ... and its artifact is an orphan
    assert not report.ok and len(report.orphans) == 1 and not report.missing
    (catalog.store.path(kept.sha256).parent / ".tmp-0123").write_bytes(b"half a file")
    removed = sweep(catalog)
    assert len(removed) == 2 and any(p.name == ".tmp-0123" for p in removed)
    assert verify(catalog).ok
    assert torch.equal(catalog.store.get(kept.sha256)["w"], torch.arange(3.0))


def test_verify_reports_missing_corrupt_and_foreign_files(catalog):
    blobs = [catalog.store.encode({"w": torch.full((2,), float(i))}) for i in range(3)]
    for i, blob in enumerate(blobs):
        assert catalog.record(clean_row(f"k{i}", blob.sha256), [blob])
    path = catalog.store.path(blobs[0].sha256)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    catalog.store.path(blobs[1].sha256).unlink()
    foreign = path.parent / "notes.txt"
    foreign.write_text("mine")
    report = verify(catalog)
    assert report.checked == 3
    assert [p.sha256 for p in report.corrupt] == [blobs[0].sha256]
    assert [p.sha256 for p in report.missing] == [blobs[1].sha256]
    assert report.missing[0].referenced_by == ["clean_models 2 weights_sha256"]
    assert report.orphans == [foreign]
    sweep(catalog)  # a file of another name is reported, never removed
    assert foreign.exists() and path.exists()


def test_references_include_a_localizations_own_artifacts(built):
    catalog, *_, defect, _ = built
    from trojanscope.workflows.defects import localize

    loc, _ = localize(catalog, defect.id, "nc", {"steps": 2})  # NC stores its reversed triggers
    assert loc.extra and loc.extra.get("artifacts_sha256")
    assert verify(catalog).ok
    assert sweep(catalog) == []
