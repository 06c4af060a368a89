"""Image encoder and victim folders: they reload to the same outputs (a pruned victim with its
mask), and a folder that is not one, is tampered with or runs code is refused in one sentence."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from trojanscope.errors import TrojanscopeError
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.text_encoder import RECORD
from trojanscope.models.vision_encoder import VisionEncoder, prune_dormant
from trojanscope.workflows.neuba_vision_store import (
    ENCODER,
    VICTIM,
    _save,
    load_image_model,
    planted_triggers,
)

GEOMETRY = {"arch": "cnn-small", "width": 0.25, "input_shape": [1, 28, 28]}


def _model(classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return ARCHITECTURES.create("cnn-small", width=0.25).build(1, classes, 28).eval()


def _images() -> torch.Tensor:
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_an_encoder_folder_reloads_to_identical_outputs(tmp_path: Path) -> None:
    model = _model()
    _save(tmp_path / "enc", model, {"kind": ENCODER, **GEOMETRY})
    loaded, record = load_image_model(tmp_path / "enc", ENCODER)
    assert record["arch"] == "cnn-small"
    with torch.no_grad():
        assert torch.equal(loaded(_images()), model(_images()))


def test_a_pruned_victim_reloads_with_its_mask(tmp_path: Path) -> None:
    pruned = prune_dormant(VisionEncoder(_model()), _images(), 0.5)
    victim = pruned.with_head(4).eval()
    _save(tmp_path / "victim", victim, {"kind": VICTIM, **GEOMETRY})
    loaded, _ = load_image_model(tmp_path / "victim", VICTIM)
    keep = loaded.get_submodule(VisionEncoder(_model()).classifier).keep
    assert int(keep.sum()) == VisionEncoder(_model()).dim - VisionEncoder(_model()).dim // 2
    with torch.no_grad():
        assert torch.equal(loaded(_images()), victim(_images()))


def test_a_folder_of_another_kind_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "victim", _model(4), {"kind": VICTIM, **GEOMETRY})
    with pytest.raises(TrojanscopeError, match="is not an image encoder folder"):
        load_image_model(tmp_path / "victim", ENCODER)
    with pytest.raises(TrojanscopeError, match="is not an image encoder folder"):
        planted_triggers(tmp_path / "victim")
    _save(tmp_path / "clean", _model(), {"kind": ENCODER, **GEOMETRY})
    with pytest.raises(TrojanscopeError, match="holds no NeuBA record"):
        planted_triggers(tmp_path / "clean")


def test_weights_of_another_architecture_are_one_sentence(tmp_path: Path) -> None:
    _save(tmp_path / "enc", _model(), {"kind": ENCODER, **GEOMETRY, "arch": "vgg11"})
    with pytest.raises(TrojanscopeError, match="do not fit architecture 'vgg11'"):
        load_image_model(tmp_path / "enc", ENCODER)


def test_a_record_without_its_geometry_is_refused(tmp_path: Path) -> None:
    _save(tmp_path / "enc", _model(), {"kind": ENCODER, "arch": "cnn-small"})
    with pytest.raises(TrojanscopeError, match="lacks a valid arch, width and input_shape"):
        load_image_model(tmp_path / "enc", ENCODER)


def test_a_folder_with_a_dangerous_pickle_is_never_loaded(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    folder = tmp_path / "enc"
    _save(folder, _model(), {"kind": ENCODER, **GEOMETRY})
    (folder / "extra.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(TrojanscopeError, match="runs code when loaded"):
        load_image_model(folder, ENCODER)


def test_a_record_that_is_not_json_is_one_sentence(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    _save(folder, _model(), {"kind": ENCODER, **GEOMETRY})
    (folder / RECORD).write_text("[1, 2", encoding="utf-8")
    with pytest.raises(TrojanscopeError, match="is not a readable record"):
        load_image_model(folder, ENCODER)
    (folder / RECORD).write_text(json.dumps([1]), encoding="utf-8")
    with pytest.raises(TrojanscopeError, match="is not a readable record"):
        load_image_model(folder, ENCODER)
