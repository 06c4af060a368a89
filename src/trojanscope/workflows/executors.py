"""Where jobs run: in this process, in a pool of worker processes (spawned, one torch thread
each), or as tasks of a Ray cluster; workers write to the same catalog. All hand back
futures, so the build's scheduler is the same for all."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
from abc import ABC, abstractmethod
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from trojanscope.database.catalog import CATALOG_FILE, Catalog
from trojanscope.device import assigned_device, is_cuda, worker_device
from trojanscope.errors import CatalogError, ConfigError, TrojanscopeError
from trojanscope.models.suffix import use_thread_only_progress_lock
from trojanscope.workflows.jobs import JobResult, run_job
from trojanscope.workflows.plan import CleanJob, DefectJob

Job = CleanJob | DefectJob


class WorkerDied(TrojanscopeError):
    """A worker process ended without reporting (killed, out of memory)."""


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
    use_thread_only_progress_lock()  # before any fx pass a job runs
    # Ctrl-C reaches every process of the terminal's group: the build alone handles it (it
    # terminates the workers, whose running jobs leave whole entries or none).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _catalog = Catalog.open(Path(root), url=url)
    _device = None if device is None else torch.device(device)
    threading.Thread(target=_watch_parent, name="parent-watchdog", daemon=True).start()


def _own_device(placement: dict[int, str]) -> torch.device | None:
    """This worker's device: the one ``placement`` (worker pid to device, decided by the
    build) gives it, else the build's device."""
    placed = placement.get(os.getpid())
    return _device if placed is None else torch.device(placed)


def _work(job: Job, placement: dict[int, str]) -> JobResult:
    global _busy
    assert _catalog is not None, "worker not started"
    device = _own_device(placement)
    with _lock:
        _busy = True
    try:
        return run_job(job, _catalog, device)
    finally:
        with _lock:
            _busy = False
            if _orphaned:
                os._exit(0)


class WorkerPool(Executor):
    """``workers`` spawned processes (spawn: no state inherited from this one, safe with
    threads and accelerators), each writing its entries to the catalog itself. One torch
    thread each by default: more only makes parallel jobs wait for cores. On CUDA each worker
    gets a GPU of its own while there are enough (``device.worker_device``): the build numbers
    its workers once they have started and sends each job the pid-to-device map, so no state
    is shared between the processes."""

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
        self.placement: dict[int, str] = {}
        for number, process in enumerate(self.workers):
            placed = worker_device(device, number)
            if process.pid is not None and placed is not None:
                self.placement[process.pid] = str(placed)

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
        return self.pool.submit(_work, job, self.placement)

    def close(self, wait: bool = True) -> None:
        """Without ``wait`` (an interrupted or failed build), the workers are terminated at
        once (their running jobs leave whole entries or none); either way the pool is shut
        down and its processes joined, so that nothing of it outlives the build."""
        if not wait:
            for process in self.workers:
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


# -- Ray ---------------------------------------------------------------------------------------

#: What ``--ray`` alone means: start a local Ray instance (Ray's own name for that address).
RAY_LOCAL = "local"
#: How long to wait for a Ray address to answer before giving up on it.
RAY_CONNECT_TIMEOUT = 5.0
#: Ray's default GCS port, for an address given without one.
RAY_DEFAULT_PORT = 6379
#: Object store of a local instance: jobs exchange only their small specs and results.
RAY_OBJECT_STORE_BYTES = 100 * 1024 * 1024

#: Each Ray worker process's connections to the catalogs its tasks wrote to, by root.
_ray_catalogs: dict[tuple[str, str | None], Catalog] = {}


def import_ray(local: bool) -> ModuleType:
    """Ray, imported on first use, with its usage statistics off. For a local instance
    (``local``), Ray's single-machine mode is asked for before its first import: the node's
    address is then 127.0.0.1 and every Ray server binds the loopback interface only (on
    Linux Ray otherwise takes the machine's outward address, and ignores a loopback one
    given to ``ray.init``). Not installed: a TrojanscopeError of one sentence."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise TrojanscopeError(
            "--ray needs Ray, which is not installed: pip install 'trojanscope[ray]'."
        ) from None
    return ray


def check_reachable(address: str, timeout: float = RAY_CONNECT_TIMEOUT) -> None:
    """Refuse, in one sentence, a Ray address (``host:port``, ``ray://host:port``) where
    nothing accepts a connection within ``timeout`` seconds; ``auto`` (the instance running
    on this machine) is left to Ray."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, str(RAY_DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray '{address}' is not a Ray address; use HOST:PORT.")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"no Ray cluster answers at {host}:{port} ({reason.lower()}); start one with "
            f"`ray start --head` or use --ray alone for a local instance."
        ) from None


def prepare_ray(address: str = RAY_LOCAL) -> tuple[str, ModuleType]:
    """Before any work: the address to use (``local`` becomes ``RAY_ADDRESS`` when that is
    set) and Ray itself, after checking that the address answers; each problem is a
    TrojanscopeError of one sentence."""
    if address == RAY_LOCAL and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    ray = import_ray(address == RAY_LOCAL)
    if address != RAY_LOCAL:
        check_reachable(address)
    return address, ray


def _ray_job(root: str, url: str | None, device: torch.device | None, job: Job) -> JobResult:
    """One job as a Ray task: one torch thread, this worker's connection to the catalog
    (its artifacts must be at ``root`` on every node; its rows there too, or at ``url``),
    and the GPU Ray assigned, if any."""
    torch.set_num_threads(1)
    catalog = _ray_catalogs.get((root, url))
    if catalog is None:
        if url is None and not (Path(root) / CATALOG_FILE).exists():
            raise CatalogError(
                f"Ray node {socket.gethostname()} sees no catalog at {root}: the --db folder "
                "must be on a file system every node mounts at the same path."
            )
        catalog = _ray_catalogs[root, url] = Catalog.open(Path(root), url=url)
    return run_job(job, catalog, assigned_device(device))


class RayExecutor(Executor):
    """Each job a Ray task (one CPU, and one GPU when the device is CUDA), writing its
    entries to the catalog itself: the catalog folder must be shared by every node, at the
    same path. ``address``: ``local`` starts a Ray instance on this machine (loopback only,
    ``workers`` CPUs, no dashboard) unless ``RAY_ADDRESS`` names one to join; anything else
    is the address of a running cluster. A task whose worker dies is retried up to
    ``max_retries`` times (a job is keyed: a retry records nothing twice); an exception a
    job raises is not retried. ``workers`` tasks run at once (default: the cluster's CPUs,
    or its GPUs for CUDA)."""

    def __init__(
        self,
        catalog: Catalog,
        device: torch.device | None,
        address: str = RAY_LOCAL,
        workers: int | None = None,
        max_retries: int = 3,
    ) -> None:
        address, ray = prepare_ray(address)
        local = address == RAY_LOCAL
        self.ray = ray
        self.max_retries = max_retries
        quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
        try:
            if local:
                ray.init(
                    address=RAY_LOCAL,
                    num_cpus=workers or os.cpu_count() or 1,
                    include_dashboard=False,
                    object_store_memory=RAY_OBJECT_STORE_BYTES,
                    **quiet,
                )
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"could not join the Ray cluster at {address}: {first}") from None
        resources = ray.cluster_resources()
        gpu = is_cuda(device)
        if gpu and resources.get("GPU", 0) < 1:
            ray.shutdown()
            raise ConfigError(f"the device is {device}, but the Ray cluster has no GPU.")
        self.capacity = workers or max(1, int(resources.get("GPU" if gpu else "CPU", 1)))
        self.root = str(catalog.root.resolve())
        self.url = catalog.url
        self.device = device
        self.task = ray.remote(_ray_job).options(
            num_cpus=1, num_gpus=1 if gpu else 0, max_retries=max_retries
        )
        self.running: set[Any] = set()

    def submit(self, job: Job) -> Future[JobResult]:
        ref = self.task.remote(self.root, self.url, self.device, job)
        self.running.add(ref)
        future: Future[JobResult] = Future()

        def settle(done: Future[JobResult]) -> None:
            self.running.discard(ref)
            try:
                future.set_result(done.result())
            except BaseException as exc:  # a task's error, as the build should see it
                future.set_exception(self._explain(exc))

        ref.future().add_done_callback(settle)
        return future

    def _explain(self, exc: BaseException) -> BaseException:
        """The job's own exception for one it raised; a worker or node that died (after
        the retries) is a WorkerDied of one sentence."""
        errors = self.ray.exceptions
        if isinstance(exc, errors.RayTaskError):
            cause = exc.cause
            return cause if isinstance(cause, Exception) else exc
        if isinstance(exc, errors.RayError):
            return WorkerDied(
                f"a Ray task ended without reporting ({type(exc).__name__}, after "
                f"{self.max_retries} retries); finished entries are kept: run the same build "
                "again to resume."
            )
        return exc

    def close(self, wait: bool = True) -> None:
        """Without ``wait``, running tasks are cancelled (their workers killed: each job
        leaves whole entries or none); then this process leaves Ray, which stops a local
        instance it started."""
        if not wait:
            for ref in list(self.running):
                # Fails only if the task already finished, or the cluster is gone.
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
        self.ray.shutdown()


def make_executor(
    catalog: Catalog,
    device: torch.device | None,
    workers: int | None,
    jobs: int,
    threads: int = 1,
    ray: str | None = None,
) -> Executor:
    """Ray tasks when ``ray`` names an address (``local``: an instance on this machine);
    otherwise this process for one worker (or one job), else a pool of at most one worker
    per job (``threads`` torch threads each). ``workers`` None: one, or for Ray the
    cluster's CPUs (GPUs for CUDA)."""
    if ray is not None and jobs > 0:
        return RayExecutor(catalog, device, ray, None if workers is None else min(workers, jobs))
    workers = min(workers or 1, jobs)
    if workers <= 1:
        return InProcess(catalog, device)
    return WorkerPool(catalog, device, workers, threads)
