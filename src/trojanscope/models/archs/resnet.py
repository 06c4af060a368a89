"""ResNet-18 with CIFAR-style basic blocks (3x3 stem, no initial max-pool), any input >= 8 px."""

from collections.abc import Callable

from torch import Tensor, nn

from trojanscope.models.base import ARCHITECTURES, Architecture, scaled


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def make_stages(
    block: Callable[[int, int, int], nn.Module], blocks: list[int], widths: list[int]
) -> list[nn.Sequential]:
    """Residual stages: ``blocks[i]`` blocks of width ``widths[i]``, stride 2 from stage 2 on."""
    stages, cin = [], widths[0]
    for i, (n, cout) in enumerate(zip(blocks, widths, strict=True)):
        layers = []
        for j in range(n):
            layers.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1))
            cin = cout
        stages.append(nn.Sequential(*layers))
    return stages


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], in_channels: int, num_classes: int, width: float) -> None:
        super().__init__()
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1, self.layer2, self.layer3, self.layer4 = make_stages(BasicBlock, blocks, widths)
        cin = widths[-1]
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.gap(x).flatten(1))


@ARCHITECTURES.register("resnet18")
class ResNet18(Architecture):
    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return ResNet([2, 2, 2, 2], in_channels, num_classes, self.params.width)
