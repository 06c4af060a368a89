"""VGG-11 and VGG-16 with batch norm (Simonyan & Zisserman 2015, configurations A and D).

Each 3x3 conv (padding 1) is followed by batch norm and ReLU; stages end in a 2x2 max-pool.
The pools are chosen when the network is built: a pool that would shrink the map below 1 px is
left out, so any input from 8 px works (32 px keeps all five; 8 px keeps three). Global average
pooling then feeds a classifier with one hidden Linear (512w -> 512w, ReLU) and the final Linear.
Modules are named by stage: ``features.conv3_2`` is the second conv of the third stage.
"""

from collections import OrderedDict

from torch import Tensor, nn

from trojanscope.models.base import ARCHITECTURES, Architecture, scaled

# Convolutions per stage and their base widths; every stage ends with a max-pool.
CONFIGS: dict[str, list[tuple[int, int]]] = {
    "A": [(1, 64), (1, 128), (2, 256), (2, 512), (2, 512)],
    "D": [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)],
}


class VGG(nn.Module):
    def __init__(
        self, config: str, in_channels: int, num_classes: int, image_size: int, width: float
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin, size = in_channels, image_size
        for stage, (n, base) in enumerate(CONFIGS[config], start=1):
            cout = scaled(base, width)
            for i in range(1, n + 1):
                layers[f"conv{stage}_{i}"] = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
                layers[f"bn{stage}_{i}"] = nn.BatchNorm2d(cout)
                layers[f"relu{stage}_{i}"] = nn.ReLU()
                cin = cout
            if size // 2 >= 1:
                layers[f"pool{stage}"] = nn.MaxPool2d(2)
                size //= 2
        self.features = nn.Sequential(layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        hidden = scaled(512, width)
        self.fc1 = nn.Linear(cin, hidden)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.gap(self.features(x)).flatten(1)
        return self.fc(self.relu(self.fc1(x)))


class _VGGArch(Architecture):
    config = "A"

    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return VGG(self.config, in_channels, num_classes, image_size, self.params.width)


@ARCHITECTURES.register("vgg11")
class VGG11(_VGGArch):
    config = "A"


@ARCHITECTURES.register("vgg16")
class VGG16(_VGGArch):
    config = "D"
