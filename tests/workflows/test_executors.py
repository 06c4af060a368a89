"""Local workers: on CUDA each gets a GPU of its own, decided by the build without any state
shared between the processes."""

from __future__ import annotations

import os

import torch

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
