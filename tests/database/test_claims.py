"""Job claims, on SQLite and on PostgreSQL: one holder per job; a claim whose process is gone
from this host, or whose heartbeat stopped, is taken over; released claims are free."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from trojanscope.database.catalog import Catalog
from trojanscope.database.claims import Claims, Owner, process_alive, process_start


@pytest.fixture(params=["sqlite", "postgres"])
def any_catalog(request, tmp_path) -> Catalog:
    """An empty catalog of each backend (PostgreSQL: a fresh database of the test server)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return Catalog.open(tmp_path / "db", create=True, url=url)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_holder_per_job_until_released(any_catalog):
    first, second = Claims(any_catalog), Claims(any_catalog)
    assert first.acquire("job-a") and first.acquire("job-a")  # ours already: still ours
    assert not second.acquire("job-a")
    assert second.taken(["job-a", "job-b"]) == {"job-a"}
    assert second.acquire("job-b") and not first.acquire("job-b")
    first.release("job-a")
    assert second.acquire("job-a")
    assert first.taken(["job-a", "job-b"]) == {"job-a", "job-b"}
    second.release_all()
    assert first.taken(["job-a", "job-b"]) == set()
    assert first.holder("job-a") is None


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over(any_catalog):
    me = Owner.this_process()
    dead = Owner(me.host, _dead_pid(), None, "dead")
    assert Claims(any_catalog, owner=dead).acquire("job")
    live = Claims(any_catalog)
    assert live.acquire("job")
    holder = live.holder("job")
    assert holder is not None and holder.owner == live.owner.id


def test_a_claim_is_stale_once_its_heartbeat_stops(any_catalog):
    elsewhere = Claims(any_catalog, owner=Owner("other-host", 1, None, "x"))
    assert elsewhere.acquire("job")
    patient = Claims(any_catalog, stale_after=60)
    assert not patient.acquire("job")  # another host: only the heartbeat tells
    hasty = Claims(any_catalog, stale_after=0.2)
    time.sleep(0.3)
    assert hasty.acquire("job") and not elsewhere.acquire("job")


def test_the_heartbeat_keeps_a_claim_fresh_and_ends_with_release(any_catalog):
    holder = Claims(any_catalog, stale_after=0.6, owner=Owner("other-host", 1, None, "y"))
    with holder.heartbeat(interval=0.1):
        assert holder.acquire("job")
        time.sleep(1.0)  # longer than stale_after: only the heartbeat keeps it
        assert not Claims(any_catalog, stale_after=0.6).acquire("job")
    assert Claims(any_catalog).taken(["job"]) == set()  # released at the end


def test_process_liveness():
    assert process_alive(*_this())
    assert not process_alive(_dead_pid(), None)
    pid, started = _this()
    if started is not None:  # Linux: a reused pid is another process
        assert not process_alive(pid, str(int(started) + 1))


def _this() -> tuple[int, str | None]:
    import os

    return os.getpid(), process_start(os.getpid())
