"""Running a build: sweep what an interrupted build left, plan, check the attacks fit the
data, run the missing jobs (clean models before the defects that need them) and sum up.

A job records each entry as soon as it is made, and ``Catalog.record`` writes an entry with
its artifacts in one transaction, so a build killed at any moment, then started again,
finishes the grid with nothing duplicated or half-written. A job is claimed in the catalog
before it runs (``database.claims``), so builds of one spec running at once share the work:
a job another build holds is skipped, and rechecked until that build has recorded it (or
given it up, or died).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.exc import SQLAlchemyError

from trojanscope.attacks.base import ATTACKS
from trojanscope.database.catalog import Catalog
from trojanscope.database.claims import STALE_AFTER, Claims
from trojanscope.database.integrity import sweep
from trojanscope.device import CPU
from trojanscope.errors import TrojanscopeError
from trojanscope.workflows.defects import load_splits
from trojanscope.workflows.executors import Executor, Job, WorkerDied
from trojanscope.workflows.jobs import JobResult
from trojanscope.workflows.plan import (
    CleanJob,
    DefectJob,
    Plan,
    check_catalog,
    make_plan,
    recorded,
)
from trojanscope.workflows.records import BuildSummary, CellSummary, Counts, DefectCounts
from trojanscope.workflows.spec import BuildSpec


@dataclass
class Progress:
    """Callbacks of a running build (the command line draws a progress bar with them)."""

    start: Callable[[int], None] = lambda _total: None
    done: Callable[[Job, JobResult], None] = lambda _job, _result: None


def check_attacks_fit(plan: Plan, todo: list[DefectJob]) -> None:
    """Refuse, before any training, an attack whose trigger or target does not fit the data
    of a defect still to build (reads each such data set once)."""
    checked: set[tuple[str, str]] = set()
    for job in todo:
        spec = job.clean.spec
        ds_params = spec.resolved()[0]
        what = (job.clean.key, repr((job.attack, sorted(job.attack_params.items()))))
        if what in checked:
            continue
        checked.add(what)
        splits = load_splits(spec.dataset, ds_params, spec.seed)
        attack = ATTACKS.create(job.attack, seed=job.seed, **job.attack_params)
        try:
            attack.validate(splits.shape, splits.num_classes)
        except TrojanscopeError as exc:
            raise TrojanscopeError(
                f"attack {job.cell.attack} on {spec.dataset}: {str(exc).rstrip('.')}."
            ) from None


@dataclass
class _Schedule:
    """Jobs ready to run (clean models first) and defect jobs waiting for their clean model."""

    clean: deque[CleanJob]
    defects: deque[DefectJob]
    waiting: dict[str, list[DefectJob]] = field(default_factory=dict)

    def next(self) -> Job | None:
        if self.clean:
            return self.clean.popleft()
        return self.defects.popleft() if self.defects else None

    def finished(self, job: Job) -> None:
        if isinstance(job, CleanJob):
            self.defects.extend(self.waiting.pop(job.key, []))

    def retry(self, job: Job) -> None:
        """Put ``job`` (no longer held elsewhere) first in its queue."""
        if isinstance(job, CleanJob):
            self.clean.appendleft(job)
        else:
            self.defects.appendleft(job)


@dataclass
class Sharing:
    """How a build shares its catalog with other builds running at once: the claims it holds,
    and how often (seconds) it rechecks the jobs another build holds."""

    catalog: Catalog
    claims: Claims
    poll: float = 1.0
    #: Jobs another build held when this one wanted them.
    held: list[Job] = field(default_factory=list)
    _checked: float = 0.0

    def take(self, job: Job) -> bool:
        """Claim ``job``; False (and it is kept as held) if another build holds it."""
        if self.claims.acquire(job.key):
            return True
        self.held.append(job)
        return False

    def due(self) -> bool:
        """Whether the held jobs are to be rechecked now (at most once per ``poll``)."""
        return bool(self.held) and time.monotonic() - self._checked >= self.poll

    def recheck(self) -> tuple[list[Job], list[Job]]:
        """The held jobs that are free now (no live build holds them), and those still
        held; noted as checked now."""
        self._checked = time.monotonic()
        taken = self.claims.taken([job.key for job in self.held])
        free = [job for job in self.held if job.key not in taken]
        self.held = [job for job in self.held if job.key in taken]
        return free, self.held


def execute(
    plan: Plan, executor: Executor, progress: Progress, sharing: Sharing | None = None
) -> dict[str, JobResult]:
    """Run the plan's missing jobs on ``executor``; the results by job key. On the first
    failure no new job starts; running ones finish (their entries are kept), then it is
    raised.

    With ``sharing``, each job is claimed before it runs and released when it ends; a job
    another build holds waits, and is taken as reused once that build has recorded it (or
    run here if that build gave it up or died)."""
    clean_todo, defect_todo = plan.todo()
    pending_clean = {job.key for job in clean_todo}
    schedule = _Schedule(deque(clean_todo), deque())
    for defect in defect_todo:
        if defect.clean.key in pending_clean:
            schedule.waiting.setdefault(defect.clean.key, []).append(defect)
        else:
            schedule.defects.append(defect)
    progress.start(len(clean_todo) + len(defect_todo))
    results: dict[str, JobResult] = {}
    running: dict[Future[JobResult], Job] = {}
    failure: BaseException | None = None

    def done_elsewhere(job: Job) -> bool:
        """Whether another build recorded every entry of ``job``: if so it counts as reused
        (its status noted) and what waited for it may run."""
        assert sharing is not None
        complete, status = recorded(job, sharing.catalog)
        if not complete:
            return False
        kind: Literal["clean", "defect"] = "clean" if isinstance(job, CleanJob) else "defect"
        results[job.key] = JobResult(kind, job.key, False, 0.0, status)
        if status is not None:
            plan.statuses[job.key] = status
        schedule.finished(job)
        progress.done(job, results[job.key])
        return True

    while True:
        while failure is None and len(running) < executor.capacity:
            ready = schedule.next()
            if ready is None:
                break
            if sharing is not None:
                if not sharing.take(ready):
                    continue
                if done_elsewhere(ready):  # recorded since this build planned
                    sharing.claims.release(ready.key)
                    continue
            running[executor.submit(ready)] = ready
        if sharing is not None and failure is None and sharing.due():
            free, _ = sharing.recheck()
            for job in free:
                if not done_elsewhere(job):
                    schedule.retry(job)  # given up or its build died: run it here
            if free:
                continue
        waiting_elsewhere = sharing is not None and failure is None and bool(sharing.held)
        if not running:
            if not waiting_elsewhere:
                break
            assert sharing is not None
            time.sleep(sharing.poll)
            continue
        timeout = sharing.poll if waiting_elsewhere and sharing is not None else None
        finished, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in finished:
            job = running.pop(future)
            if sharing is not None:
                sharing.claims.release(job.key)
            error = future.exception()
            if error is not None:
                failure = failure or error
                continue
            results[job.key] = future.result()
            schedule.finished(job)
            progress.done(job, results[job.key])
    if isinstance(failure, BrokenProcessPool):
        raise WorkerDied(
            "a build worker ended without reporting (killed, or out of memory); finished "
            "entries are kept: run the same build again to resume."
        ) from None
    if failure is not None:
        raise failure
    return results


def summarize(
    spec_name: str,
    catalog: Catalog,
    plan: Plan,
    results: dict[str, JobResult],
    swept: int,
    workers: int,
    device: str,
    seconds: float,
) -> BuildSummary:
    """Built / reused / accepted / rejected per cell, clean models and totals."""
    cells: dict[tuple[str, ...], CellSummary] = {}
    for job in plan.defects:
        c = job.cell
        cell = cells.setdefault(
            (c.dataset, c.arch, c.attack, c.order, c.level),
            CellSummary(
                dataset=c.dataset, arch=c.arch, attack=c.attack, order=c.order, level=c.level
            ),
        )
        result = results.get(job.key)
        cell.planned += 1
        if result is not None and result.created:
            cell.built += 1
        else:
            cell.reused += 1
        status = result.status if result is not None else plan.statuses.get(job.key)
        if status == "accepted":
            cell.accepted += 1
        elif status == "rejected":
            cell.rejected += 1
    table = list(cells.values())
    clean_built = sum(1 for j in plan.clean if j.key in results and results[j.key].created)
    return BuildSummary(
        spec=spec_name,
        db=str(catalog.root),
        workers=workers,
        device=device,
        seconds=seconds,
        swept=swept,
        clean_models=Counts(
            planned=len(plan.clean), built=clean_built, reused=len(plan.clean) - clean_built
        ),
        defects=DefectCounts(
            planned=sum(c.planned for c in table),
            built=sum(c.built for c in table),
            reused=sum(c.reused for c in table),
            accepted=sum(c.accepted for c in table),
            rejected=sum(c.rejected for c in table),
        ),
        analyses_built=sum(r.analyses for r in results.values()),
        cells=table,
    )


#: Makes the executor of a build, given how many jobs it has to run.
ExecutorFactory = Callable[[int], Executor]


def _sweep_after_stop(catalog: Catalog) -> None:
    """Remove what the jobs of an interrupted or failed build wrote and never recorded (a Ray
    task that Ctrl-C stopped between writing an artifact and its commit, a pool worker
    terminated there). The executor is closed, and ``sweep`` holds the store lock, so an entry
    another build is recording is safe. Should it fail, the next build sweeps: the build's own
    error is the one to report."""
    with contextlib.suppress(TrojanscopeError, SQLAlchemyError, OSError):
        sweep(catalog)


def run_build(
    spec: BuildSpec,
    catalog: Catalog,
    executors: ExecutorFactory,
    progress: Progress | None = None,
    spec_name: str = "spec",
    device: str = str(CPU),
    stale_after: float = STALE_AFTER,
    poll: float = 1.0,
) -> BuildSummary:
    """Build (or finish) the grid of ``spec`` in ``catalog``: first remove what a killed build
    left (orphan artifacts, temporary files), then run every job not in the catalog on an
    executor made for that many jobs (closed at the end; at once if the build fails or is
    interrupted).

    Each job is claimed in the catalog while it runs (``stale_after``: seconds without a
    heartbeat after which another build may take a claim over; a claim whose process is gone
    from this host is taken over at once); jobs another build holds are rechecked every
    ``poll`` seconds until it has recorded them."""
    started = time.perf_counter()
    swept = len(sweep(catalog))
    plan = check_catalog(make_plan(spec), catalog)
    clean_todo, defect_todo = plan.todo()
    check_attacks_fit(plan, defect_todo)
    executor = executors(len(clean_todo) + len(defect_todo))
    finished = False
    try:
        with Claims(catalog, stale_after).heartbeat() as claims:
            results = execute(
                plan, executor, progress or Progress(), Sharing(catalog, claims, poll)
            )
        finished = True
    finally:
        executor.close(wait=finished)
        if not finished:
            _sweep_after_stop(catalog)
    return summarize(
        spec_name,
        catalog,
        plan,
        results,
        swept,
        executor.capacity,
        device,
        time.perf_counter() - started,
    )
