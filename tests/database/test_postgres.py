"""The catalog on PostgreSQL (a server the test set-up starts on loopback): the same entries,
bit for bit, as on SQLite; insert-or-ignore on keys; the store lock keeps the sweep away from
an entry being recorded; unusable databases and URLs are one sentence."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch
from sqlalchemy import text

from tests.database.test_integrity import clean_row
from tests.pgserver import _free_port
from tests.test_cli import assert_one_sentence, run
from trojanscope.database.catalog import Catalog
from trojanscope.database.integrity import sweep, verify
from trojanscope.database.schema import Base, Defect
from trojanscope.errors import CatalogError
from trojanscope.workflows.defects import get_defect, list_defects, load_defect, localize


def _copy_rows(source: Catalog, target: Catalog) -> None:
    """Every row of ``source`` into ``target`` as it is (ids included)."""
    with source.engine.connect() as src, target.engine.begin() as dst:
        for table in Base.metadata.sorted_tables:
            rows = [dict(r._mapping) for r in src.execute(table.select())]
            if rows:
                dst.execute(table.insert(), rows)
            if "id" in table.c:  # the next id after the copied ones
                dst.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"(SELECT coalesce(max(id), 0) + 1 FROM {table.name}), false)"
                    )
                )


def test_entries_round_trip_through_postgres_unchanged(template, pg_url, tmp_path):
    root, _, defect_id, _ = template
    sqlite = Catalog.open(root)
    shutil.copytree(root / "objects", tmp_path / "store" / "objects")
    catalog = Catalog.open(tmp_path / "store", create=True, url=pg_url)
    _copy_rows(sqlite, catalog)
    stored, reference = get_defect(catalog, defect_id), get_defect(sqlite, defect_id)
    for column in Defect.__table__.columns:
        if column.name != "created_at":
            assert getattr(stored, column.name) == getattr(reference, column.name), column
    # PostgreSQL keeps the time zone SQLite drops
    assert stored.created_at.replace(tzinfo=None) == reference.created_at
    assert [(n.layer, n.index, n.contribution, n.carrying) for n in stored.infected] == [
        (n.layer, n.index, n.contribution, n.carrying) for n in reference.infected
    ]
    loc, made = localize(catalog, defect_id, "oracle")  # a new entry: the next id
    assert made and localize(catalog, defect_id, "oracle")[0].id == loc.id
    ctx = load_defect(catalog, defect_id)  # the files come from the --db folder
    assert ctx.defect.key == reference.key
    assert [d.key for d in list_defects(Catalog.open(tmp_path / "store", url=pg_url))] == [
        reference.key
    ]
    assert verify(catalog).ok


def test_the_db_commands_read_a_postgres_catalog(template, pg_url, tmp_path, capsys, monkeypatch):
    from tests.workflows.conftest import TINY

    root, _, defect_id, _ = template
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY)
    store = tmp_path / "store"
    common = ["--db", store, "--db-url", pg_url]
    code, out, err = run(["db", "build", spec, *common, "--dry-run", "--json"], capsys, monkeypatch)
    assert code == 0, err  # an empty database: everything is to build
    assert json.loads(out)["defects"] == {"planned": 6, "todo": 6}
    shutil.copytree(root / "objects", store / "objects")
    _copy_rows(Catalog.open(root), Catalog.open(store, create=True, url=pg_url))
    code, out, err = run(["db", "query", *common, "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert [r["id"] for r in json.loads(out)] == [defect_id]
    code, out, err = run(["db", "stats", *common, "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["accepted"] == 1, err
    code, out, err = run(["db", "verify", *common], capsys, monkeypatch)
    assert code == 0 and "0 missing, 0 corrupt, 0 orphaned" in out, err


def test_no_server_is_a_skip_of_one_sentence(monkeypatch):
    from tests import pgserver

    monkeypatch.setattr(pgserver, "_binary", lambda name: None)
    reason = pgserver.unavailable()
    assert reason == "no PostgreSQL server binaries here (initdb, pg_ctl, postgres not found)."


def test_a_duplicate_key_is_ignored_and_writes_nothing(pg_url, tmp_path):
    catalog = Catalog.open(tmp_path / "store", create=True, url=pg_url)
    first = catalog.store.encode({"w": torch.zeros(3)})
    second = catalog.store.encode({"w": torch.ones(3)})
    assert catalog.record(clean_row("k", "0" * 64), [first])
    assert not catalog.record(clean_row("k", "0" * 64), [second])
    assert not catalog.store.path(second.sha256).exists()


def test_the_sweep_waits_for_an_entry_being_recorded(pg_url, tmp_path):
    catalog = Catalog.open(tmp_path / "store", create=True, url=pg_url)
    blob = catalog.store.encode({"w": torch.arange(4.0)})
    recorded = threading.Event()

    def record() -> None:
        catalog.record(clean_row("k", blob.sha256), [blob])
        recorded.set()

    with catalog.write_lock():  # what a sweep holds
        worker = threading.Thread(target=record)
        worker.start()
        time.sleep(0.5)
        assert not recorded.is_set() and not catalog.store.path(blob.sha256).exists()
    worker.join(timeout=30)
    assert recorded.is_set() and sweep(catalog) == []  # the file has its entry: kept
    orphan = catalog.store.put({"w": torch.ones(2)})
    assert sweep(catalog) == [catalog.store.path(orphan)]


def test_an_empty_or_foreign_database_is_refused(pg_url, tmp_path):
    with pytest.raises(CatalogError, match="no trojanscope catalog in the database"):
        Catalog.open(tmp_path / "store", url=pg_url)
    assert not (tmp_path / "store").exists()
    catalog = Catalog.open(tmp_path / "store", create=True, url=pg_url)
    with catalog.engine.begin() as connection:
        connection.execute(text("DROP TABLE job_claims"))  # as an earlier version made it
    assert Catalog.open(tmp_path / "store", url=pg_url).engine is not None  # upgraded
    with catalog.engine.begin() as connection:
        connection.execute(text("CREATE TABLE notes (id integer)"))
        for table in ("job_claims", "repairs", "localizations", "infected_neurons"):
            connection.execute(text(f"DROP TABLE {table}"))
        connection.execute(text("DROP TABLE defects"))
        connection.execute(text("DROP TABLE clean_models"))
    with pytest.raises(CatalogError, match=r"another application's tables \(notes\)"):
        Catalog.open(tmp_path / "store", create=True, url=pg_url)


def test_bad_urls_are_one_sentence(tmp_path):
    with pytest.raises(CatalogError, match="takes a PostgreSQL URL"):
        Catalog.open(tmp_path, url="sqlite:///x.db")
    with pytest.raises(CatalogError, match="is not a database URL"):
        Catalog.open(tmp_path, url="not a url")
    port = _free_port()
    with pytest.raises(CatalogError, match=f"cannot reach the catalog database .*:{port}/x"):
        Catalog.open(tmp_path, create=True, url=f"postgresql://me:secret@127.0.0.1:{port}/x")


@pytest.mark.parametrize(
    "command", [["db", "stats"], ["db", "query"], ["db", "verify"], ["db", "build", "SPEC"]]
)
def test_an_unreachable_database_url_exits_2_in_one_sentence(
    command, tmp_path, capsys, monkeypatch
):
    from tests.workflows.conftest import TINY

    (tmp_path / "spec.toml").write_text(TINY)
    command = [str(tmp_path / "spec.toml") if c == "SPEC" else c for c in command]
    port = _free_port()  # nothing listens there
    url = f"postgresql://me:secret@127.0.0.1:{port}/catalog"
    code, out, err = run([*command, "--db", tmp_path, "--db-url", url], capsys, monkeypatch)
    assert out == ""
    assert_one_sentence(
        code, err, "cannot reach the catalog database postgresql://me:***@127.0.0.1"
    )
    assert "secret" not in err
