import shutil
import sqlite3

import pytest
import torch
from sqlalchemy import func, select

from tests.database.conftest import built, template  # noqa: F401 (fixtures)
from tests.stand_in import stand_in
from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import RepairRow
from trojanscope.errors import ConfigError
from trojanscope.neurons import all_neurons
from trojanscope.report.plots import wji_by_level
from trojanscope.report.tables import aggregate
from trojanscope.workflows.defects import (
    get_defect,
    load_defect,
    load_scores,
    load_weights,
    localize,
)
from trojanscope.workflows.study import (
    bench_localize,
    bench_repair,
    parse_where,
    repair_defect,
    select_defects,
)


def test_repair_is_stored_reused_and_leaves_the_defect_alone(built):  # noqa: F811
    catalog, clean, _, _, defect, _ = built
    row, created = repair_defect(catalog, defect.id, "prune", "oracle")
    assert created and row.k == len(defect.infected) and row.criterion == "oracle"
    assert row.asr_after <= 0.2 < row.asr_before
    assert row.der == pytest.approx(
        (
            max(0, row.asr_before - row.asr_after)
            - max(0, row.clean_acc_before - row.clean_acc_after)
            + 1
        )
        / 2
    )
    # the repaired weights are a new artifact; the defect's own are untouched
    assert row.weights_sha256 != defect.weights_sha256
    assert get_defect(catalog, defect.id).weights_sha256 == defect.weights_sha256
    catalog.store.get(defect.weights_sha256)  # hash-verified
    repaired = load_weights(catalog, clean, row.weights_sha256)
    zeroed = [int(i) for i in torch.nonzero(repaired.conv1.weight.flatten(1).abs().sum(1) == 0)]
    assert any(n.startswith("conv1:") for n in row.neurons["names"]) == bool(zeroed)
    again, created = repair_defect(catalog, defect.id, "prune", "oracle")
    assert not created and again.id == row.id
    with catalog.session() as session:
        assert session.scalar(select(func.count()).select_from(RepairRow)) == 1


def test_finetune_all_records_no_criterion(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    row, _ = repair_defect(catalog, defect.id, "finetune-all", "clp", method_params={"epochs": 1})
    assert row.criterion is None and row.k == 0 and row.neurons == {"names": []}
    assert set(row.details) == {"lr", "restarts", "diverged"}  # the rate the guard kept


def test_a_neuron_repair_without_criterion_is_refused(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    with pytest.raises(ConfigError, match="needs a criterion"):
        repair_defect(catalog, defect.id, "finetune", None)
    with pytest.raises(ConfigError, match="--k"):
        repair_defect(catalog, defect.id, "prune", "clp", k=0)


def test_localization_records_findings_and_artifacts(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    ctx = load_defect(catalog, defect.id)
    row, _ = localize(catalog, defect.id, "nc", {"steps": 30}, ctx)
    assert set(row.extra["layer_hit_rate"]) == {n.layer for n in defect.infected}
    assert "candidate_label" in row.extra and len(row.extra["mask_norms"]) == 10
    trigger = catalog.store.get(row.extra["artifacts_sha256"])
    assert trigger["reversed_mask"].shape == (1, 8, 8)
    neurons, scores = load_scores(catalog, row)
    assert neurons == all_neurons(ctx.model) and len(scores) == len(neurons)


def test_where_queries():
    assert parse_where("attack=badnets, level=narrow|small") == {
        "attack": {"badnets"},
        "level": {"narrow", "small"},
        "status": {"accepted"},
    }
    assert parse_where("status=rejected")["status"] == {"rejected"}
    with pytest.raises(ConfigError, match="cannot filter on 'colour'"):
        parse_where("colour=red")
    with pytest.raises(ConfigError, match="field=value"):
        parse_where("level")


def test_select_bench_and_aggregate(built, tmp_path):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    assert [d.id for d in select_defects(catalog, "level=narrow")] == [defect.id]
    assert select_defects(catalog, "level=small") == []
    assert select_defects(catalog, "arch=cnn-small,dataset=digits")[0].id == defect.id
    rows = bench_localize(catalog, [defect], ["clp", "random"])
    assert {r["criterion"] for r in rows} == {"clp", "random"}
    assert all(r["attack"] == "badnets" and r["level"] == "narrow" for r in rows)
    # the injection order is a factor: selectable and carried into every row
    assert [d.id for d in select_defects(catalog, "order=least")] == [defect.id]
    assert select_defects(catalog, "order=most|random") == []
    assert all(r["order"] == "least" for r in rows)
    by_order = aggregate(rows, ["criterion", "order"], ["wji"])
    assert {(e["criterion"], e["order"]) for e in by_order} == {
        ("clp", "least"),
        ("random", "least"),
    }
    again = bench_localize(catalog, [defect], ["clp", "random"])
    assert [r["seconds"] for r in again] == [r["seconds"] for r in rows]  # stored, not rerun
    table = aggregate(rows, ["criterion"], ["wji", "auroc"])
    assert {e["criterion"]: e["n"] for e in table} == {"clp": 1, "random": 1}
    written = wji_by_level(rows, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["wji-clp.png", "wji-random.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    repairs = bench_repair(catalog, [defect], ["prune", "finetune-all"], ["clp", "oracle"])
    assert [(r["method"], r["criterion"]) for r in repairs] == [
        ("prune", "clp"),
        ("prune", "oracle"),
        ("finetune-all", None),
    ]


def test_a_catalog_from_before_repairs_is_upgraded(built):  # noqa: F811
    catalog, _, _, _, defect, _ = built
    localize(catalog, defect.id, "clp")
    catalog.engine.dispose()
    path = catalog.root / "catalog.sqlite"
    with sqlite3.connect(path) as connection:  # the layout of the previous release
        connection.execute("DROP TABLE repairs")
        connection.execute("ALTER TABLE localizations DROP COLUMN extra")
    upgraded = Catalog.open(catalog.root)
    row, created = localize(upgraded, defect.id, "clp")
    assert not created and row.extra is None  # old entries keep working
    repaired, _ = repair_defect(upgraded, defect.id, "prune", "clp")
    assert repaired.id == 1


def test_benches_on_a_device_store_the_cpus_results(built, tmp_path):  # noqa: F811
    """bench localize and bench repair on a stand-in accelerator that computes on the CPU
    record the figures the same benches record on the CPU (in a copy of the catalog)."""
    catalog, _, _, _, _, _ = built
    shutil.copytree(catalog.root, tmp_path / "cpu")
    on_cpu = Catalog.open(tmp_path / "cpu")
    methods, criteria = ["prune", "finetune"], ["fp"]
    expected = bench_repair(on_cpu, select_defects(on_cpu), methods, criteria)
    localized_on_cpu = bench_localize(on_cpu, select_defects(on_cpu), criteria)
    with stand_in() as device:
        defects = select_defects(catalog)
        rows = bench_repair(catalog, defects, methods, criteria, device=device)
        localized = bench_localize(catalog, defects, criteria, device=device)
    keys = ("method", "criterion", "clean_acc_after", "asr_after", "weights_sha256")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in expected]
    assert [r["auroc"] for r in localized] == [r["auroc"] for r in localized_on_cpu]
