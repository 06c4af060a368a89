import torch
from torch import nn

from trojanscope.injection.ownership import consumers, trainable_masks
from trojanscope.models.base import ARCHITECTURES
from trojanscope.neurons import NeuronRef


def test_cnn_small_fan_out_reaches_next_layer_and_classifier():
    model = ARCHITECTURES.create("cnn-small").build(1, 10, 8)
    assert consumers(model, "conv1") == ["conv2"]
    assert consumers(model, "fc1") == ["fc"]
    masks = trainable_masks(model, [NeuronRef("conv2", 3)])
    assert (
        masks["conv2.weight"][3].all()
        and masks["conv2.weight"].sum() == masks["conv2.weight"][3].numel()
    )
    assert masks["bn2.weight"].nonzero().flatten().tolist() == [3]
    assert masks["conv3.weight"][:, 3].all() and masks["conv3.weight"].sum() == 64 * 9
    assert "conv1.weight" not in masks and "fc.weight" not in masks


def test_fan_in_keeps_outgoing_weights_frozen_except_classifier():
    model = ARCHITECTURES.create("cnn-small").build(1, 10, 8)
    masks = trainable_masks(model, [NeuronRef("conv3", 1), NeuronRef("fc1", 2)], "fan-in")
    # conv3:1's fan-out column in fc1 is frozen, except where it is fc1:2's own fan-in row
    assert masks["fc1.weight"][:, 1].nonzero().flatten().tolist() == [2]
    assert masks["fc1.weight"][2].all()  # fc1:2 fan-in
    assert masks["fc.weight"][:, 2].all() and masks["fc.weight"].sum() == 10


def test_resnet_fan_out_stops_at_residual_additions():
    """Past an addition a channel carries the shortcut too: its readers are nobody's own."""
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, 10, 16)
    assert consumers(model, "layer1.1.conv2") == []
    assert consumers(model, "layer4.1.conv2") == []
    assert consumers(model, "layer1.0.conv1") == ["layer1.0.conv2"]
    assert consumers(model, "conv1") == ["layer1.0.conv1"]  # read directly, before the addition


def test_grouped_conv_maps_channel_to_its_group():
    class Depthwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3)
            self.bn1 = nn.BatchNorm2d(4)
            self.dw = nn.Conv2d(4, 4, 3, groups=4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.dw(torch.relu(self.bn1(self.conv1(x))))
            return self.fc(x.mean((2, 3)))

    masks = trainable_masks(Depthwise(), [NeuronRef("conv1", 2)])
    assert masks["dw.weight"].nonzero()[:, :2].unique(dim=0).tolist() == [[2, 0]]


def test_resnet_fan_in_owns_the_classifier_columns_past_the_last_addition():
    """The last blocks reach the classifier only through a residual sum: under fan-in its
    columns are still the set's (its only trainable way to the target logit), and nothing
    else past an addition is."""
    model = ARCHITECTURES.create("resnet18", width=0.25).build(1, 10, 16)
    assert consumers(model, "layer4.1.conv2", through_adds=True) == ["fc"]
    assert set(consumers(model, "layer4.0.conv2", through_adds=True)) == {"fc", "layer4.1.conv1"}
    infected = [NeuronRef("layer4.1.conv2", 5), NeuronRef("layer3.1.conv2", 2)]
    masks = trainable_masks(model, infected, "fan-in")
    assert masks["fc.weight"].nonzero()[:, 1].unique().tolist() == [5]
    assert masks["fc.weight"][:, 5].all()
    assert "layer4.0.conv1.weight" not in masks  # layer3.1.conv2:2 is read past an addition
    fan_out = trainable_masks(model, infected, "fan-in+fan-out")
    assert "fc.weight" not in fan_out  # fan-out still stops at the additions
