"""Builds: a rebuild reuses everything; a build killed at any point (the driver or a worker)
resumes to the same catalog as an uninterrupted one; parallel and concurrent builds record
every job exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select

from tests.subprocesses import subprocess_env
from tests.workflows.conftest import (
    TINY,
    build_command,
    snapshot,
    wait_for_defect,
)
from trojanscope.database.catalog import Catalog
from trojanscope.database.integrity import verify
from trojanscope.database.schema import JobClaim
from trojanscope.errors import ConfigError, TrojanscopeError
from trojanscope.workflows.build import run_build
from trojanscope.workflows.executors import make_executor
from trojanscope.workflows.plan import check_catalog, make_plan
from trojanscope.workflows.spec import parse_spec


def build(root: Path, text: str = TINY, workers: int = 1, threads: int | None = None):
    """Build ``text`` in ``root`` in this process or in a pool, with ``threads`` torch
    threads (default: this process's, so that both build the same catalog however the suite
    is run)."""
    catalog = Catalog.open(root, create=True)
    before = torch.get_num_threads()
    threads = threads or before
    executors = lambda jobs: make_executor(catalog, None, workers, jobs, threads)  # noqa: E731
    torch.set_num_threads(threads)
    try:
        return run_build(parse_spec(text), catalog, executors)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference_one_thread(reference, tmp_path_factory):
    """The reference as `db build --workers N` builds it: one torch thread per process (the
    reference itself when the suite runs with one)."""
    if torch.get_num_threads() == 1:
        return reference
    root = tmp_path_factory.mktemp("one-thread") / "db"
    build(root, threads=1)
    return root


def test_the_build_records_the_planned_keys(reference):
    catalog = Catalog.open(reference)
    plan = check_catalog(make_plan(parse_spec(TINY)), catalog)
    assert plan.done == set(plan.keys)  # every key the plan names is what the build recorded
    shot = snapshot(reference)
    assert [k for k, *_ in shot["defects"]] == sorted(j.key for j in plan.defects)
    assert [k for k, _ in shot["clean"]] == [plan.clean[0].key]
    assert len(shot["localizations"]) == len(shot["repairs"]) == 6
    assert verify(catalog).ok


def test_a_rebuild_reuses_everything(built):
    before = snapshot(built)
    summary = build(built)
    assert summary.defects.built == summary.clean_models.built == summary.analyses_built == 0
    assert summary.defects.reused == 6 and summary.clean_models.reused == 1
    assert summary.swept == 0
    assert [(c.level, c.planned, c.reused, c.accepted) for c in summary.cells] == [
        ("narrow", 3, 3, 3),
        ("small", 3, 3, 3),
    ]
    assert snapshot(built) == before


def test_two_workers_build_the_same_catalog(reference, tmp_path):
    summary = build(tmp_path / "db", workers=2)
    assert summary.workers == 2 and summary.defects.built == 6
    assert snapshot(tmp_path / "db") == snapshot(reference)
    assert verify(Catalog.open(tmp_path / "db")).ok


def test_a_killed_build_resumes_to_the_uninterrupted_catalog(reference, tiny_spec, tmp_path):
    db = tmp_path / "db"
    proc = subprocess.Popen(
        build_command(tiny_spec, db),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_defect(proc, db)
    finally:
        proc.kill()  # SIGKILL: no handler, no clean-up
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted = snapshot(db)
    assert 1 <= len(interrupted["defects"]) < 6
    summary = build(db)
    assert summary.defects.reused == len(interrupted["defects"])
    assert summary.defects.built == 6 - len(interrupted["defects"])
    assert snapshot(db) == snapshot(reference)
    assert verify(Catalog.open(db)).ok  # no orphan, no temporary file, nothing missing


def _workers_of(pid: int) -> list[int]:
    """The pool's worker processes among the children of ``pid`` (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = []
    for child in map(int, children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(child)
    return workers


def _pooled_build(spec: Path, db: Path, **popen: Any) -> subprocess.Popen:
    """`db build` with two workers in a subprocess, its errors piped."""
    return subprocess.Popen(
        build_command(spec, db, "--workers", "2"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **popen,
    )


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_worker_stops_the_build_which_then_resumes(
    reference_one_thread, tiny_spec, tmp_path
):
    db = tmp_path / "db"
    proc = _pooled_build(tiny_spec, db)
    try:
        wait_for_defect(proc, db)
        workers = _workers_of(proc.pid)
        assert workers
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 2, err
    assert b"a build worker ended without reporting" in err and b"Traceback" not in err
    build(db, workers=2, threads=1)
    assert snapshot(db) == snapshot(reference_one_thread)
    assert verify(Catalog.open(db)).ok


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_a_pooled_build_and_its_workers(reference_one_thread, tiny_spec, tmp_path):
    db = tmp_path / "db"
    # its own process group, as a terminal's foreground job
    proc = _pooled_build(tiny_spec, db, start_new_session=True)
    try:
        wait_for_defect(proc, db)
        workers = _workers_of(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole group gets it
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert err.rstrip().endswith(b"interrupted: finished entries are kept, nothing half-written.")
    assert b"Traceback" not in err and b"leaked" not in err
    assert workers and not any(Path(f"/proc/{pid}").exists() for pid in workers)
    build(db, workers=2, threads=1)
    assert snapshot(db) == snapshot(reference_one_thread)
    assert verify(Catalog.open(db)).ok


#: `db build` with every job it runs noted in a journal (one line per job: pid and key).
JOURNALED_BUILD = """\
import os, sys
from trojanscope.workflows import executors

real = executors.run_job

def noted(job, catalog, device):
    with open(os.environ["JOURNAL"], "a") as fh:
        fh.write(f"{os.getpid()} {job.key}\\n")
    return real(job, catalog, device)

executors.run_job = noted
from trojanscope.entry import main
sys.argv = ["trojanscope", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_builds_of_one_spec_run_each_job_once(
    backend, reference, tiny_spec, tmp_path, request
):
    """Two `db build` of one spec at once, on one catalog: every job runs exactly once (the
    claims), every key is recorded once, and the catalog equals an uninterrupted build's."""
    db = tmp_path / "db"
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    script = tmp_path / "journaled.py"
    script.write_text(JOURNALED_BUILD)
    journal = tmp_path / "journal"
    command = [sys.executable, str(script), *build_command(tiny_spec, db, "--json")[3:]]
    if url is not None:
        command += ["--db-url", url]
    procs = [
        subprocess.Popen(
            command,
            env={**subprocess_env(), "JOURNAL": str(journal)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    summaries = [json.loads(out) for out, _ in outputs]
    plan = make_plan(parse_spec(TINY))
    runs = [line.split() for line in journal.read_text().splitlines()]
    assert sorted(key for _, key in runs) == sorted(plan.keys)  # each job ran exactly once
    assert len({pid for pid, _ in runs}) == 2  # and the two builds shared them
    assert sum(s["defects"]["built"] for s in summaries) == 6
    assert sum(s["clean_models"]["built"] for s in summaries) == 1
    assert all(s["defects"]["built"] + s["defects"]["reused"] == 6 for s in summaries)
    assert all(s["defects"]["accepted"] == 6 for s in summaries)
    assert snapshot(db, url) == snapshot(reference)  # no duplicate key, nothing missing
    catalog = Catalog.open(db, url=url)
    assert verify(catalog).ok  # no orphan file
    with catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(JobClaim)) == 0  # all released


def test_an_attack_that_does_not_fit_is_refused_before_any_training(tmp_path):
    text = TINY.replace(
        'attacks = ["badnets"]', 'attacks = [{ name = "badnets", params = { size = 20 } }]'
    )
    with pytest.raises(TrojanscopeError, match=r"attack badnets size=20 on digits: .*8x8"):
        build(tmp_path / "db", text)
    assert snapshot(tmp_path / "db")["clean"] == []


def test_the_first_failing_job_stops_the_build_and_keeps_what_was_made(tmp_path):
    text = TINY.replace("seeds = [0, 1, 2]", "seeds = [0]").replace(
        'criterion = "clp"', 'criterion = "clp"\nk = 100000'
    )
    with pytest.raises(ConfigError, match="100000 is more than the"):
        build(tmp_path / "db", text)
    shot = snapshot(tmp_path / "db")
    assert len(shot["clean"]) == 1 and len(shot["defects"]) == 1 and len(shot["localizations"]) == 1
    assert verify(Catalog.open(tmp_path / "db")).ok


def test_a_stopped_build_removes_what_its_jobs_wrote_and_never_recorded(tmp_path, monkeypatch):
    """A job stopped between writing an artifact and its commit (a Ray task Ctrl-C reached
    there) leaves an orphan; the stopped build removes it, so the catalog verifies at once."""
    from trojanscope.workflows import build as build_module

    def stopped(plan, executor, progress, sharing):
        sharing.catalog.store.put({"w": torch.zeros(3)})  # written, never recorded
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "execute", stopped)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "db")
    assert verify(Catalog.open(tmp_path / "db")).ok
