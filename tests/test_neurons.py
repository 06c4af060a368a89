import pytest
import torch

from trojanscope.errors import TrojanscopeError
from trojanscope.models.base import ARCHITECTURES
from trojanscope.neurons import (
    NeuronRef,
    NeuronSet,
    all_neurons,
    capture_activations,
    classifier_name,
    eligible_layers,
    layer_outputs,
    mask_neurons,
    patch_neurons,
    patched_logits,
)


def _model(arch: str, size: int = 16):
    torch.manual_seed(0)
    model = ARCHITECTURES.create(arch, width=0.25).build(1, 10, size).eval()
    # Non-trivial normalization statistics, so masking is tested on realistic outputs.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_names_round_trip():
    ref = NeuronRef("layer3.1.conv2", 17)
    assert str(ref) == "layer3.1.conv2:17"
    assert NeuronRef.parse("layer3.1.conv2:17") == ref
    assert NeuronSet.parse(["a:1", "b:0", "a:0"]).by_layer() == {"a": [0, 1], "b": [0]}
    with pytest.raises(TrojanscopeError):
        NeuronRef.parse("conv1")


def test_cnn_small_layers_exclude_classifier():
    model = _model("cnn-small")
    layers = eligible_layers(model)
    assert [layer.name for layer in layers] == ["conv1", "conv2", "conv3", "fc1"]
    assert classifier_name(model) == "fc"
    assert layers[0].norm == "bn1" and layers[3].norm is None
    assert len(all_neurons(model)) == sum(layer.width for layer in layers)


def test_resnet18_has_all_convs_and_shortcuts():
    layers = {layer.name: layer for layer in eligible_layers(_model("resnet18"))}
    assert len(layers) == 1 + 16 + 3
    assert layers["layer2.0.shortcut.0"].norm == "layer2.0.shortcut.1"
    assert "fc" not in layers


@pytest.mark.parametrize("arch", ["cnn-small", "resnet18"])
def test_masking_zeroes_the_neuron_and_restores_the_model(arch):
    model = _model(arch)
    x = torch.rand(8, 1, 16, 16)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(x)
    target = all_neurons(model)[5]
    with mask_neurons(model, [target]), torch.no_grad():
        acts = capture_activations(model, x)
        masked = model(x)
    assert torch.all(acts[target.layer][:, target.index] == 0)
    assert not torch.equal(before, masked)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_state[key])
    assert not any(m._forward_hooks for m in model.modules())


def test_masking_restores_even_after_an_exception():
    model = _model("cnn-small")
    with pytest.raises(RuntimeError), mask_neurons(model, [NeuronRef("conv1", 0)]):
        raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())


def test_unknown_neuron_is_rejected():
    model = _model("cnn-small")
    with (
        pytest.raises(TrojanscopeError, match="does not exist"),
        mask_neurons(model, [NeuronRef("conv1", 999)]),
    ):
        pass


def test_capture_shapes():
    model = _model("cnn-small")
    acts = capture_activations(model, torch.rand(5, 1, 16, 16))
    for layer in eligible_layers(model):
        assert acts[layer.name].shape == (5, layer.width)


@pytest.mark.parametrize("arch", ["cnn-small", "resnet18", "mobilenetv2"])
def test_patching_every_neuron_or_none(arch):
    """Keeping every neuron is the plain forward pass on the triggered batch; keeping none is
    the forward pass on the clean batch (the input reaches the decision only through neurons)."""
    torch.manual_seed(0)
    model = _model(arch, 12)
    clean, triggered = torch.rand(6, 1, 12, 12), torch.rand(6, 1, 12, 12)
    with torch.no_grad():
        plain_triggered, plain_clean = model(triggered), model(clean)
    every = all_neurons(model)
    assert torch.equal(patched_logits(model, every, clean, triggered), plain_triggered)
    assert torch.allclose(patched_logits(model, [], clean, triggered), plain_clean, atol=1e-6)
    assert torch.equal(model(triggered).detach(), plain_triggered)  # hooks are gone


def test_patching_lets_gradients_through_the_kept_neurons_only():
    torch.manual_seed(0)
    model = ARCHITECTURES.create("cnn-small", width=0.25).build(1, 10, 12).eval()
    clean = torch.rand(4, 1, 12, 12)
    first = eligible_layers(model)[0].name
    every = all_neurons(model)
    after_first = [ref for ref in every if ref.layer != first]
    for keep, moves in (([], False), (after_first, True), (every, True)):
        x = torch.rand(4, 1, 12, 12, requires_grad=True)
        with patch_neurons(model, keep, layer_outputs(model, clean)):
            model(x).sum().backward()
        assert bool(x.grad.abs().sum() > 0) is moves


def test_layers_before_the_set_are_its_input():
    """Patching starts at the first layer holding a kept neuron: keeping every neuron from the
    second layer on is the plain triggered pass; holding the rest of that layer changes it."""
    torch.manual_seed(0)
    model = ARCHITECTURES.create("cnn-small", width=0.5).build(1, 10, 12).eval()
    clean, triggered = torch.rand(4, 1, 12, 12), torch.rand(4, 1, 12, 12)
    first = eligible_layers(model)[0].name
    after_first = [ref for ref in all_neurons(model) if ref.layer != first]
    with torch.no_grad():
        plain = model(triggered)
    assert torch.equal(patched_logits(model, after_first, clean, triggered), plain)
    assert not torch.allclose(patched_logits(model, after_first[1:], clean, triggered), plain)
