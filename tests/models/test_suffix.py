import pytest
import torch

from trojanscope.models.suffix import SuffixRunner
from trojanscope.models.base import ARCHITECTURES
from trojanscope.neurons import NeuronRef, eligible_layers, mask_neurons


@pytest.mark.parametrize("arch", ["cnn-small", "resnet18"])
def test_rerun_matches_a_full_forward_with_the_same_change(arch):
    torch.manual_seed(0)
    model = ARCHITECTURES.create(arch, width=0.25).build(1, 4, 8).eval()
    x = torch.rand(5, 1, 8, 8)
    runner = SuffixRunner(model, x)
    with torch.no_grad():
        assert torch.allclose(runner.logits, model(x))
    for layer in eligible_layers(model)[1::3]:
        unchanged = runner.rerun(layer.output, 2, lambda out: out)
        assert torch.allclose(unchanged, runner.logits.repeat(2, 1), atol=1e-5)

        def zero_channel_1(out):
            out = out.clone()
            out[:, 1] = 0
            return out

        with torch.no_grad(), mask_neurons(model, [NeuronRef(layer.name, 1)]):
            expected = model(x)
        rerun = runner.rerun(layer.output, 3, zero_channel_1)
        assert torch.allclose(rerun, expected.repeat(3, 1), atol=1e-5)
        assert 0 < runner.fraction(layer.output) < 1
