"""VGG-11 and VGG-16 with batch norm (Simonyan & Zisserman 2015, configurations A and D).

Each 3x3 conv (padding 1) is followed by batch norm and ReLU; stages end in a 2x2 max-pool.
The pools are chosen when the network is built: a pool on a 1 px map is left out, so any input
from 8 px works (32 px keeps all five; 8 px keeps three). The pools round up (``ceil_mode``):
on 28 px inputs a flooring pool (7 -> 3 -> 1) drops the last row and column of the map twice,
and with them a corner trigger such as BadNets' (docs/findings.md section 6). On 8 and 32 px
inputs both modes are the same network. Global average
pooling then feeds a classifier with one hidden Linear (512w -> 512w, ReLU) and the final Linear.
Modules are named by stage: ``features.conv3_2`` is the second conv of the third stage.
"""

from collections import OrderedDict
from typing import Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from trojanscope.models.base import ARCHITECTURES, Architecture, ArchParams, scaled

# Convolutions per stage and their base widths; every stage ends with a max-pool.
CONFIGS: dict[str, list[tuple[int, int]]] = {
    "A": [(1, 64), (1, 128), (2, 256), (2, 512), (2, 512)],
    "D": [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)],
}


class VGGParams(ArchParams):
    ceil_pools: bool = Field(
        True, description="max-pools round odd map sizes up (keep the last row and column)"
    )


class VGG(nn.Module):
    def __init__(
        self,
        config: str,
        in_channels: int,
        num_classes: int,
        image_size: int,
        width: float,
        ceil_pools: bool = True,
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
            if size >= 2:
                layers[f"pool{stage}"] = nn.MaxPool2d(2, ceil_mode=ceil_pools)
                size = (size + 1) // 2 if ceil_pools else size // 2
        self.features = nn.Sequential(layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        hidden = scaled(512, width)
        self.fc1 = nn.Linear(cin, hidden)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.gap(self.features(x)).flatten(1)
        return self.fc(self.relu(self.fc1(x)))


class _VGGArch(Architecture[VGGParams]):
    config = "A"
    # Models stored before ``ceil_pools`` existed were built with flooring pools.
    stored_defaults: ClassVar[dict[str, Any]] = {"ceil_pools": False}

    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        p = self.params
        return VGG(self.config, in_channels, num_classes, image_size, p.width, p.ceil_pools)


@ARCHITECTURES.register("vgg11")
class VGG11(_VGGArch):
    config = "A"


@ARCHITECTURES.register("vgg16")
class VGG16(_VGGArch):
    config = "D"
