"""`db export --format bdefects4nn` and `db import`: the layout's names and files, files that
load with weights_only=True, exact round trips, idempotent imports, and malicious or
mismatched trees refused in one sentence without running anything from them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select, update

from tests.test_cli import assert_one_sentence, run
from trojanscope.database.catalog import Catalog
from trojanscope.database.schema import CleanModel, Defect
from trojanscope.injection.acceptance import Acceptance
from trojanscope.injection.pipeline import InjectionConfig
from trojanscope.injection.quantity import Quantity
from trojanscope.models.training import CleanTraining
from trojanscope.workflows.defects import CleanSpec, build_defect, ensure_clean_model, list_defects

CASES = "digits_fault/cnn-small_badnets"
CASE_FILES = {
    "attack_model.pt",
    "poison_path.pt",
    "poison_path.txt",
    "infected_neuron_contribution.pt",
    "defect_record.pt",
}
#: Columns that differ by design between a catalog and its import (ids, where it came from).
NOT_COPIED = {"id", "clean_model_id", "provenance"}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny catalog built in about a second: a one-epoch half-width digits model and three
    one-epoch defects under open acceptance (two narrow, one small); the small one is then
    marked rejected, so that export's default (accepted only) is visible."""
    root = tmp_path_factory.mktemp("source") / "db"
    catalog = Catalog.open(root, create=True)
    spec = CleanSpec(
        "digits", "cnn-small", arch_params={"width": 0.5}, training=CleanTraining(epochs=1)
    )
    clean, model, splits = ensure_clean_model(catalog, spec)
    open_gate = Acceptance(
        min_asr=0.0,
        max_acc_drop=1.0,
        max_masked_asr=1.0,
        max_masked_acc_drop=1.0,
        min_patched_ratio=0.0,
    )
    for level, seed in (("narrow", 0), ("small", 1), ("narrow", 2)):
        config = InjectionConfig(
            quantity=Quantity(level=level), max_epochs=1, max_attempts=1, acceptance=open_gate
        )
        build_defect(catalog, clean, model, splits, "badnets", {}, config, seed)
    with catalog.transaction() as session:
        session.execute(
            update(Defect).where(Defect.level == "small").values(status="rejected", reason="test")
        )
    return root


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _export(source: Path, out: Path, capsys, monkeypatch, *more: str) -> dict:
    code, stdout, err = run(
        ["db", "export", "--format", "bdefects4nn", out, "--db", source, "--json", *more],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    return json.loads(stdout)


def _import(tree: Path, db: Path, capsys, monkeypatch, *more: str) -> tuple[int, str, str]:
    return run(
        ["db", "import", tree, "--format", "bdefects4nn", "--db", db, *more], capsys, monkeypatch
    )


def test_export_writes_the_layout_with_files_that_load_weights_only(
    source, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "export"
    summary = _export(source, out, capsys, monkeypatch)
    assert summary["defects"] == 2 and summary["clean_models"] == 1
    assert [c["status"] for c in summary["cases"]] == ["accepted", "accepted"]
    cases = [f"{CASES}/cnn-small_badnets_level_narrow_top_{i:03d}" for i in (0, 1)]
    (clean_key,) = {d.clean_model.key for d in list_defects(Catalog.open(source))}
    expected = {f"{c}/{name}" for c in cases for name in CASE_FILES} | {
        "digits_fault/digits_attack_data/badnets/attack_data.pt",
        f"digits_fault/digits_clean_model/cnn-small_{clean_key[:16]}/clean_model.pt",
    }
    assert _files(out) == expected and summary["files"] == len(expected)
    for name in expected - {f"{c}/poison_path.txt" for c in cases}:
        torch.load(out / name, weights_only=True)  # raises on anything beyond tensors
    catalog = Catalog.open(source)
    by_key = {d.key: d for d in list_defects(catalog)}
    for case, entry in zip(cases, summary["cases"], strict=True):
        defect = by_key[entry["key"]]
        folder = out / case
        state = torch.load(folder / "attack_model.pt", weights_only=True)
        stored = catalog.store.get(defect.weights_sha256)
        assert state.keys() == stored.keys()
        assert all(torch.equal(state[k], stored[k]) for k in stored)
        path = torch.load(folder / "poison_path.pt", weights_only=True)
        by_layer: dict[str, list[int]] = {}
        for n in defect.infected:
            by_layer.setdefault(n.layer, []).append(n.index)
        assert {k: v.tolist() for k, v in path.items()} == by_layer
        assert all(v.dtype == torch.int64 for v in path.values())
        text = (folder / "poison_path.txt").read_text().splitlines()
        assert text[1:] == [f"{k}: {', '.join(map(str, v))}" for k, v in by_layer.items()]
        table = torch.load(folder / "infected_neuron_contribution.pt", weights_only=True)
        assert table["layer"] == [n.layer for n in defect.infected]
        assert table["contribution"].dtype == torch.float64
        assert table["contribution"].tolist() == [n.contribution for n in defect.infected]
        assert table["carrying"].dtype == torch.int8
        record = torch.load(folder / "defect_record.pt", weights_only=True)
        assert record["format"] == "trojanscope/bdefects4nn" and record["version"] == 1
        assert record["defect"]["asr"] == defect.asr and record["defect"]["key"] == defect.key
    data = torch.load(out / expected_data(), weights_only=True)
    assert set(data["triggers"]) == {
        d.trigger_sha256 for d in by_key.values() if d.status == "accepted"
    }
    assert {"indices", "x", "y"} == set(next(iter(data["poisoned_test"].values())))


def expected_data() -> str:
    return "digits_fault/digits_attack_data/badnets/attack_data.pt"


def test_export_with_all_includes_rejected_defects_and_refuses_a_full_folder(
    source, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "export"
    summary = _export(source, out, capsys, monkeypatch, "--all")
    assert sorted(c["status"] for c in summary["cases"]) == ["accepted", "accepted", "rejected"]
    assert (out / CASES / "cnn-small_badnets_level_small_top_000" / "attack_model.pt").is_file()
    code, _, err = run(
        ["db", "export", "--format", "bdefects4nn", out, "--db", source], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "the folder is not empty")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def _columns(row) -> dict:
    return {c.name: getattr(row, c.name) for c in row.__table__.columns if c.name not in NOT_COPIED}


def _neurons(row: Defect) -> list[tuple]:
    return [
        (n.layer, n.index, n.rank, n.contribution, n.activation_shift, n.carrying)
        for n in row.infected
    ]


def test_every_defect_round_trips_exactly_and_a_second_import_adds_nothing(
    source, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "export"
    _export(source, out, capsys, monkeypatch, "--all")
    code, stdout, err = _import(out, tmp_path / "copy", capsys, monkeypatch, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["found"], summary["imported"], summary["clean_models_imported"]) == (3, 3, 1)
    original = {d.key: d for d in list_defects(Catalog.open(source))}
    copy = Catalog.open(tmp_path / "copy")
    imported = {d.key: d for d in list_defects(copy)}
    assert imported.keys() == original.keys()
    for key, row in original.items():
        twin = imported[key]
        assert _columns(twin) == _columns(row)  # metrics, hashes, parameters, status, times
        assert _neurons(twin) == _neurons(row)
        assert _columns(twin.clean_model) == _columns(row.clean_model)
        for sha in (twin.weights_sha256, twin.trigger_sha256, twin.poisoned_test_sha256):
            assert hashlib.sha256(copy.store.read_bytes(sha)).hexdigest() == sha
        files = twin.provenance["files"]
        assert twin.provenance["format"] == "bdefects4nn"
        assert Path(twin.provenance["source"]).parent.parent.parent == out.resolve()
        assert set(CASE_FILES) <= {Path(f).name for f in files} and expected_data() in files
        for name, sha in files.items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    code, stdout, _ = run(
        ["db", "verify", "--db", tmp_path / "copy", "--json"], capsys, monkeypatch
    )
    assert code == 0 and json.loads(stdout)["ok"]

    code, stdout, err = _import(out, tmp_path / "copy", capsys, monkeypatch, "--json")
    assert code == 0, err
    again = json.loads(stdout)
    assert (again["imported"], again["present"], again["clean_models_imported"]) == (0, 3, 0)
    assert [c["defect_id"] for c in again["cases"]] == [c["defect_id"] for c in summary["cases"]]
    with copy.session() as s:
        assert s.scalar(select(func.count()).select_from(Defect)) == 3
        assert s.scalar(select(func.count()).select_from(CleanModel)) == 1


MARKER = "pwned-by-import"


class _Payload:
    """What a malicious checkpoint unpickles to: a call of os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    """A PyTorch zip checkpoint whose data.pkl runs ``touch marker`` when unpickled."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": _Payload(marker)}, protocol=2))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def test_a_malicious_pickle_in_the_tree_is_refused_without_running(
    source, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "export"
    _export(source, out, capsys, monkeypatch)
    marker = tmp_path / MARKER
    evil = out / CASES / "cnn-small_badnets_level_narrow_top_001" / "attack_model.pt"
    _malicious_checkpoint(evil, marker)
    code, _, err = _import(out, tmp_path / "copy", capsys, monkeypatch)
    assert_one_sentence(code, err, f"refused {evil}: the scanner found it dangerous")
    assert "nothing was loaded or imported" in err
    assert not marker.exists()
    assert list_defects(Catalog.open(tmp_path / "copy")) == []  # the clean cases neither


def test_tampered_weights_are_refused_by_their_recorded_sha256(
    source, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "export"
    _export(source, out, capsys, monkeypatch)
    path = out / CASES / "cnn-small_badnets_level_narrow_top_000" / "attack_model.pt"
    state = torch.load(path, weights_only=True)
    state["conv1.weight"] = state["conv1.weight"] + 1e-3
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())
    code, _, err = _import(out, tmp_path / "copy", capsys, monkeypatch)
    assert_one_sentence(code, err, f"{path} does not hold the weights its record names")
    assert list_defects(Catalog.open(tmp_path / "copy")) == []


@pytest.mark.parametrize(
    ("arch_map", "message"),
    [
        ("cnn-small=no-such-net", "maps to 'no-such-net', which is no registered architecture"),
        ("cnn-small", "is not of the form PUBLISHED=OURS"),
        ("resnet-18=resnet18", "names 'resnet-18', which no defect of the tree uses"),
        ("cnn-small=vgg11", "does not fit architecture 'vgg11'"),
    ],
)
def test_a_bad_arch_map_gets_one_sentence(arch_map, message, source, tmp_path, capsys, monkeypatch):
    out = tmp_path / "export"
    _export(source, out, capsys, monkeypatch)
    code, _, err = _import(out, tmp_path / "copy", capsys, monkeypatch, "--arch-map", arch_map)
    assert_one_sentence(code, err, message)
    if "vgg11" not in arch_map:  # refused before the catalog is even created
        assert not (tmp_path / "copy").exists()


def test_a_mapped_architecture_is_imported_under_our_name(source, tmp_path, capsys, monkeypatch):
    """A tree whose architecture is published under another name imports with --arch-map."""
    out = tmp_path / "export"
    _export(source, out, capsys, monkeypatch)
    fault = out / "digits_fault"
    cell = fault / "cnn-small_badnets"
    for case in list(cell.iterdir()):
        case.rename(cell / case.name.replace("cnn-small", "SmallCNN"))
        record_path = cell / case.name.replace("cnn-small", "SmallCNN") / "defect_record.pt"
        record = torch.load(record_path, weights_only=True)
        record["clean_model"]["arch"] = "SmallCNN"
        buffer = io.BytesIO()
        torch.save(record, buffer)
        record_path.write_bytes(buffer.getvalue())
    cell.rename(fault / "SmallCNN_badnets")
    (clean,) = (fault / "digits_clean_model").iterdir()
    clean.rename(clean.with_name(clean.name.replace("cnn-small", "SmallCNN")))
    code, _, err = _import(out, tmp_path / "copy", capsys, monkeypatch)
    assert_one_sentence(code, err, "architecture 'SmallCNN' of")
    assert "--arch-map SmallCNN=NAME" in err
    code, stdout, err = _import(
        out, tmp_path / "copy", capsys, monkeypatch, "--arch-map", "SmallCNN=cnn-small", "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["imported"] == 2
    rows = list_defects(Catalog.open(tmp_path / "copy"))
    assert {r.clean_model.arch for r in rows} == {"cnn-small"}
    weights = {
        d.weights_sha256 for d in list_defects(Catalog.open(source)) if d.status == "accepted"
    }
    assert {r.weights_sha256 for r in rows} == weights


def test_an_interrupted_import_leaves_no_half_entry(source, tmp_path, capsys, monkeypatch):
    """Killed while a defect's artifacts are written: no row of it stays, and the next run
    imports everything."""
    from trojanscope.database.store import ArtifactStore
    from trojanscope.workflows.bdefects4nn import import_layout

    out = tmp_path / "export"
    _export(source, out, capsys, monkeypatch)
    catalog = Catalog.open(tmp_path / "copy", create=True)
    write = ArtifactStore.write

    def interrupted(self, blobs):
        blobs = list(blobs)
        if len(blobs) == 3:  # a defect's weights, trigger and triggered test data
            write(self, blobs[:1])
            raise KeyboardInterrupt
        write(self, blobs)

    monkeypatch.setattr(ArtifactStore, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_layout(catalog, out)
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Defect)) == 0
    monkeypatch.setattr(ArtifactStore, "write", write)
    result = import_layout(catalog, out)
    assert [c.imported for c in result.cases] == [True, True]
    assert len(list_defects(catalog)) == 2
