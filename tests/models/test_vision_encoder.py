"""A project classifier read as an encoder: its pooled output is the classifier's input."""

import torch

from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.vision_encoder import VisionEncoder


def test_the_pooled_output_is_what_the_classifier_reads_and_a_victim_gets_a_fresh_head():
    torch.manual_seed(0)
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, 10, 16).eval()
    encoder = VisionEncoder(model)
    x = torch.rand(5, 1, 16, 16)
    pooled = encoder.encode(x)
    assert pooled.shape == (5, encoder.dim)
    head = model.get_submodule(encoder.classifier)
    with torch.no_grad():
        assert torch.allclose(head(pooled), model(x), atol=1e-5)
    victim = encoder.with_head(3)
    assert victim(x).shape == (5, 3)
    assert model(x).shape == (5, 10)  # the encoder's own network is untouched


def test_pruning_cuts_the_least_active_pooled_dimensions_for_the_encoder_and_its_victims():
    from trojanscope.models.vision_encoder import prune_dormant

    torch.manual_seed(0)
    model = ARCHITECTURES.create("cnn-small", width=0.5).build(1, 10, 12).eval()
    encoder = VisionEncoder(model)
    x = torch.rand(20, 1, 12, 12)
    pruned = prune_dormant(encoder, x, 0.25)
    before, after = encoder.encode(x), pruned.encode(x)
    cut = after.abs().sum(0) == 0
    assert cut.sum() >= encoder.dim // 4
    lowest = before.mean(0).argsort()[: encoder.dim // 4]
    assert cut[lowest].all()
    assert torch.equal(after[:, ~cut], before[:, ~cut])
    victim = VisionEncoder(pruned.with_head(3))
    assert (victim.encode(x)[:, lowest] == 0).all()
    assert torch.equal(encoder.encode(x), before)  # the original is untouched
