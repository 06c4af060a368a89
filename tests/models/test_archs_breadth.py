"""Every architecture plug-in works with the neuron and injection machinery, not just forward."""

import pytest
import torch
from torch import nn

from tests.injection.test_injection import assert_identical_outside
from trojanscope.attacks.base import ATTACKS
from trojanscope.data.base import DATASETS
from trojanscope.injection.ownership import consumers, trainable_masks
from trojanscope.injection.pipeline import InjectionConfig, inject_defect
from trojanscope.injection.quantity import Quantity, infected_layers
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import CleanTraining, train_clean
from trojanscope.neurons import (
    NeuronRef,
    all_neurons,
    capture_activations,
    classifier_name,
    eligible_layers,
    layer_map,
    mask_neurons,
)

NEW = ["preact-resnet18", "vgg11", "vgg16", "mobilenetv2"]
ALL = ["cnn-small", "resnet18", *NEW]


def _build(arch: str, channels: int = 1, size: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ARCHITECTURES.create(arch, width=0.25).build(channels, 10, size).eval()


def _with_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial normalization statistics, so masking is tested on realistic outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 32), (1, 28)])
def test_forward_shapes(arch, channels, size):
    model = _build(arch, channels, size)
    with torch.no_grad():
        assert model(torch.rand(2, channels, size, size)).shape == (2, 10)


@pytest.mark.parametrize("arch", NEW)
def test_construction_is_deterministic_and_width_scales(arch):
    a, b = _build(arch, seed=3), _build(arch, seed=3)
    for (key, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), key
    full = ARCHITECTURES.create(arch, width=1.0).build(1, 10, 8)
    assert sum(p.numel() for p in full.parameters()) > 8 * sum(p.numel() for p in a.parameters())


def _pools(model: nn.Module) -> list[nn.MaxPool2d]:
    return [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]


@pytest.mark.parametrize(("size", "pools"), [(8, 3), (16, 4), (28, 5), (32, 5)])
def test_vgg_keeps_only_the_pools_the_input_allows(size, pools):
    for arch in ("vgg11", "vgg16"):
        model = _build(arch, size=size)
        assert len(_pools(model)) == pools
        assert all(p.ceil_mode for p in _pools(model))
        x = torch.rand(1, 1, size, size)
        assert model.features(x).shape[-2:] == (1, 1)  # the last map is one pixel


def test_vgg_flooring_pools_on_request_and_for_models_stored_before_the_option():
    floor = ARCHITECTURES.create("vgg11", width=0.25, ceil_pools=False).build(1, 10, 28)
    assert len(_pools(floor)) == 4 and not any(p.ceil_mode for p in _pools(floor))
    # A stored model's parameters without the field were recorded when pools floored.
    cls = ARCHITECTURES.get("vgg11")
    assert cls.from_stored({"width": 0.25}).params.ceil_pools is False
    assert cls.from_stored({"width": 0.25, "ceil_pools": True}).params.ceil_pools is True
    assert ARCHITECTURES.get("resnet18").from_stored({"width": 0.5}).params.width == 0.5


@pytest.mark.parametrize("arch", ALL)
def test_every_conv_and_hidden_linear_is_eligible(arch):
    model = _build(arch)
    modules = dict(model.named_modules())
    layers = eligible_layers(model)
    convs = {n for n, m in modules.items() if isinstance(m, nn.Conv2d)}
    linears = {n for n, m in modules.items() if isinstance(m, nn.Linear)}
    assert classifier_name(model) == "fc"
    assert {layer.name for layer in layers} == convs | (linears - {"fc"})
    for layer in layers:
        module = modules[layer.name]
        assert layer.width == (module.out_channels if layer.kind == "conv" else module.out_features)
        if layer.norm is not None:
            assert isinstance(modules[layer.norm], nn.BatchNorm2d)
            assert modules[layer.norm].num_features == layer.width
        assert layer.output == (layer.norm or layer.name)


def test_preact_resnet_pairs_and_residual_outputs():
    layers = layer_map(_build("preact-resnet18"))
    assert len(layers) == 1 + 16 + 3
    # a conv feeding the next pre-activation BN is paired with it
    assert layers["layer1.0.conv1"].norm == "layer1.0.bn2"
    assert layers["layer3.1.conv1"].norm == "layer3.1.bn2"
    # convs whose output goes straight into a residual addition have no norm
    for name in ("layer1.0.conv2", "layer4.1.conv2", "layer2.0.shortcut", "conv1"):
        assert layers[name].norm is None, name
    assert sum(layer.norm is None for layer in layers.values()) == 1 + 8 + 3


@pytest.mark.parametrize(
    ("arch", "convs", "last"), [("vgg11", 8, "features.conv5_2"), ("vgg16", 13, "features.conv5_3")]
)
def test_vgg_pairs_every_conv_with_its_norm(arch, convs, last):
    layers = eligible_layers(_build(arch))
    assert [layer.kind for layer in layers] == ["conv"] * convs + ["linear"]
    for layer in layers[:-1]:
        assert layer.norm == layer.name.replace(".conv", ".bn")
    assert layers[-1].name == "fc1" and layers[-1].norm is None
    assert layers[0].name == "features.conv1_1" and layers[-2].name == last


def test_mobilenetv2_pairs_depthwise_and_projection():
    model = _build("mobilenetv2")
    layers = layer_map(model)
    assert len(layers) == 1 + 2 + 16 * 3 + 1  # stem, first block without expansion, head
    assert "blocks.0.expand" not in layers
    dw = layers["blocks.1.depthwise"]
    assert dw.kind == "conv" and dw.norm == "blocks.1.depthwise_bn"
    assert model.blocks[1].depthwise.groups == dw.width == layers["blocks.1.expand"].width
    assert layers["blocks.1.expand"].norm == "blocks.1.expand_bn"
    # the linear bottleneck's BN feeds the residual addition; it still pairs with its conv
    assert layers["blocks.2.project"].norm == "blocks.2.project_bn"
    assert layers["stem"].norm == "stem_bn" and layers["head"].norm == "head_bn"
    assert all(layer.norm is not None for layer in layers.values())


# A few neurons per architecture: a generic one plus the interesting kinds of layer.
MASK_TARGETS = {
    "cnn-small": ["conv2:1"],
    "resnet18": ["layer2.0.shortcut.0:3"],
    "preact-resnet18": ["conv1:2", "layer1.0.conv2:3", "layer2.0.shortcut:1"],
    "vgg11": ["features.conv3_2:5", "fc1:7"],
    "vgg16": ["features.conv1_2:0", "fc1:7"],
    "mobilenetv2": ["blocks.3.depthwise:10", "blocks.2.project:2"],
}


@pytest.mark.parametrize("arch", ALL)
def test_masking_zeroes_the_neurons_and_restores_the_model(arch):
    model = _with_statistics(_build(arch))
    x = torch.rand(6, 1, 8, 8)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    targets = [NeuronRef.parse(n) for n in MASK_TARGETS[arch]]
    targets.append(all_neurons(model)[len(all_neurons(model)) // 2])
    with torch.no_grad():
        before = model(x)
    with mask_neurons(model, targets), torch.no_grad():
        acts = capture_activations(model, x)
        masked = model(x)
    for ref in targets:
        assert torch.all(acts[ref.layer][:, ref.index] == 0), ref
    assert not torch.equal(before, masked)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_state[key]), key
    assert not any(m._forward_hooks for m in model.modules())


def test_mobilenetv2_expansion_fans_out_into_its_own_depthwise_channel():
    model = _build("mobilenetv2")
    assert consumers(model, "blocks.1.expand") == ["blocks.1.depthwise"]
    assert consumers(model, "blocks.1.depthwise") == ["blocks.1.project"]
    assert consumers(model, "head") == ["fc"]
    masks = trainable_masks(model, [NeuronRef("blocks.1.expand", 5)])
    assert set(masks) == {
        "blocks.1.expand.weight",
        "blocks.1.expand_bn.weight",
        "blocks.1.expand_bn.bias",
        "blocks.1.depthwise.weight",
    }
    dw = masks["blocks.1.depthwise.weight"]  # (hidden, 1, 3, 3)
    assert dw[5].all() and int(dw.sum()) == dw[5].numel()
    assert masks["blocks.1.expand.weight"][5].all()
    assert int(masks["blocks.1.expand.weight"].sum()) == masks["blocks.1.expand.weight"][5].numel()


def test_mobilenetv2_fan_out_stops_at_residual_additions():
    model = _build("mobilenetv2")
    # blocks.2 adds its input back (stride 1, 24 -> 24); blocks.3 changes the width
    assert model.blocks[2].residual and not model.blocks[3].residual
    # blocks.2.expand reads blocks.1.project's channels alone; past blocks.2's addition a channel
    # mixes two signals, so blocks.3.expand's columns are not blocks.1.project's own
    assert consumers(model, "blocks.1.project") == ["blocks.2.expand"]
    assert consumers(model, "blocks.2.project") == []


def test_preact_resnet_fan_out_stops_at_residual_additions():
    model = _build("preact-resnet18")
    assert consumers(model, "layer1.0.conv2") == []
    assert consumers(model, "layer1.0.conv1") == ["layer1.0.conv2"]
    assert consumers(model, "layer4.1.conv2") == []


@pytest.fixture(scope="module")
def synthetic():
    return DATASETS.create("synthetic", n=120, size=8).load(0)


@pytest.mark.parametrize("arch", ["cnn-small", *NEW])
def test_injection_is_bit_identical_outside_the_infected_set(arch, synthetic):
    clean = train_clean(
        ARCHITECTURES.create(arch, width=0.25), synthetic.train, 0, CleanTraining(epochs=1)
    )
    state = {k: v.clone() for k, v in clean.state_dict().items()}
    config = InjectionConfig(quantity=Quantity(level="narrow"), max_epochs=1)
    outcome = inject_defect(clean, synthetic, ATTACKS.create("badnets", size=2), config, 0)
    # one neuron per layer the thin-layer and chain rules choose
    assert len(outcome.infected) == len(infected_layers(clean, config.quantity))
    assert_identical_outside(state, outcome.model, outcome.infected)
    for key, value in clean.state_dict().items():  # the clean model itself is untouched
        assert torch.equal(value, state[key]), key
