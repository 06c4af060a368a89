"""Where jobs run: in this process, or in a pool of worker processes (spawned, one torch
thread each) that write to the same catalog. Both hand back futures, so the build's
scheduler is the same for both."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from types import FrameType

import torch

from trojanscope.database.catalog import Catalog
from trojanscope.workflows.jobs import JobResult, run_job
from trojanscope.workflows.plan import CleanJob, DefectJob

Job = CleanJob | DefectJob


class Executor(ABC):
    """Runs jobs and hands back their futures; ``capacity`` jobs at a time."""

    capacity: int = 1

    @abstractmethod
    def submit(self, job: Job) -> Future[JobResult]: ...

    @abstractmethod
    def close(self, wait: bool = True) -> None:
        """Release the workers; without ``wait``, running jobs are abandoned (each leaves its
        entries whole or not at all)."""


class InProcess(Executor):
    """Runs each job at once, in this process (``--workers 1``)."""

    def __init__(self, catalog: Catalog, device: torch.device | None) -> None:
        self.catalog = catalog
        self.device = device

    def submit(self, job: Job) -> Future[JobResult]:
        future: Future[JobResult] = Future()
        try:
            future.set_result(run_job(job, self.catalog, self.device))
        except Exception as exc:  # KeyboardInterrupt and the like go up at once
            future.set_exception(exc)
        return future

    def close(self, wait: bool = True) -> None:
        """Nothing to release."""


# -- the worker processes ---------------------------------------------------------------------

_catalog: Catalog | None = None
_device: torch.device | None = None
#: Guards the two flags below (the watchdog thread and the job share them).
_lock = threading.Lock()
_busy = False
_orphaned = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C reaches every process of the terminal's group: a busy worker stops its job
    (nothing half-written), an idle one waits for the pool to close."""
    if _busy:
        raise KeyboardInterrupt


def _watch_parent() -> None:
    """Leave when the build that started this worker is gone (killed, even by kill -9): at
    once if idle, else after the running job has recorded its entries."""
    global _orphaned
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()  # returns when the parent's end of the sentinel pipe closes
    with _lock:
        _orphaned = True
        if not _busy:
            os._exit(0)


def _start_worker(root: str, device: str | None, threads: int) -> None:
    """Worker set-up: its torch threads, its own connection to the catalog, a watchdog."""
    global _catalog, _device
    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, _interrupt)
    _catalog = Catalog.open(Path(root))
    _device = None if device is None else torch.device(device)
    threading.Thread(target=_watch_parent, name="parent-watchdog", daemon=True).start()


def _work(job: Job) -> JobResult:
    global _busy
    assert _catalog is not None, "worker not started"
    with _lock:
        _busy = True
    try:
        return run_job(job, _catalog, _device)
    finally:
        with _lock:
            _busy = False
            if _orphaned:
                os._exit(0)


class WorkerPool(Executor):
    """``workers`` spawned processes (spawn: no state inherited from this one, safe with
    threads and accelerators), each writing its entries to the catalog itself. One torch
    thread each by default: more only makes parallel jobs wait for cores."""

    def __init__(
        self, catalog: Catalog, device: torch.device | None, workers: int, threads: int = 1
    ) -> None:
        self.capacity = workers
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(str(catalog.root), None if device is None else str(device), threads),
        )

    def submit(self, job: Job) -> Future[JobResult]:
        return self.pool.submit(_work, job)

    def close(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)
