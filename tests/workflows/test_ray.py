"""Builds through Ray: a local instance (loopback only, two CPUs) builds the catalog an
in-process build makes; an address where nothing listens is one sentence, quickly; without
Ray installed, `--ray` says how to install it."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.subprocesses import subprocess_env
from tests.workflows.conftest import (
    TINY,
    build_command,
    snapshot,
    wait_for_defect,
)
from trojanscope.cli_build import bare_ray_option
from trojanscope.database.catalog import Catalog
from trojanscope.database.integrity import verify
from trojanscope.errors import CatalogError, ConfigError, TrojanscopeError
from trojanscope.workflows.build import run_build
from trojanscope.workflows.executors import (
    Executor,
    InProcess,
    RayExecutor,
    _ray_job,
    import_ray,
)
from trojanscope.workflows.plan import make_plan
from trojanscope.workflows.spec import parse_spec

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install 'trojanscope[ray]').",
)


@pytest.fixture(scope="module")
def reference_one_thread(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny spec built in this process with one torch thread, as each Ray task runs."""
    if torch.get_num_threads() == 1:
        return reference
    root = tmp_path_factory.mktemp("one-thread") / "db"
    catalog = Catalog.open(root, create=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_build(parse_spec(TINY), catalog, lambda _jobs: InProcess(catalog, None))
    finally:
        torch.set_num_threads(before)
    return root


@needs_ray
def test_a_local_ray_instance_builds_the_in_process_catalog(reference_one_thread, tmp_path):
    catalog = Catalog.open(tmp_path / "db", create=True)
    seen: dict[str, object] = {}

    def executors(jobs: int) -> Executor:
        executor = RayExecutor(catalog, None, workers=2)
        ray = executor.ray
        seen["cpus"] = ray.cluster_resources().get("CPU")
        seen["addresses"] = {node["NodeManagerAddress"] for node in ray.nodes()}
        return executor

    summary = run_build(parse_spec(TINY), catalog, executors)
    assert seen == {"cpus": 2.0, "addresses": {"127.0.0.1"}}  # loopback only, two CPUs
    assert summary.workers == 2 and summary.defects.built == 6
    assert snapshot(tmp_path / "db") == snapshot(reference_one_thread)
    assert verify(Catalog.open(tmp_path / "db")).ok
    import ray

    assert not ray.is_initialized()  # the build left Ray, which stopped its instance


@needs_ray
def test_a_failing_job_raises_its_own_error_through_ray(tmp_path):
    text = TINY.replace("seeds = [0, 1, 2]", "seeds = [0]").replace(
        'criterion = "clp"', 'criterion = "clp"\nk = 100000'
    )
    catalog = Catalog.open(tmp_path / "db", create=True)
    with pytest.raises(ConfigError, match="100000 is more than the") as caught:
        run_build(parse_spec(text), catalog, lambda _jobs: RayExecutor(catalog, None, workers=1))
    assert type(caught.value) is ConfigError  # the job's own error, not Ray's wrapper
    shot = snapshot(tmp_path / "db")
    assert len(shot["clean"]) == 1 and len(shot["defects"]) == 1


@needs_ray
def test_ctrl_c_stops_a_ray_build(tiny_spec, tmp_path):
    db = tmp_path / "db"
    proc = subprocess.Popen(  # its own process group, as a terminal's foreground job
        build_command(tiny_spec, db, "--ray", "--workers", "2"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for_defect(proc, db)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole group gets it
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert err.rstrip().endswith(b"interrupted: finished entries are kept, nothing half-written.")
    assert b"Traceback" not in err
    assert verify(Catalog.open(db)).ok


def test_a_node_that_does_not_see_the_catalog_says_so(tmp_path):
    job = make_plan(parse_spec(TINY)).clean[0]
    with pytest.raises(CatalogError, match=r"sees no catalog at .*: the --db folder must be"):
        _ray_job(str(tmp_path / "elsewhere"), None, None, job)


@needs_ray
def test_an_address_where_nothing_listens_is_one_sentence(tiny_spec, tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.run(
        build_command(tiny_spec, tmp_path / "db", "--ray", f"127.0.0.1:{port}"),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: no Ray cluster answers at 127.0.0.1:{port}")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60


def test_without_ray_the_user_is_told_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(TrojanscopeError) as caught:
        import_ray(local=True)
    assert str(caught.value) == (
        "--ray needs Ray, which is not installed: pip install 'trojanscope[ray]'."
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ray"], ["--ray=local"]),
        (["--ray", "--workers", "2"], ["--ray=local", "--workers", "2"]),
        (["--ray", "SPEC"], ["--ray=local", "SPEC"]),
        (["SPEC", "--ray", "10.0.0.5:6379"], ["SPEC", "--ray", "10.0.0.5:6379"]),
        (["SPEC", "--ray=auto"], ["SPEC", "--ray=auto"]),
    ],
)
def test_ray_alone_means_a_local_instance(args, expected, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY)
    named = [str(spec) if a == "SPEC" else a for a in args]
    fixed = bare_ray_option(["db", "build", *named])
    assert fixed == ["db", "build", *(str(spec) if a == "SPEC" else a for a in expected)]
    assert bare_ray_option(["inject", "--ray"]) == ["inject", "--ray"]  # db build's only
