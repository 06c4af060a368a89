"""Auditing model files: a catalogued defect is flagged with its target, its clean model is not;
dangerous files are never loaded."""

import json
import shutil

import pytest
import torch

from tests.conftest import plain_config
from tests.test_cli import assert_one_sentence, run
from trojanscope.database.catalog import Catalog
from trojanscope.device import CPU
from trojanscope.injection.quantity import Quantity
from trojanscope.report.html import render_audit
from trojanscope.workflows.audit import audit_model, load_state
from trojanscope.workflows.defects import CleanSpec, build_defect, ensure_clean_model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The clean digits model and a narrow BadNets defect, exported from a catalog."""
    root = tmp_path_factory.mktemp("audit")
    catalog = Catalog.open(root / "db", create=True)
    clean, model, splits = ensure_clean_model(catalog, CleanSpec("digits", "cnn-small"))
    config = plain_config(Quantity(level="narrow", layers=["conv1", "conv2"]))
    defect, _ = build_defect(catalog, clean, model, splits, "badnets", {}, config, 0)
    assert defect.status == "accepted", defect.reason
    shutil.copy(catalog.store.path(clean.weights_sha256), root / "clean.safetensors")
    shutil.copy(catalog.store.path(defect.weights_sha256), root / "defect.safetensors")
    return root, defect.target


def test_a_catalogued_defect_is_flagged_with_its_target(weights):
    root, target = weights
    result = audit_model(root / "defect.safetensors", "cnn-small", "digits")
    assert result.verdict == "backdoor-suspected" and result.exit_code == 1
    assert result.nc["detected_label"] == target and result.nc["anomaly_index"] > 2
    assert result.scan_verdict == "clean" and result.arch_params == {"width": 1.0}
    html = render_audit(result)
    assert f"target label\n{target}" in html and html.count("data:image/png;base64,") == 3


def test_its_clean_model_is_not_flagged(weights):
    root, _ = weights
    result = audit_model(root / "clean.safetensors", "cnn-small", "digits")
    assert result.verdict == "no-backdoor-found" and result.exit_code == 0
    assert result.nc["detected_label"] is None


def test_without_data_only_clp_screening_runs(weights):
    root, _ = weights
    result = audit_model(root / "defect.safetensors", "cnn-small")
    assert result.nc is None and len(result.layer_scores) == 4
    assert any("CLP" in note for note in result.notes)


def test_a_dangerous_file_is_never_loaded(tmp_path, capsys, monkeypatch):
    canary = tmp_path / "CANARY"
    evil = tmp_path / "model.pt"  # protocol 2: GLOBAL posix.system, REDUCE
    evil.write_bytes(
        b"\x80\x02cposix\nsystem\n(X"
        + len(f"touch {canary}").to_bytes(4, "little")
        + f"touch {canary}".encode()
        + b"tR."
    )
    report = tmp_path / "r.html"
    code, out, _ = run(
        ["audit", evil, "--arch", "cnn-small", "--report", report, "--json"], capsys, monkeypatch
    )
    result = json.loads(out)
    assert code == 1 and result["verdict"] == "dangerous-file" and result["arch"] is None
    assert "posix.system" in report.read_text() and not canary.exists()


def test_weights_of_another_architecture_are_one_sentence(weights, tmp_path, capsys, monkeypatch):
    root, _ = weights
    code, _, err = run(
        [
            "audit",
            root / "clean.safetensors",
            "--arch",
            "resnet18",
            "--report",
            tmp_path / "r.html",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "do not fit architecture 'resnet18'" in err and "Traceback" not in err


def test_file_names_are_escaped_in_the_html_report(tmp_path):
    evil = tmp_path / "<img src=x onerror=alert(1)>[bold]m.pt"
    evil.write_bytes(b"\x80\x02}q\x00.")  # a clean pickle: an empty dict
    html = render_audit(audit_model(evil, None))
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;[bold]m.pt" in html


def test_file_names_are_printed_literally_by_audit(tmp_path, capsys, monkeypatch):
    model = tmp_path / "[bold red]m.pt"
    model.write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "a[").mkdir()
    report = tmp_path / "a[" / "]r.html"  # the path contains "[/]"
    code, out, err = run(["audit", model, "--report", report], capsys, monkeypatch)
    assert "Traceback" not in err and "internal error" not in err
    assert f"report: {report}" in out and "[/]r.html" in out and report.is_file()
    assert "verdict: " in out


def _checkpoint_with_args(path, legacy):
    """A checkpoint that also pickles an argparse.Namespace, as training scripts often do."""
    import argparse

    import torch

    state = {"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [True, False])
def test_a_refused_checkpoint_never_advises_disabling_weights_only(
    legacy, tmp_path, capsys, monkeypatch
):
    model = _checkpoint_with_args(tmp_path / "ckpt.pt", legacy)
    args = ["audit", model, "--arch", "cnn-small", "--report", tmp_path / "r.html"]
    code, out, err = run(args, capsys, monkeypatch)
    assert_one_sentence(
        code,
        err,
        f"the checkpoint {model} needs classes outside PyTorch's weights-only allow-list "
        "(argparse.Namespace); it was not loaded.",
    )
    assert "weights_only" not in out + err and "False" not in out + err
    assert "\x1b" not in err


def _saved_on_cuda(state, path):
    """``state`` saved as if its tensors lived on a CUDA device (the storages say cuda:0), on
    a machine without one: what a GPU user's checkpoint looks like."""
    import torch.serialization

    real = torch.serialization.location_tag
    torch.serialization.location_tag = lambda _storage: "cuda:0"
    try:
        torch.save(state, path)
    finally:
        torch.serialization.location_tag = real
    return path


def test_a_checkpoint_saved_on_cuda_loads_on_a_machine_without_it(
    weights, tmp_path, capsys, monkeypatch
):
    root, _ = weights
    from safetensors.torch import load_file

    state = load_file(str(root / "defect.safetensors"))
    ckpt = _saved_on_cuda({"state_dict": state}, tmp_path / "gpu.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA"):  # what torch does without map_location
        torch.load(ckpt, weights_only=True)
    loaded = load_state(ckpt, "zip")
    assert all(torch.equal(loaded[k], v) and loaded[k].device == CPU for k, v in state.items())
    report = tmp_path / "r.html"
    args = ["audit", ckpt, "--arch", "cnn-small", "--device", "cpu", "--json", "--report", report]
    code, out, _ = run(args, capsys, monkeypatch)
    result = json.loads(out)
    assert code in (0, 1) and result["scan_verdict"] == "clean" and result["arch"] == "cnn-small"
    from_safetensors = audit_model(root / "defect.safetensors", "cnn-small")
    assert audit_model(ckpt, "cnn-small").layer_scores == from_safetensors.layer_scores
    assert result["clp_outliers"] == from_safetensors.clp_outliers


def test_an_empty_file_is_one_real_sentence(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.pt"
    empty.touch()
    for arch in ([], ["--arch", "cnn-small"]):
        code, _, err = run(
            ["audit", empty, *arch, "--report", tmp_path / "r.html"], capsys, monkeypatch
        )
        assert_one_sentence(code, err, f"{empty} is an empty file (0 bytes): it holds no weights.")


def test_without_arch_a_clean_file_is_not_screened_and_exits_0(weights, tmp_path):
    root, _ = weights
    result = audit_model(root / "defect.safetensors", None)
    assert result.verdict == "not-screened" and result.exit_code == 0
    assert result.scan_verdict == "clean" and not result.layer_scores
    assert any("not screened" in note for note in result.notes)
    assert 'class="verdict warn"' in render_audit(result)


class TrainingConfig:
    """A class of the training script pickled into its checkpoint: not on the allow-list."""


def test_without_arch_a_suspicious_file_exits_1(tmp_path, capsys, monkeypatch):
    import torch

    model = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "config": TrainingConfig()}, model)
    code, out, _ = run(
        ["audit", model, "--report", tmp_path / "r.html", "--json"], capsys, monkeypatch
    )
    result = json.loads(out)
    assert code == 1 and result["verdict"] == "suspicious-file"
    assert result["scan_verdict"] == "suspicious"


@pytest.fixture(scope="module")
def mobilenets(tmp_path_factory):
    """Untrained mobilenetv2 weights (width 0.25): 3 channels / 10 classes, 1 / 5, 1 / 10."""
    from safetensors.torch import save_file

    from trojanscope.models.base import ARCHITECTURES

    root = tmp_path_factory.mktemp("mobilenet")
    paths = {}
    for channels, classes in ((3, 10), (1, 5), (1, 10)):
        model = ARCHITECTURES.create("mobilenetv2", width=0.25).build(channels, classes, 8)
        path = root / f"mb-{channels}-{classes}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        paths[channels, classes] = path
    return paths


@pytest.mark.parametrize(
    ("weights_of", "extra", "message"),
    [
        ((3, 10), ["--data", "digits"], "data set 'digits' has 1 input channel(s) but the model "),
        ((1, 5), ["--data", "digits"], "data set 'digits' has 10 classes but the model has 5 "),
        (
            (1, 10),
            ["--width", "0.5"],
            "at any width tried (0.5): 'stem.weight' has shape (8, 1, 3, 3) where it expects "
            "(16, 1, 3, 3).",
        ),
    ],
)
def test_weights_or_data_that_do_not_fit_are_one_sentence(
    mobilenets, weights_of, extra, message, tmp_path, capsys, monkeypatch
):
    args = ["audit", mobilenets[weights_of], "--arch", "mobilenetv2", *extra]
    code, _, err = run([*args, "--report", tmp_path / "r.html"], capsys, monkeypatch)
    assert_one_sentence(code, err, message)


def test_build_for_reads_channels_and_classes_off_the_first_convolution(mobilenets):
    import typing

    import torch
    from safetensors.torch import load_file

    from trojanscope.workflows.audit import build_for

    state = load_file(mobilenets[3, 10])
    first_4d = next(v for v in state.values() if v.dim() == 4)  # keys are sorted in the file:
    assert first_4d.shape[1] == 1  # the first kernel met is depthwise, not the stem
    model, width = build_for("mobilenetv2", state, 8, None)
    assert width == 0.25 and model.stem.in_channels == 3 and model.fc.out_features == 10
    assert typing.get_type_hints(build_for)["return"] == tuple[torch.nn.Module, float]


def test_screening_never_makes_a_suspicious_file_look_clean(weights, monkeypatch):
    import trojanscope.workflows.audit as audit_module

    root, _ = weights
    monkeypatch.setattr(audit_module, "overall_verdict", lambda reports: "suspicious")
    result = audit_model(root / "clean.safetensors", "cnn-small")
    assert result.layer_scores  # it was screened (no backdoor found in the weights) ...
    assert result.verdict == "suspicious-file" and result.exit_code == 1  # ... yet not clean
