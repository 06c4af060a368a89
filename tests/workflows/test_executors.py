"""Local workers: on CUDA each gets a GPU of its own, decided by the build without any state
shared between the processes; terminated, they leave nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch

from tests.subprocesses import subprocess_env
from trojanscope.database.catalog import Catalog
from trojanscope.workflows import executors
from trojanscope.workflows.executors import WorkerPool


def probe(placement: dict[int, str]) -> tuple[int, torch.device | None]:
    """Run in a worker: its pid and the device its jobs would run on."""
    return os.getpid(), executors._own_device(placement)


def test_workers_on_cuda_get_a_gpu_each_and_use_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # the build's view only
    catalog = Catalog.open(tmp_path / "db", create=True)
    pool = WorkerPool(catalog, torch.device("cuda"), workers=2)
    try:
        pids = {process.pid for process in pool.workers}
        assert set(pool.placement) == pids
        assert sorted(pool.placement.values()) == ["cuda:0", "cuda:1"]
        answers = [pool.pool.submit(probe, pool.placement).result() for _ in range(6)]
    finally:
        pool.close()
    for pid, device in answers:  # whichever worker answered runs on the GPU it was given
        assert device == torch.device(pool.placement[pid])


def test_a_named_gpu_or_the_cpu_is_every_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    catalog = Catalog.open(tmp_path / "db", create=True)
    for device in (torch.device("cuda", 1), torch.device("cpu")):
        pool = WorkerPool(catalog, device, workers=2)
        try:
            assert set(pool.placement.values()) == {str(device)}
            pid, used = pool.pool.submit(probe, pool.placement).result()
        finally:
            pool.close()
        assert pid in pool.placement and used == device


#: A spawned worker set up as the pool sets it up, which runs a torch.fx interpreter (as the
#: injection's suffix runners do) and is then terminated, as Ctrl-C terminates the workers.
TERMINATED_WORKER = """\
import multiprocessing, os, signal, sys
import torch
from torch import fx, nn
from trojanscope.workflows.executors import _start_worker

multiprocessing.set_start_method("spawn", force=True)  # named semaphores, as in a worker
_start_worker(sys.argv[1], None, None, 1)
fx.Interpreter(fx.symbolic_trace(nn.Linear(2, 2))).run(torch.ones(1, 2))
os.kill(os.getpid(), signal.SIGTERM)
"""


def test_a_worker_terminated_after_a_torch_fx_pass_leaves_no_semaphore_behind(tmp_path):
    Catalog.open(tmp_path / "db", create=True)
    done = subprocess.run(
        [sys.executable, "-c", TERMINATED_WORKER, str(tmp_path / "db")],
        env=subprocess_env(),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert b"leaked" not in done.stderr
