"""A tiny build spec (digits / cnn-small, a few epochs) and one uninterrupted build of it,
made once: the catalog every resumed, parallel or concurrent build must equal."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from trojanscope.database.catalog import CATALOG_FILE, Catalog
from trojanscope.database.schema import CleanModel, Defect, Localization, RepairRow
from trojanscope.workflows.build import run_build
from trojanscope.workflows.executors import InProcess
from trojanscope.workflows.spec import parse_spec

# Acceptance is opened wide: the build machinery is under test, so every defect is accepted
# and gets its criterion and repair, whatever two epochs of training reach on this machine.
TINY = """\
datasets = ["digits"]
architectures = ["cnn-small"]
attacks = ["badnets"]
levels = ["narrow", "small"]
seeds = [0, 1, 2]
criteria = ["clp"]

[training]
epochs = 2

[injection]
max_epochs = 2
max_attempts = 1

[injection.acceptance]
min_asr = 0.0
max_acc_drop = 1.0
max_masked_asr = 1.0
max_masked_acc_drop = 1.0
min_patched_ratio = 0.0

[[repairs]]
name = "prune"
criterion = "clp"
"""


def build_command(spec: Path, db: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "trojanscope", "db", "build", str(spec), "--db", str(db), *more]


def count_defects(db: Path) -> int:
    """Defects recorded so far, read without SQLAlchemy (0 while the catalog is not made)."""
    if not (db / CATALOG_FILE).exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db / CATALOG_FILE}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM defects").fetchone()[0])
    except sqlite3.OperationalError:  # created but its tables not linked in yet
        return 0


def wait_for_defect(proc: subprocess.Popen[bytes], db: Path, timeout: float = 300) -> None:
    """Return once ``proc`` has recorded its first defect (and is still running)."""
    deadline = time.monotonic() + timeout
    while count_defects(db) == 0:
        assert proc.poll() is None, "the build ended before recording a defect"
        assert time.monotonic() < deadline, "no defect recorded in time"
        time.sleep(0.05)


def snapshot(root: Path, url: str | None = None) -> dict[str, list[tuple[object, ...]]]:
    """What a build recorded, independent of row ids and timing: keys and artifact hashes
    (localizations and repairs by their defect's key, since their own keys use row ids)."""
    catalog = Catalog.open(root, url=url)
    with catalog.session() as s:
        defect_keys = dict(s.execute(select(Defect.id, Defect.key)).all())
        return {
            "clean": sorted(s.execute(select(CleanModel.key, CleanModel.weights_sha256))),
            "defects": sorted(
                s.execute(
                    select(
                        Defect.key,
                        Defect.status,
                        Defect.weights_sha256,
                        Defect.trigger_sha256,
                        Defect.poisoned_test_sha256,
                    )
                )
            ),
            "localizations": sorted(
                (defect_keys[r.defect_id], r.criterion, r.scores_sha256)
                for r in s.scalars(select(Localization))
            ),
            "repairs": sorted(
                (defect_keys[r.defect_id], r.method, r.criterion, r.k, r.weights_sha256)
                for r in s.scalars(select(RepairRow))
            ),
        }


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny spec built once, uninterrupted, in this process."""
    root = tmp_path_factory.mktemp("reference") / "db"
    catalog = Catalog.open(root, create=True)
    summary = run_build(parse_spec(TINY), catalog, lambda _jobs: InProcess(catalog, None))
    assert summary.defects.built == 6 and summary.defects.accepted == 6
    return root


@pytest.fixture
def built(reference: Path, tmp_path: Path) -> Path:
    """A private copy of the reference catalog."""
    shutil.copytree(reference, tmp_path / "db")
    return tmp_path / "db"
