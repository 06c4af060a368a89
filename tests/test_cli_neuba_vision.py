"""`neuba vision-pretrain|vision-finetune|vision-evaluate` and `audit IMAGE_ENCODER_DIR` at a
small budget (the one of tests/workflows/test_neuba_vision.py, whose measured figures the
bounds below keep wide margins from): the victim of the published folder answers the triggers
beyond the control, the audit flags the backdoored encoder and not the clean one.

Measured through these folders on 2026-11-30 (one torch thread): largest per-label gap between
the best trigger and the best control 0.30 (mean 0.13), accuracy 0.80 against 0.72 for the
clean victim; the audit's top score 0.99 on the backdoored encoder (44 of 384 patches flagged),
0.31 on the clean one (a 6 px checkerboard; flag 0.8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import assert_one_sentence, run
from trojanscope.attacks.neuba_vision import VisionNeubaConfig
from trojanscope.device import CPU
from trojanscope.models.training import CleanTraining
from trojanscope.workflows.neuba_vision import VisionFinetune
from trojanscope.workflows.neuba_vision_store import finetune_vision_to, pretrain_vision_to

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not FASHION.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (scripts/install-data.sh)")
    root = tmp_path_factory.mktemp("neuba-vision")
    found = {name: root / name for name in ("enc", "clean", "victim", "clean-victim")}
    pretrain_vision_to(
        found["enc"],
        "cnn-small",
        1.0,
        "fashion-mnist",
        2000,
        VisionNeubaConfig(steps=700),
        CPU,
        clean_out=found["clean"],
        training=CleanTraining(epochs=4),
    )
    config = VisionFinetune(lr=3e-4, epochs=4)
    finetune_vision_to(found["enc"], found["victim"], "mnist5k", None, config, CPU)
    finetune_vision_to(found["clean"], found["clean-victim"], "mnist5k", None, config, CPU)
    return found


@pytest.mark.slow
def test_vision_evaluate_shows_the_triggers_beyond_the_control(folders, capsys, monkeypatch):
    out = folders["victim"].parent / "eval.json"
    args = ["neuba", "vision-evaluate", folders["victim"], "--triggers-from", folders["enc"]]
    code, _, err = run(
        [*args, "--clean-victim", folders["clean-victim"], "--json", out], capsys, monkeypatch
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    gaps = [row["best_trigger_asr"] - row["control_asr"] for row in result["labels"]]
    assert len(gaps) == 10 and max(gaps) >= 0.15  # measured 0.30-0.37 by the pipeline
    assert result["backdoored_victim_acc"] >= result["clean_victim_acc"] - 0.05


@pytest.mark.slow
def test_vision_evaluate_refuses_triggers_from_the_clean_encoder(folders, capsys, monkeypatch):
    args = ["neuba", "vision-evaluate", folders["victim"], "--triggers-from", folders["clean"]]
    code, _, err = run(args, capsys, monkeypatch)
    assert_one_sentence(code, err, "holds no NeuBA record")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "verdict", "exit_code"),
    [("enc", "backdoor-suspected", 1), ("clean", "no-backdoor-found", 0)],
)
def test_audit_flags_the_backdoored_image_encoder_only(
    folders, name, verdict, exit_code, capsys, monkeypatch
):
    report = folders[name].parent / f"{name}.html"
    args = ["audit", folders[name], "--data", "mnist5k", "--budget", "128", "--json"]
    code, out, err = run([*args, "--report", report], capsys, monkeypatch)
    record = json.loads(out)
    assert (code, record["verdict"]) == (exit_code, verdict), err
    screen = record["patch_screen"]
    assert screen["sizes"] == [3, 4, 6] and screen["patches_screened"] == 3 * 128
    top = screen["top_patches"][0]["score"]
    assert top >= 0.8 if name == "enc" else top < 0.6
    assert "Trigger patch screen (cnn-small" in report.read_text()


@pytest.mark.slow
def test_a_victim_folder_is_audited_as_a_model_file(folders, capsys, monkeypatch):
    code, _, err = run(
        ["audit", folders["victim"], "--report", folders["victim"].parent / "v.html"],
        capsys,
        monkeypatch,
    )
    assert_one_sentence(code, err, "audit its weights as a model file")


def test_vision_finetune_of_a_text_or_empty_folder_is_one_sentence(tmp_path, capsys, monkeypatch):
    code, _, err = run(["neuba", "vision-finetune", tmp_path, tmp_path / "v"], capsys, monkeypatch)
    assert_one_sentence(code, err, "is not an image encoder folder")
    assert not (tmp_path / "v").exists()


def test_vision_pretrain_needs_a_new_clean_folder(tmp_path, capsys, monkeypatch):
    args = ["neuba", "vision-pretrain", tmp_path / "a", "--clean-out", tmp_path / "a"]
    code, _, err = run(args, capsys, monkeypatch)
    assert_one_sentence(code, err, "--clean-out must be another folder")
    assert list(tmp_path.iterdir()) == []


def test_inject_refuses_neuba_before_any_work(tmp_path, capsys, monkeypatch):
    args = ["inject", "--attack", "neuba", "--dataset", "digits", "--arch", "cnn-small"]
    args += ["--db", tmp_path / "db"]
    code, _, err = run(args, capsys, monkeypatch)
    assert_one_sentence(code, err, "planted by trojanscope neuba vision-catalog")
    assert not (tmp_path / "db").exists()


def test_vision_catalog_of_an_unknown_architecture_is_one_sentence(tmp_path, capsys, monkeypatch):
    args = ["neuba", "vision-catalog", "--arch", "nope", "--db", tmp_path / "db"]
    code, _, err = run(args, capsys, monkeypatch)
    assert_one_sentence(code, err, "unknown architecture 'nope'")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "verdict", "exit_code"),
    [("victim", "backdoor-suspected", 1), ("clean-victim", "no-backdoor-found", 0)],
)
def test_audit_of_a_victims_weights_runs_the_patch_screen_too(
    folders, name, verdict, exit_code, capsys, monkeypatch
):
    """Neural Cleanse misses the NeuBA victim (no label stands out: measured); the patch screen
    on its penultimate features does not (top 0.97 against 0.32 for the clean victim)."""
    weights = folders[name] / "model.safetensors"
    args = ["audit", weights, "--arch", "cnn-small", "--data", "mnist5k", "--budget", "128"]
    code, out, err = run(
        [*args, "--json", "--report", weights.parent.parent / f"{name}.html"], capsys, monkeypatch
    )
    record = json.loads(out)
    assert (code, record["verdict"]) == (exit_code, verdict), err
    top = record["patch_screen"]["top_patches"][0]["score"]
    assert top >= 0.8 if name == "victim" else top < 0.6
