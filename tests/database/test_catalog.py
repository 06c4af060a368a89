import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from sqlalchemy import event, func, select, text

from tests.stand_in import stand_in
from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import Defect, InfectedNeuronRow
from trojanscope.device import CPU, model_device
from trojanscope.errors import CatalogError, CorruptArtifactError
from trojanscope.injection.pipeline import (
    InjectionConfig,
    attack_success_rate,
    patched_success_rate,
)
from trojanscope.injection.quantity import Quantity
from trojanscope.localization.base import CRITERIA
from trojanscope.models.training import accuracy
from trojanscope.neurons import NeuronRef
from trojanscope.workflows.defects import (
    CleanSpec,
    build_defect,
    ensure_clean_model,
    get_defect,
    list_defects,
    load_defect,
    load_scores,
    load_weights,
    localize,
)


def test_defect_round_trips(built):
    catalog, clean, _, _, defect, _ = built
    reopened = Catalog.open(catalog.root)
    row = get_defect(reopened, defect.id)
    assert row.status == "accepted" and row.level == "narrow" and row.attack == "badnets"
    assert [(n.layer, n.index) for n in row.infected] == [
        (n.layer, n.index) for n in defect.infected
    ]
    ctx = load_defect(reopened, defect.id)
    # the stored figures are those of the stored weights and poisoned data
    assert attack_success_rate(ctx.model, ctx.poisoned_test) == pytest.approx(row.asr)
    assert accuracy(ctx.model, ctx.splits.test) == pytest.approx(row.clean_acc)
    assert sum(ctx.truth.values()) == pytest.approx(1.0)
    assert row.trigger_sha256 == ctx.attack.trigger_sha256(ctx.splits.shape)
    # the sufficiency measure and the carrying flags are stored with it
    infected = [NeuronRef(n.layer, n.index) for n in row.infected]
    victims = ctx.splits.test.subset(ctx.poisoned_test.indices)
    assert row.patched_asr == pytest.approx(
        patched_success_rate(ctx.model, infected, victims, ctx.poisoned_test)
    )
    assert [n.carrying for n in row.infected] == [n.carrying for n in defect.infected]
    # so is the injector's own score of the kept weights (>= 1: it met its goals)
    assert row.aim_score is not None and math.isfinite(row.aim_score)
    carrying = ctx.carrying_truth
    assert carrying is not None and set(carrying) <= set(ctx.truth)
    assert sum(carrying.values()) == pytest.approx(1.0)


def test_poisoned_data_is_stored_as_indices_plus_poisoned_samples(built):
    catalog, _, _, splits, defect, _ = built
    stored = catalog.store.get(defect.poisoned_test_sha256)
    assert set(stored) == {"indices", "x", "y"}
    assert len(stored["x"]) == len(stored["indices"]) < len(splits.test)


def test_rebuild_reuses_entries(built):
    catalog, clean, model, splits, defect, config = built
    again_clean, _, _ = ensure_clean_model(catalog, CleanSpec("digits", "cnn-small"))
    assert again_clean.id == clean.id
    again, created = build_defect(catalog, clean, model, splits, "badnets", {}, config, 0)
    assert not created and again.id == defect.id
    assert len(list_defects(catalog)) == 1


def test_localization_is_stored_and_reused(built):
    catalog, *_, defect, _ = built
    first, created = localize(catalog, defect.id, "oracle")
    second, created_again = localize(catalog, defect.id, "oracle")
    assert created and not created_again and first.id == second.id
    assert 0.0 <= first.auroc <= 1.0
    assert len(catalog.store.get(first.scores_sha256)["scores"]) > len(defect.infected)


def test_failure_in_the_middle_of_a_write_leaves_nothing(built):
    catalog, clean, model, splits, _, _ = built

    def explode(session, flush_context):
        if any(isinstance(o, InfectedNeuronRow) for o in session.new):
            raise RuntimeError("simulated crash after the defect row was written")

    config = InjectionConfig(quantity=Quantity(level="small"), max_epochs=1)
    event.listen(catalog._sessions, "after_flush", explode)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            build_defect(catalog, clean, model, splits, "badnets", {}, config, 5)
    finally:
        event.remove(catalog._sessions, "after_flush", explode)
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Defect)) == 1
        assert s.scalar(select(func.count()).select_from(InfectedNeuronRow)) == len(
            built[4].infected
        )
    _, created = build_defect(catalog, clean, model, splits, "badnets", {}, config, 5)
    assert created  # the catalog is still usable


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from trojanscope.database.catalog import Catalog
    from trojanscope.database.schema import Defect, InfectedNeuronRow
    catalog = Catalog.open(sys.argv[1])
    i = 0
    while True:
        i += 1
        row = Defect(key=f"k{i}", clean_model_id=1, attack="badnets", attack_params={},
                     target_mode="all-to-one", target=0, poison_rate=0.1, injection={},
                     level="large", seed=i, status="accepted", reason=None,
                     clean_acc_before=1.0, clean_acc=1.0, asr=1.0, masked_asr=0.0,
                     asr_before=0.0, epochs=1, weights_sha256="0" * 64,
                     trigger_sha256="0" * 64, poisoned_test_sha256="0" * 64, seconds=0.0)
        row.infected = [InfectedNeuronRow(layer="conv1", index=j, rank=j, contribution=0.0,
                                          activation_shift=0.0) for j in range(3000)]
        with catalog.transaction() as session:
            session.add(row)
        print(i, flush=True)
    """
)


def test_killed_writer_leaves_only_whole_entries(built, tmp_path):
    catalog = built[0]
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(catalog.root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "1"  # at least one whole entry landed
    time.sleep(0.7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with catalog.session() as s:
        counts = s.execute(
            select(Defect.id, func.count(InfectedNeuronRow.id))
            .join(InfectedNeuronRow, isouter=True)
            .group_by(Defect.id)
        ).all()
    assert len(counts) >= 2
    written = [n for defect_id, n in counts if defect_id != built[4].id]
    assert all(n == 3000 for n in written), written


def test_corrupt_weights_are_reported(built):
    catalog, *_, defect, _ = built
    path = catalog.store.path(defect.weights_sha256)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="corrupt"):
        load_defect(catalog, defect.id)
    path.write_bytes(b"not safetensors")
    with pytest.raises(CorruptArtifactError):
        load_defect(catalog, defect.id)


def test_weights_of_another_architecture_are_refused(built):
    catalog, clean, *_ = built
    other = torch.nn.Linear(3, 3).state_dict()
    sha = catalog.store.put(other)
    from trojanscope.workflows.defects import load_weights

    with pytest.raises(CorruptArtifactError, match="do not fit architecture 'cnn-small'"):
        load_weights(catalog, clean, sha)


def test_missing_catalog_and_bad_paths(tmp_path):
    with pytest.raises(CatalogError, match="no trojanscope catalog"):
        Catalog.open(tmp_path / "nothing")
    with pytest.raises(CatalogError, match="does not exist"):
        Catalog.open(tmp_path / "no" / "parent", create=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CatalogError, match="is a file"):
        Catalog.open(tmp_path / "file", create=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "catalog.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CatalogError, match="not a usable trojanscope catalog"):
        Catalog.open(bad)


def test_unwritable_catalog_location():
    # /sys refuses new entries even to root, unlike a chmod-ed folder
    with pytest.raises(CatalogError, match="cannot create catalog"):
        Catalog.open("/sys/trojanscope-test-db", create=True)


def test_store_repairs_a_damaged_copy(catalog):
    tensors = {"w": torch.arange(10.0)}
    sha = catalog.store.put(tensors)
    catalog.store.path(sha).write_bytes(b"damaged")
    assert catalog.store.put(tensors) == sha
    assert torch.equal(catalog.store.get(sha)["w"], tensors["w"])


def test_changed_data_are_detected(built):
    catalog, clean, *_, defect, _ = built
    from trojanscope.database.schema import CleanModel

    with catalog.transaction() as s:
        row = s.get(CleanModel, clean.id)
        row.input_shape = {**row.input_shape, "splits_sha256": "0" * 64}
    with pytest.raises(CatalogError, match="differ from when it was catalogued"):
        load_defect(catalog, defect.id)
    with pytest.raises(CatalogError, match=f"the data of clean model {clean.id} \\(digits\\)"):
        ensure_clean_model(catalog, CleanSpec("digits", "cnn-small"))  # not reused silently


def test_a_racing_builder_reuses_the_first_entry(built):
    """Two processes that build the same defect: the second keeps the first's entry."""
    catalog, clean, model, splits, defect, config = built
    from trojanscope.workflows import defects

    real = defects.get_defect_by_key
    calls = []

    def missing_once(cat, key):  # the second builder checked before the first committed
        calls.append(key)
        return None if len(calls) == 1 else real(cat, key)

    defects.get_defect_by_key = missing_once
    try:
        row, created = defects.build_defect(catalog, clean, model, splits, "badnets", {}, config, 0)
    finally:
        defects.get_defect_by_key = real
    assert not created and row.id == defect.id
    assert len(list_defects(catalog)) == 1


def _foreign_database(path):
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    connection.execute("INSERT INTO notes (body) VALUES ('mine')")
    connection.commit()
    connection.close()
    return path.read_bytes()


@pytest.mark.parametrize("create", [False, True])
def test_a_foreign_database_is_refused_and_left_untouched(tmp_path, create):
    before = _foreign_database(tmp_path / "db" / "catalog.sqlite")
    with pytest.raises(CatalogError, match="another application's tables \\(notes\\)"):
        Catalog.open(tmp_path / "db", create=create)
    assert (tmp_path / "db" / "catalog.sqlite").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["catalog.sqlite"]


@pytest.mark.parametrize("create", [False, True])
def test_an_empty_catalog_file_is_refused_not_recreated(tmp_path, create):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "catalog.sqlite").touch()
    with pytest.raises(CatalogError, match="empty file \\(0 bytes\\)"):
        Catalog.open(tmp_path / "db", create=create)
    assert (tmp_path / "db" / "catalog.sqlite").stat().st_size == 0


def test_an_interrupted_creation_leaves_no_catalog_file(tmp_path, monkeypatch):
    from trojanscope.database.schema import Base

    real = Base.metadata.create_all

    def interrupted(engine, *args, **kwargs):
        engine.connect().close()  # SQLite has made its (empty) file
        raise KeyboardInterrupt

    monkeypatch.setattr(Base.metadata, "create_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Catalog.open(tmp_path / "db", create=True)
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["objects"]
    monkeypatch.setattr(Base.metadata, "create_all", real)
    catalog = Catalog.open(tmp_path / "db", create=True)  # the rerun starts afresh
    assert list_defects(catalog) == []
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["catalog.sqlite", "objects"]


def test_a_damaged_catalog_is_one_sentence(template, tmp_path):
    root, *_ = template
    shutil.copytree(root, tmp_path / "db")
    path = tmp_path / "db" / "catalog.sqlite"
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big")
    path.write_bytes(data[:page] + b"\xff" * (len(data) - page))  # every page but the schema
    with pytest.raises(CatalogError) as info:  # on open (its upgrade check) or on first read
        list_defects(Catalog.open(tmp_path / "db"))
    message = str(info.value)
    assert message == f"the catalog {path} is damaged (database disk image is malformed)."


def test_an_older_catalog_is_upgraded_in_place(template, tmp_path):
    import sqlite3

    root, _, defect_id, _ = template
    shutil.copytree(root, tmp_path / "db")
    connection = sqlite3.connect(tmp_path / "db" / "catalog.sqlite")
    connection.execute("DROP TABLE repairs")
    connection.execute("ALTER TABLE defects DROP COLUMN masked_clean_acc")
    connection.execute("ALTER TABLE defects DROP COLUMN provenance")
    connection.execute("ALTER TABLE clean_models DROP COLUMN provenance")
    connection.execute("DROP INDEX ix_defects_parent_id")  # as an earlier upgrade left it
    connection.commit()
    connection.close()
    catalog = Catalog.open(tmp_path / "db")
    defect = get_defect(catalog, defect_id)
    assert defect.masked_clean_acc is None and defect.provenance is None
    assert defect.clean_model.provenance is None
    with catalog.session() as s:
        assert s.execute(text("SELECT count(*) FROM repairs")).scalar() == 0
        indexes = s.execute(text("PRAGMA index_list(defects)")).fetchall()
    assert "ix_defects_parent_id" in {row[1] for row in indexes}


def test_an_upgrade_adds_a_column_with_its_foreign_key_and_index(tmp_path):
    """A defects table from before the lifecycle links gains parent_id as a reference to its
    parent row, with its index (SQLite cannot drop a column a foreign key names, so the old
    table is made by hand)."""
    import sqlite3

    from sqlalchemy import create_engine

    from trojanscope.database.catalog import MARKER_TABLE, _upgrade

    path = tmp_path / "old.sqlite"
    connection = sqlite3.connect(path)
    connection.execute(f'CREATE TABLE "{MARKER_TABLE}" (id INTEGER PRIMARY KEY)')
    connection.execute("CREATE TABLE defects (id INTEGER PRIMARY KEY)")
    connection.commit()
    connection.close()
    engine = create_engine(f"sqlite:///{path}")
    _upgrade(engine)
    engine.dispose()
    connection = sqlite3.connect(path)
    keys = connection.execute("PRAGMA foreign_key_list(defects)").fetchall()
    indexes = {row[1] for row in connection.execute("PRAGMA index_list(defects)")}
    connection.close()
    assert ("defects", "parent_id", "id") in {(k[2], k[3], k[4]) for k in keys}
    assert "ix_defects_parent_id" in indexes


def test_ids_beyond_sqlite_integers_are_not_found(built):
    catalog, *_ = built
    for defect_id in (2**63, 10**23, 0, -1):
        with pytest.raises(CatalogError, match=f"no defect with id {defect_id} in"):
            get_defect(catalog, defect_id)


def test_models_load_onto_a_device_and_store_as_from_the_cpu(built):
    """On a stand-in accelerator: the clean model and the defect load there (their data stay
    on the CPU), weights stored from it are the same artifact, and a localization run there
    stores the CPU's scores."""
    catalog, clean, _, _, defect, _ = built
    with stand_in() as device:
        row, model, splits = ensure_clean_model(catalog, CleanSpec("digits", "cnn-small"), device)
        assert row.id == clean.id and model_device(model) == device
        assert splits.train.x.device == CPU
        ctx = load_defect(catalog, defect.id, device)
        assert model_device(ctx.model) == device and ctx.poisoned_test.x.device == CPU
        assert catalog.store.put(ctx.model.state_dict()) == defect.weights_sha256
        loc, created = localize(catalog, defect.id, "slicing", device=device)
    assert created
    stored = torch.tensor(load_scores(catalog, loc)[1], dtype=torch.float64)
    again = load_defect(catalog, defect.id)
    assert model_device(again.model) == CPU
    expected = CRITERIA.create("slicing").run(again.model, again.evidence()).scores
    assert torch.equal(stored, expected)
    assert model_device(load_weights(catalog, clean, defect.weights_sha256)) == CPU
