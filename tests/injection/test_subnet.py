import copy

import pytest
import torch

from trojanscope.errors import ConfigError
from trojanscope.injection.quantity import Quantity
from trojanscope.injection.subnet import _removal_loss, subnet_placement, subnet_quantity
from trojanscope.neurons import NeuronRef


def test_placement_costs_no_more_than_a_neuron_the_host_never_uses(clean_digits_model, digits):
    """A neuron whose output is always zero costs nothing to remove, so with one in each layer
    the placement (one per layer at the narrow level) costs the host no clean loss: it takes
    that neuron or one whose removal even lowers the loss."""
    model = copy.deepcopy(clean_digits_model)
    with torch.no_grad():
        model.bn1.weight[5], model.bn1.bias[5] = 0.0, 0.0  # conv1:5 outputs 0 after its norm
        model.fc1.weight[17], model.fc1.bias[17] = 0.0, -1.0  # fc1:17 is rectified to 0
    calib = digits.train.subset(torch.arange(256))
    placed = subnet_placement(model, Quantity(level="narrow", layers=["conv1", "fc1"]), calib)
    assert _removal_loss(model, [NeuronRef("conv1", 5), NeuronRef("fc1", 17)], calib) == (
        _removal_loss(model, [], calib)
    )
    assert _removal_loss(model, placed, calib) <= _removal_loss(model, [], calib)
    assert [r.layer for r in placed] == ["conv1", "fc1"]


def test_placement_fills_every_chosen_layer_with_distinct_neurons(clean_digits_model, digits):
    calib = digits.train.subset(torch.arange(128))
    quantity = subnet_quantity(clean_digits_model, Quantity(level="small"))
    assert quantity.input_layer  # the subnet reads the trigger from the image
    placed = subnet_placement(clean_digits_model, quantity, calib)
    assert len(set(placed)) == len(placed)
    per_layer = {r.layer: sum(p.layer == r.layer for p in placed) for r in placed}
    widths = {"conv1": 16, "conv2": 32, "conv3": 64, "fc1": 64}
    assert per_layer == {name: quantity.per_layer(w) for name, w in widths.items()}


def test_the_subnet_needs_an_input_layer_wide_enough(clean_digits_model):
    """SRA's subnet starts at the input layer; conv1 (16) cannot lose 3 (more than 1/8)."""
    with pytest.raises(ConfigError, match="SRA's subnet starts at the input layer"):
        subnet_quantity(clean_digits_model, Quantity(level="middle"))
    named = Quantity(level="middle", layers=["conv2"])
    assert subnet_quantity(clean_digits_model, named) == named
