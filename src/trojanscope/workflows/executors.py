"""Where jobs run: in this process, or in a pool of worker processes (spawned, one torch
thread each) that write to the same catalog. Both hand back futures, so the build's
scheduler is the same for both."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from trojanscope.database.catalog import Catalog
from trojanscope.errors import TrojanscopeError
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


def _start_worker(root: str, url: str | None, device: str | None, threads: int) -> None:
    """Worker set-up: its torch threads, its own connection to the catalog (``url``: its
    PostgreSQL database, None: SQLite), a watchdog."""
    global _catalog, _device
    torch.set_num_threads(threads)
    # Ctrl-C reaches every process of the terminal's group: the build alone handles it (it
    # terminates the workers, whose running jobs leave whole entries or none).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _catalog = Catalog.open(Path(root), url=url)
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
            initargs=(
                str(catalog.root),
                catalog.url,
                None if device is None else str(device),
                threads,
            ),
        )
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self._start(workers)

    def _start(self, workers: int) -> None:
        """Start every worker now, with Ctrl-C ignored from their first instruction (a
        signal during their imports would print a traceback; the build handles Ctrl-C), and
        wait until they are ready. The pool starts one per submission while none is idle."""
        before = set(multiprocessing.active_children())
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if main else None
        if previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            ready = [self.pool.submit(os.getpid) for _ in range(workers)]
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.workers = [p for p in multiprocessing.active_children() if p not in before]
        try:
            wait(ready)
            for future in ready:
                future.result()
        except BrokenProcessPool as exc:
            self.close(wait=False)
            raise TrojanscopeError(f"the build workers could not start ({exc}).") from None

    def submit(self, job: Job) -> Future[JobResult]:
        return self.pool.submit(_work, job)

    def close(self, wait: bool = True) -> None:
        """Without ``wait`` (an interrupted or failed build), the workers are terminated at
        once (their running jobs leave whole entries or none); either way the pool is shut
        down and its processes joined, so that nothing of it outlives the build."""
        if not wait:
            for process in self.workers:
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_executor(
    catalog: Catalog, device: torch.device | None, workers: int, jobs: int, threads: int = 1
) -> Executor:
    """This process for one worker (or one job), else a pool of at most one worker per job
    (``threads`` torch threads each)."""
    workers = min(workers, jobs)
    if workers <= 1:
        return InProcess(catalog, device)
    return WorkerPool(catalog, device, workers, threads)
