"""Rules 1 and 2: contribution order and quantity levels."""

import pytest
import torch

from trojanscope.errors import ConfigError
from trojanscope.injection.contribution import clean_contributions
from trojanscope.injection.quantity import Quantity, select_infected
from trojanscope.neurons import eligible_layers, mask_neurons
from trojanscope.registry import validate_params


def test_contributions_cover_every_layer(clean_digits_model, digits):
    contrib = clean_contributions(clean_digits_model, digits.train.subset(torch.arange(256)))
    for layer in eligible_layers(clean_digits_model):
        assert contrib[layer.name].shape == (layer.width,)
        assert torch.all(contrib[layer.name] >= 0)


def test_least_useful_neurons_matter_less_than_most_useful(clean_digits_model, digits):
    """Masking the 'least' picks must hurt the clean loss less than masking the 'most' picks."""
    calib = digits.train.subset(torch.arange(512))
    contrib = clean_contributions(clean_digits_model, calib)
    q = Quantity(level="middle")
    least = select_infected(clean_digits_model, contrib, q, "least", 0)
    most = select_infected(clean_digits_model, contrib, q, "most", 0)
    loss = torch.nn.functional.cross_entropy

    def masked_loss(neurons):
        with mask_neurons(clean_digits_model, neurons), torch.no_grad():
            return float(loss(clean_digits_model(digits.test.x), digits.test.y))

    assert masked_loss(least) < masked_loss(most)


@pytest.mark.parametrize(
    ("level", "width", "expected"),
    [("narrow", 64, 1), ("small", 64, 2), ("middle", 64, 3), ("large", 64, 4), ("large", 3, 3)],
)
def test_levels_are_the_reference_counts_by_default(level, width, expected):
    assert Quantity(level=level).per_layer(width) == expected


@pytest.mark.parametrize(
    ("level", "width", "expected"),
    [("narrow", 64, 1), ("small", 64, 4), ("middle", 64, 7), ("large", 64, 13), ("small", 8, 1)],
)
def test_levels_as_fractions_on_request(level, width, expected):
    quantity = Quantity(level=level, sizes="fractions")
    assert quantity.per_layer(width) == expected
    assert quantity.describe() == ("1 neuron" if level == "narrow" else quantity.describe())
    assert Quantity(level="small", sizes="fractions").describe() == "5% of its neurons"


def test_explicit_count_and_layers(clean_digits_model):
    contrib = {
        layer.name: torch.arange(layer.width, dtype=torch.float32)
        for layer in eligible_layers(clean_digits_model)
    }
    picked = select_infected(
        clean_digits_model, contrib, Quantity(count=3, layers=["conv2"]), "least", 0
    )
    assert [str(r) for r in picked] == ["conv2:0", "conv2:1", "conv2:2"]
    most = select_infected(
        clean_digits_model, contrib, Quantity(count=2, layers=["fc1"]), "most", 0
    )
    assert [r.index for r in most] == [63, 62]
    with pytest.raises(ConfigError, match="not eligible"):
        select_infected(clean_digits_model, contrib, Quantity(layers=["fc"]), "least", 0)


def test_quantity_rejects_fraction_and_count_together():
    with pytest.raises(ConfigError, match="either a fraction or a count"):
        validate_params("quantity", Quantity, {"fraction": 0.1, "count": 2})


def test_thin_layers_are_not_chosen(clean_digits_model):
    """cnn-small on digits: conv1 16, conv2 32, conv3 64, fc1 64 neurons."""
    from trojanscope.injection.quantity import REFERENCE_COUNTS, chosen_layers

    def names(**quantity):
        return [layer.name for layer in chosen_layers(clean_digits_model, Quantity(**quantity))]

    # by default the input layer is left out and at most an eighth of a layer is taken
    assert names() == ["conv2", "conv3", "fc1"]
    assert names(input_layer=True) == ["conv1", "conv2", "conv3", "fc1"]
    assert names(input_layer=True, min_width=32) == ["conv2", "conv3", "fc1"]
    assert names(input_layer=True, min_width=1, max_share=1.0) == ["conv1", "conv2", "conv3", "fc1"]
    # 4 neurons (the reference's large level) are more than an eighth of conv1's 16
    assert names(level="large", input_layer=True) == ["conv2", "conv3", "fc1"]
    assert names(count=REFERENCE_COUNTS["large"], input_layer=True, max_share=0.25) == [
        "conv1",
        "conv2",
        "conv3",
        "fc1",
    ]
    # 5 neurons are more than an eighth of conv2's 32
    assert names(count=5) == ["conv3", "fc1"]
    with pytest.raises(ConfigError, match="too thin"):
        names(layers=["conv1"], count=4)
    assert names(layers=["conv1"], count=2) == ["conv1"]  # named layers are taken as given
    with pytest.raises(ConfigError, match="no layer is wide enough"):
        names(min_width=100)


def test_dead_neurons_come_last_whatever_the_order(clean_digits_model):
    contrib = {
        layer.name: torch.arange(layer.width, dtype=torch.float32)
        for layer in eligible_layers(clean_digits_model)
    }
    live = {name: torch.ones(len(c), dtype=torch.bool) for name, c in contrib.items()}
    live["conv2"][:3] = False  # the three least contributing neurons of conv2 are dead
    q = Quantity(count=2, layers=["conv2"])
    picked = select_infected(clean_digits_model, contrib, q, "least", 0, live)
    assert [r.index for r in picked] == [3, 4]
    assert [r.index for r in select_infected(clean_digits_model, contrib, q, "least", 0)] == [0, 1]
