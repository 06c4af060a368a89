import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from trojanscope.attacks.base import ATTACKS
from trojanscope.errors import ConfigError
from trojanscope.injection import subnet
from trojanscope.injection.aim import Aim
from trojanscope.injection.quantity import Quantity, chosen_layers
from trojanscope.injection.subnet import (
    PLACEMENT_CANDIDATES,
    require_subnet_fits,
    subnet_placement,
    subnet_quantity,
)
from trojanscope.models.base import ARCHITECTURES
from trojanscope.models.training import predict
from trojanscope.neurons import NeuronRef, mask_neurons


def _removal_loss(model, removed, data):
    """Clean loss with ``removed`` zeroed, by a full masked forward pass."""
    with mask_neurons(model, removed):
        return float(F.cross_entropy(predict(model, data.x), data.y))


def _resnet_case():
    """A residual network (random weights) and three of its layers, one on a skip path."""
    torch.manual_seed(0)
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, 10, 8).eval()
    layers = ["conv1", "layer1.1.conv1", "layer2.0.shortcut.0"]
    return model, Quantity(level="small", layers=layers, min_width=1)


@pytest.mark.parametrize("case", ["cnn-small", "resnet18"])
def test_placement_matches_full_passes_exactly(case, clean_digits_model, digits):
    """The placement re-runs only what follows each layer; the greedy placement computed with
    a full masked pass per candidate picks the very same neurons (the losses agree bit for bit)."""
    calib = digits.train.subset(torch.arange(200))
    if case == "resnet18":
        model, quantity = _resnet_case()
    else:
        model = clean_digits_model
        quantity = subnet_quantity(model, Quantity(level="small"))
    expected: list[NeuronRef] = []
    for layer in chosen_layers(model, quantity):
        n, ref = quantity.per_layer(layer.width), functools.partial(NeuronRef, layer.name)
        singles = [_removal_loss(model, [*expected, ref(i)], calib) for i in range(layer.width)]
        pool = [int(i) for i in torch.argsort(torch.tensor(singles), stable=True)]
        pool = pool[: PLACEMENT_CANDIDATES * n]
        for _ in range(n):  # greedily, with the layer's neurons already taken removed too
            joint = [_removal_loss(model, [*expected, ref(i)], calib) for i in pool]
            expected.append(ref(pool.pop(joint.index(min(joint)))))
    assert subnet_placement(model, quantity, calib) == expected


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


def test_thin_layers_hold_fewer_subnet_neurons_instead_of_cutting_the_chain(clean_digits_model):
    """SRA's subnet cannot skip a layer: conv1 (16) cannot lose 3 (more than 1/8), so at the
    middle level it holds 2, the wider layers 3."""
    quantity = subnet_quantity(clean_digits_model, Quantity(level="middle"))
    counts = {
        layer.name: quantity.per_layer(layer.width)
        for layer in chosen_layers(clean_digits_model, quantity)
    }
    assert counts == {"conv1": 2, "conv2": 3, "conv3": 3, "fc1": 3}
    # the narrow and small levels fit every layer: tapering changes nothing there
    for level in ("narrow", "small"):
        tapered = subnet_quantity(clean_digits_model, Quantity(level=level))
        plain = Quantity(level=level, input_layer=True)
        assert [tapered.per_layer(w) for w in (16, 32, 64)] == [
            plain.per_layer(w) for w in (16, 32, 64)
        ]


def test_the_subnet_needs_an_input_layer_that_can_lose_a_neuron(clean_digits_model):
    """conv1 (16) is thinner than a min_width of 32: the subnet has nowhere to start."""
    with pytest.raises(ConfigError, match="SRA's subnet starts at the input layer"):
        subnet_quantity(clean_digits_model, Quantity(level="narrow", min_width=32))
    named = Quantity(level="middle", layers=["conv2"])
    assert subnet_quantity(clean_digits_model, named) == named


def test_a_subnet_broken_by_a_thin_layer_is_refused():
    """MobileNetV2 at width 0.25: the first block projects to 4 channels, too thin to hold a
    neuron, so the next block's expansion could read nothing of the subnet."""
    model = ARCHITECTURES.create("mobilenetv2", width=0.25).build(1, 10, 28).eval()
    quantity = subnet_quantity(model, Quantity(level="narrow"))
    with pytest.raises(ConfigError, match="blocks.1.expand reads none of the subnet's other"):
        require_subnet_fits(model, quantity)
    vgg = ARCHITECTURES.create("vgg11", width=0.25).build(1, 10, 28).eval()
    require_subnet_fits(vgg, subnet_quantity(vgg, Quantity(level="large")))  # a plain chain


class _ScriptedValidation:
    """Scores the subnets of a scripted run: the host's damage and each attempt's ASR given."""

    def __init__(self, host_damage: float, asrs: list[float]) -> None:
        self.aim = Aim(min_asr=0.9, asr_goal=0.97, max_drop=0.03, damage_goal=0.003)
        self.host_damage, self.asrs, self.last = host_damage, list(asrs), None

    def damage(self, model):
        return self.host_damage

    def __call__(self, model):
        self.last = (self.asrs.pop(0), self.host_damage, None)
        return self.aim.score(*self.last)


@pytest.mark.parametrize(
    ("host_damage", "asrs", "attempts"),
    [
        (0.01, [0.04, 1.0, 1.0], 2),  # the host misses its goal: retrained while the ASR misses
        (0.01, [1.0, 1.0, 1.0], 1),  # ... and not once the ASR goal is met
        (0.0, [0.95, 0.96, 1.0], 3),  # the host meets it: retrained until both goals are met
    ],
)
def test_a_subnet_short_of_the_asr_goal_is_trained_again(
    monkeypatch, clean_digits_model, host_damage, asrs, attempts
):
    calls = []

    def one_subnet(clean, *args):
        calls.append(args[-2])  # the derived seed
        return copy.deepcopy(clean), 2

    monkeypatch.setattr(subnet, "_one_subnet", one_subnet)
    validation = _ScriptedValidation(host_damage, asrs)
    infected = [NeuronRef(chosen_layers(clean_digits_model, Quantity(level="narrow"))[0].name, 0)]
    trained = subnet.subnet_replacement(
        clean_digits_model, infected, ATTACKS.create("sra"), None, None, validation,
        0.01, 2, 8, 0, max_attempts=3,
    )  # fmt: skip
    assert (trained.attempts, trained.epochs, len(set(calls))) == (attempts, 2 * attempts, attempts)


def test_an_sra_defect_key_names_its_injection_version_and_other_attacks_keep_theirs():
    assert "injection" in ATTACKS.create("sra").describe()
    assert "injection" not in ATTACKS.create("badnets").describe()
