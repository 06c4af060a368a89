"""Job claims: which build runs which job now, so that builds of one spec running at once, on
one catalog (SQLite or PostgreSQL), never run the same job twice.

A build claims a job before running it (one row per job key, the key unique), refreshes its
claims' heartbeat while it runs, and removes them when the jobs end. A claim is taken over
when it is stale: its heartbeat is older than ``stale_after`` seconds, or its owner ran on this
host and that process is gone (killed, even by ``kill -9``).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import JobClaim
from trojanscope.errors import CatalogError

#: Seconds without a heartbeat after which a claim of another host is stale.
STALE_AFTER = 120.0


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from Linux /proc; None where
    that is unknown or the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name, field 2, is in parentheses and may hold spaces: split after it
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` of this host runs, and is the one that started at ``started``
    (when known): a zombie or a reused pid counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: existence is all we know
    if stat[stat.rfind(")") + 2 :].startswith("Z"):
        return False
    return started is None or process_start(pid) == started


@dataclass(frozen=True)
class Owner:
    """The process claiming jobs: its host, pid and start, and a random token (one per
    build, so two builds in one process are different owners)."""

    host: str
    pid: int
    process_start: str | None
    token: str

    @classmethod
    def this_process(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_start(pid), secrets.token_hex(8))

    @property
    def id(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"


class Claims:
    """The claims one build holds in ``catalog``."""

    def __init__(
        self, catalog: Catalog, stale_after: float = STALE_AFTER, owner: Owner | None = None
    ) -> None:
        self.catalog = catalog
        self.stale_after = stale_after
        self.owner = owner or Owner.this_process()
        self.held: set[str] = set()
        self._lock = threading.Lock()  # the heartbeat thread reads ``held``

    def _now(self, session: Session) -> float:
        """The time on the database's clock (PostgreSQL: one clock for every host), else this
        host's."""
        if self.catalog.is_postgres:
            return float(session.scalar(text("SELECT extract(epoch FROM clock_timestamp())")))
        return time.time()

    def stale(self, claim: JobClaim, now: float) -> bool:
        """Whether ``claim`` may be taken over: no heartbeat for ``stale_after`` seconds, or
        its owner ran on this host and is gone."""
        if now - claim.heartbeat > self.stale_after:
            return True
        return claim.host == self.owner.host and not process_alive(claim.pid, claim.process_start)

    def acquire(self, key: str) -> bool:
        """Claim job ``key``: True if this build holds it now (it was free, stale, or already
        ours), False if another live build holds it."""
        owner = self.owner
        try:
            with self.catalog.immediate() as session:
                now = self._now(session)
                ours = {
                    "owner": owner.id,
                    "host": owner.host,
                    "pid": owner.pid,
                    "process_start": owner.process_start,
                    "started": now,
                    "heartbeat": now,
                }
                claim = session.get(JobClaim, key, with_for_update=True)
                if claim is None:
                    session.add(JobClaim(key=key, **ours))
                    session.flush()
                elif claim.owner != owner.id:
                    if not self.stale(claim, now):
                        return False
                    taken = session.execute(  # only if nobody took it over meanwhile
                        update(JobClaim)
                        .where(JobClaim.key == key, JobClaim.owner == claim.owner)
                        .values(**ours)
                        .execution_options(synchronize_session=False)
                    )
                    if getattr(taken, "rowcount", 0) != 1:
                        return False
        except IntegrityError:  # another build inserted the same key first
            return False
        with self._lock:
            self.held.add(key)
        return True

    def release(self, key: str) -> None:
        """Give job ``key`` up (done, failed or abandoned)."""
        with self._lock:
            self.held.discard(key)
        with self.catalog.transaction() as session:
            session.execute(
                delete(JobClaim).where(JobClaim.key == key, JobClaim.owner == self.owner.id)
            )

    def release_all(self) -> None:
        """Give every claim of this build up; best effort (a build that stops because the
        database is gone leaves claims that the next build takes over)."""
        with self._lock:
            self.held.clear()
        with suppress(CatalogError), self.catalog.transaction() as session:
            session.execute(delete(JobClaim).where(JobClaim.owner == self.owner.id))

    def beat(self) -> None:
        """Refresh the heartbeat of every claim this build holds."""
        with self._lock:
            if not self.held:
                return
        with self.catalog.transaction() as session:
            now = self._now(session)
            session.execute(
                update(JobClaim)
                .where(JobClaim.owner == self.owner.id)
                .values(heartbeat=now)
                .execution_options(synchronize_session=False)
            )

    def taken(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` another build holds now (claims that are not stale); reads only."""
        found: set[str] = set()
        with self.catalog.session() as session:
            now = self._now(session)
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                for claim in session.scalars(select(JobClaim).where(JobClaim.key.in_(chunk))):
                    if claim.owner != self.owner.id and not self.stale(claim, now):
                        found.add(claim.key)
        return found

    def holder(self, key: str) -> JobClaim | None:
        """The claim on job ``key``, if any."""
        with self.catalog.session() as session:
            return session.scalar(select(JobClaim).where(JobClaim.key == key))

    @contextmanager
    def heartbeat(self, interval: float | None = None) -> Iterator[Claims]:
        """Refresh the heartbeat every ``interval`` seconds (default: a quarter of
        ``stale_after``) in a background thread while the block runs; at its end (however it
        ends) every claim is released."""
        every = interval if interval is not None else self.stale_after / 4
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(every):
                with suppress(CatalogError):  # a missed beat is retried at the next one
                    self.beat()

        thread = threading.Thread(target=run, name="claims-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.release_all()
