"""The chain rule: infected layers reach each other and the classifier through the set."""

import pytest
import torch
from torch import nn

from trojanscope.injection.quantity import (
    Quantity,
    chosen_layers,
    infected_layers,
    select_infected,
)
from trojanscope.models.base import ARCHITECTURES
from trojanscope.neurons import eligible_layers


def _names(layers):
    return [layer.name for layer in layers]


def _random_contributions(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {layer.name: torch.rand(layer.width, generator=g) for layer in eligible_layers(model)}


class ThinMiddle(nn.Module):
    """conv2 -> thin conv3 (4 channels, never chosen) -> conv4 -> conv5 -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 4, 3, padding=1)
        self.conv4 = nn.Conv2d(4, 16, 3, padding=1)
        self.conv5 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            x = torch.relu(conv(x))
        return self.fc(x.mean((2, 3)))


def test_a_layer_cut_off_by_a_thin_layer_is_not_infected():
    model = ThinMiddle()
    assert _names(chosen_layers(model, Quantity(level="small"))) == ["conv2", "conv4", "conv5"]
    # patching holds conv3 clean whole: conv2's infected channels could not reach conv4
    assert _names(infected_layers(model, Quantity(level="small"))) == ["conv4", "conv5"]
    # named layers are taken as given
    named = Quantity(level="small", layers=["conv2", "conv4"])
    assert _names(infected_layers(model, named)) == ["conv2", "conv4"]


@pytest.mark.parametrize("arch", ["cnn-small", "vgg11", "resnet18", "preact-resnet18"])
@pytest.mark.parametrize("level", ["narrow", "large"])
def test_networks_without_a_cut_keep_every_chosen_layer(arch, level):
    model = ARCHITECTURES.create(arch, width=0.5).build(1, 10, 28)
    quantity = Quantity(level=level)
    assert _names(infected_layers(model, quantity)) == _names(chosen_layers(model, quantity))


def test_mobilenetv2_chain_starts_after_its_thin_projections_and_aligns_depthwise_channels():
    model = ARCHITECTURES.create("mobilenetv2", width=0.25).build(1, 10, 28)
    quantity = Quantity(level="small")
    layers = _names(infected_layers(model, quantity))
    # blocks 1-5 project to 6 or 8 channels, too thin to lose 2: the chain starts behind them
    assert layers[0] == "blocks.6.expand" and layers[-1] == "head"
    assert all(not name.startswith(f"blocks.{b}.") for b in range(6) for name in layers)
    picked: dict[str, set[int]] = {}
    for ref in select_infected(model, _random_contributions(model), quantity, "least", 0):
        picked.setdefault(ref.layer, set()).add(ref.index)
    for name in layers:
        if name.endswith(".depthwise"):
            # a depthwise channel reads its own input channel only
            assert picked[name] == picked[name.replace("depthwise", "expand")], name
