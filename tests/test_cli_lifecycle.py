"""`trojanscope lifecycle`: the JSON record, the table, and bad input."""

import json
import shutil

import pytest

from tests.test_cli import assert_one_sentence, injected, run  # noqa: F401 (fixture)

STAGE_KEYS = {"stage", "params", "clean_acc", "asr", "seconds", "max_abs_deviation", "localization"}


@pytest.fixture
def db(injected, tmp_path):  # noqa: F811
    copy = tmp_path / "db"
    shutil.copytree(injected[0], copy)
    return copy, injected[1]["id"]


def test_lifecycle_json_and_table(db, capsys, monkeypatch):
    path, defect_id = db
    args = ["lifecycle", defect_id, "--stages", "quantize-int8(mode=dynamic)", "--db", path]
    code, out, _ = run([*args, "--criteria", "oracle", "--json"], capsys, monkeypatch)
    assert code == 0
    result = json.loads(out)
    assert result["defect_id"] == defect_id
    assert [s["stage"] for s in result["stages"]] == ["original", "quantize-int8"]
    for stage in result["stages"]:
        assert set(stage) >= STAGE_KEYS
        assert [loc["criterion"] for loc in stage["localization"]] == ["oracle"]
        assert {"criterion", "wji", "auroc"} <= set(stage["localization"][0])
    assert result["stages"][1]["params"]["mode"] == "dynamic"
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 0 and "through the lifecycle" in out and "quantize-int8" in err


@pytest.mark.parametrize(
    "stages, words",
    [
        ("onnx-export,quantize-int8", "cannot follow 'onnx-export'"),
        ("shrink", "unknown stage 'shrink'"),
        ("prune-magnitude(sparsity=1.5)", "sparsity"),
        ("prune-magnitude,distill(arch=vgg99)", "unknown architecture"),
        ("finetune-transfer(dataset=imagenet)", "unknown data set"),
    ],
)
def test_bad_stage_lists_get_one_sentence(db, capsys, monkeypatch, stages, words):
    path, defect_id = db
    code, _, err = run(
        ["lifecycle", defect_id, "--stages", stages, "--db", path], capsys, monkeypatch
    )
    assert_one_sentence(code, err, words)


def test_a_missing_defect_gets_one_sentence(db, capsys, monkeypatch):
    path, _ = db
    code, _, err = run(
        ["lifecycle", 999, "--stages", "onnx-export", "--db", path], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "no defect with id 999")


def test_bench_lifecycle_table_json_and_plot(db, capsys, monkeypatch, tmp_path):
    path, defect_id = db
    plot = tmp_path / "chain.png"
    args = ["bench", "lifecycle", "--stages", "prune-magnitude(sparsity=0.3)", "--db", path]
    code, out, _ = run([*args, "--criteria", "clp", "--plot", plot, "--json"], capsys, monkeypatch)
    assert code == 0
    result = json.loads(out)
    assert [(r["position"], r["stage"]) for r in result["rows"]] == [
        (0, "original"),
        (1, "prune-magnitude"),
    ]
    assert all(r["defect_id"] == defect_id and "wji_clp" in r for r in result["rows"])
    assert {e["stage"] for e in result["table"]} == {"original", "prune-magnitude"}
    assert result["plot"] == str(plot) and plot.read_bytes().startswith(b"\x89PNG")
