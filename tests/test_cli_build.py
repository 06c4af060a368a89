"""The build commands: `db build` (JSON summary, resumption, bad specs), `db verify`,
`db query`, `db stats`; every --json record checked key for key against its model."""

import json

from tests.test_cli import assert_one_sentence, run
from tests.workflows.conftest import TINY, built, reference  # noqa: F401 (fixtures)
from trojanscope.workflows.records import (
    BuildSummary,
    CellStats,
    CellSummary,
    DefectRecord,
    Stats,
    VerifyReport,
)


def keys_of(model) -> set[str]:
    return set(model.model_fields)


def test_build_json_summary_and_resumption(built, tmp_path, capsys, monkeypatch):  # noqa: F811
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    code, out, err = run(["db", "build", spec, "--db", built, "--json"], capsys, monkeypatch)
    assert code == 0, err
    summary = json.loads(out)
    assert set(summary) == keys_of(BuildSummary)
    assert all(set(cell) == keys_of(CellSummary) for cell in summary["cells"])
    assert summary["defects"] == {
        "planned": 6,
        "built": 0,
        "reused": 6,
        "accepted": 6,
        "rejected": 0,
    }
    assert summary["device"] == "cpu" and summary["workers"] == 1
    code, out, _ = run(["db", "build", spec, "--db", built], capsys, monkeypatch)
    assert code == 0 and "defects: 0 built, 6 reused, 6 accepted" in out


def test_build_dry_run_counts_what_is_left(built, tmp_path, capsys, monkeypatch):  # noqa: F811
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2, 3]"))
    code, out, _ = run(
        ["db", "build", spec, "--db", built, "--dry-run", "--json"], capsys, monkeypatch
    )
    assert code == 0
    assert json.loads(out) == {
        "clean_models": {"planned": 1, "todo": 0},
        "defects": {"planned": 8, "todo": 2},
    }
    code, out, _ = run(
        ["db", "build", spec, "--db", tmp_path / "new", "--dry-run"], capsys, monkeypatch
    )
    assert code == 0 and "1 of 1 clean models and 8 of 8 defects to build" in out
    assert not (tmp_path / "new").exists()


def test_a_bad_spec_is_one_sentence_before_any_work(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY.replace('attacks = ["badnets"]', 'attacks = ["badnets", "badnet"]'))
    code, _, err = run(["db", "build", spec, "--db", tmp_path / "db"], capsys, monkeypatch)
    assert_one_sentence(code, err, "bad.toml line 3, attacks[1].name: unknown attack 'badnet'")
    assert not (tmp_path / "db").exists()
    code, _, err = run(["db", "build", tmp_path / "none.toml"], capsys, monkeypatch)
    assert_one_sentence(code, err, "no build spec at")
    code, _, err = run(["db", "build", spec, "--device", "cuda:7"], capsys, monkeypatch)
    assert_one_sentence(code, err, "--device cuda:7 was requested")


def test_an_amp_the_device_cannot_serve_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "fp16.toml"
    spec.write_text('amp = "fp16"\n' + TINY)
    db = tmp_path / "db"
    code, _, err = run(["db", "build", spec, "--db", db, "--device", "cpu"], capsys, monkeypatch)
    assert_one_sentence(code, err, "--amp fp16 cannot train on cpu: torch's float16 kernels")
    plain = tmp_path / "tiny.toml"
    plain.write_text(TINY)
    code, _, err = run(["db", "build", plain, "--db", db, "--amp", "fp16"], capsys, monkeypatch)
    assert_one_sentence(code, err, "--amp fp16 cannot train on cpu")
    assert not db.exists()
    # --amp overrides the spec's field
    args = ["db", "build", spec, "--db", db, "--amp", "off", "--dry-run", "--json"]
    code, out, _ = run(args, capsys, monkeypatch)
    assert code == 0 and json.loads(out)["defects"]["planned"] == 6


def test_verify_exits_1_on_a_tampered_artifact(built, capsys, monkeypatch):  # noqa: F811
    code, out, _ = run(["db", "verify", "--db", built, "--json"], capsys, monkeypatch)
    report = json.loads(out)
    assert code == 0 and set(report) == keys_of(VerifyReport) and report["ok"]
    assert report["checked"] > 6
    code, out, _ = run(["db", "query", "--db", built, "--json"], capsys, monkeypatch)
    records = json.loads(out)
    weights = built / "objects" / records[0]["weights_sha256"][:2]
    path = weights / f"{records[0]['weights_sha256']}.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    (weights / ".tmp-0000").write_bytes(b"")
    code, out, _ = run(["db", "verify", "--db", built], capsys, monkeypatch)
    assert code == 1
    assert f"corrupt: {path}" in out and "orphan:" in out and "1 corrupt, 1 orphaned" in out


def test_query_and_stats(built, capsys, monkeypatch):  # noqa: F811
    code, out, _ = run(
        ["db", "query", "--db", built, "--where", "level=small", "--json"], capsys, monkeypatch
    )
    records = json.loads(out)
    assert code == 0 and len(records) == 3
    assert all(set(r) == keys_of(DefectRecord) and r["level"] == "small" for r in records)
    code, out, _ = run(["db", "query", "--db", built], capsys, monkeypatch)
    assert code == 0 and "6 defects in" in out and records[0]["key"][:12] in out
    code, out, _ = run(["db", "stats", "--db", built, "--json"], capsys, monkeypatch)
    stats = json.loads(out)
    assert code == 0 and set(stats) == keys_of(Stats)
    assert all(set(c) == keys_of(CellStats) for c in stats["cells"])
    assert (stats["accepted"], stats["rejected"]) == (6, 0)
    code, out, _ = run(["db", "stats", "--db", built], capsys, monkeypatch)
    assert code == 0 and "6 defects: 6 accepted, 0 rejected" in out
    code, _, err = run(["db", "query", "--db", built, "--where", "colour=red"], capsys, monkeypatch)
    assert_one_sentence(code, err, "--where cannot filter on 'colour'")


def test_the_readme_documents_every_field_of_the_records():
    import re
    from pathlib import Path

    from trojanscope.workflows.records import ArtifactProblem, Counts, ReasonCount

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()

    def documented(start: str, end: str) -> set[str]:
        i = readme.index(start)
        return set(re.findall(r'"(\w+)"', readme[i : readme.index(end, i)]))

    assert documented('{"spec", "db"', "```") == keys_of(BuildSummary) | keys_of(CellSummary)
    assert keys_of(Counts) <= keys_of(CellSummary)
    verify_keys = keys_of(VerifyReport) | keys_of(ArtifactProblem)
    assert documented("- `db verify`: ", "exit code 1") == verify_keys
    assert documented("- `db query`: ", "(`db list`") == keys_of(DefectRecord)
    stats_keys = keys_of(Stats) | keys_of(CellStats) | keys_of(ReasonCount)
    assert documented("- `db stats`: ", "a reason being") == stats_keys
