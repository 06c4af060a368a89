import pytest
import torch

from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.suffix import SuffixRunner
from trojanscope.neurons import NeuronRef, eligible_layers, mask_neurons


def _model_and_batch(arch):
    """A randomly initialised ``arch`` at width 0.25 for 8x8 images, and five of them."""
    torch.manual_seed(0)
    return ARCHITECTURES.create(arch, width=0.25).build(1, 4, 8).eval(), torch.rand(5, 1, 8, 8)


def _zero_channel(channel):
    def zero(out):
        out = out.clone()
        out[:, channel] = 0
        return out

    return zero


@pytest.mark.parametrize("arch", ["cnn-small", "resnet18"])
def test_rerun_matches_a_full_forward_with_the_same_change(arch):
    model, x = _model_and_batch(arch)
    runner = SuffixRunner(model, x)
    with torch.no_grad():
        assert torch.allclose(runner.logits, model(x))
    for layer in eligible_layers(model)[1::3]:
        unchanged = runner.rerun(layer.output, 2, lambda out: out)
        assert torch.allclose(unchanged, runner.logits.repeat(2, 1), atol=1e-5)

        with torch.no_grad(), mask_neurons(model, [NeuronRef(layer.name, 1)]):
            expected = model(x)
        rerun = runner.rerun(layer.output, 3, _zero_channel(1))
        assert torch.allclose(rerun, expected.repeat(3, 1), atol=1e-5)
        assert 0 < runner.fraction(layer.output) < 1


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_a_runner_for_one_module_keeps_less_and_reruns_the_same(arch):
    model, x = _model_and_batch(arch)
    full = SuffixRunner(model, x)
    layer = eligible_layers(model)[len(eligible_layers(model)) // 2]
    only = SuffixRunner(model, x, only=layer.output)
    assert torch.equal(only.logits, full.logits)
    assert len(only.cache) < len(full.cache) / 4

    assert torch.equal(
        only.rerun(layer.output, 2, _zero_channel(0)), full.rerun(layer.output, 2, _zero_channel(0))
    )
    with pytest.raises(ValueError, match="re-runs from"):
        only.rerun(eligible_layers(model)[0].output, 1, _zero_channel(0))
