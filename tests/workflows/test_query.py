"""Reading a built catalog: defect records, acceptance per cell with reasons by rule, and
the integrity of every artifact."""

from sqlalchemy import update

from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import Defect
from trojanscope.workflows.query import query, reason_rules, stats, verify_report


def test_records_carry_keys_and_hashes(built):
    catalog = Catalog.open(built)
    records = query(catalog)
    assert len(records) == 6 and len({r.key for r in records}) == 6
    for r in records:
        assert catalog.store.path(r.weights_sha256).is_file()
        assert (r.dataset, r.arch, r.attack, r.order) == ("digits", "cnn-small", "badnets", "least")
    narrow = query(catalog, "level=narrow,seed=0|1")
    assert sorted((r.level, r.seed) for r in narrow) == [("narrow", 0), ("narrow", 1)]


def test_reasons_are_counted_by_rule():
    reason = (
        "ASR 0.210 < 0.90; clean accuracy dropped 10.0 points > 3.0; patched ASR 0.117 < 0.80"
        " x ASR (the backdoor also travels outside the infected set)"
    )
    assert reason_rules(reason) == ["ASR", "clean accuracy dropped", "patched ASR"]
    assert reason_rules(None) == []


def test_stats_per_cell(built):
    catalog = Catalog.open(built)
    with catalog.transaction() as s:
        s.execute(
            update(Defect)
            .where(Defect.level == "small")
            .values(
                status="rejected",
                reason="ASR 0.5 < 0.90; masked ASR 0.4 > 0.20 (backdoor not confined)",
            )
        )
        s.execute(
            update(Defect)
            .where(Defect.level == "small", Defect.seed == 0)
            .values(reason="ASR 0.1 < 0.90")
        )
    result = stats(catalog)
    assert (result.defects, result.accepted, result.rejected) == (6, 3, 3)
    cells = {c.level: c for c in result.cells}
    assert (cells["narrow"].accepted, cells["narrow"].rejected, cells["narrow"].reasons) == (
        3,
        0,
        [],
    )
    small = cells["small"]
    assert (small.accepted, small.rejected) == (0, 3)
    assert [(r.reason, r.count) for r in small.reasons] == [("ASR", 3), ("masked ASR", 2)]
    assert stats(catalog, "level=narrow").defects == 3


def test_verify_finds_a_tampered_and_a_missing_artifact(built):
    catalog = Catalog.open(built)
    assert verify_report(catalog).ok
    records = query(catalog)
    path = catalog.store.path(records[0].weights_sha256)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit inside the weights
    path.write_bytes(bytes(data))
    catalog.store.path(records[1].trigger_sha256).unlink()
    report = verify_report(catalog)
    assert not report.ok
    assert [p.sha256 for p in report.corrupt] == [records[0].weights_sha256]
    assert report.corrupt[0].referenced_by == [f"defects {records[0].id} weights_sha256"]
    assert [p.sha256 for p in report.missing] == [records[1].trigger_sha256]
    assert report.orphans == []
