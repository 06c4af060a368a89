"""Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks").

CIFAR-style: a 3x3 stem without max-pool, pre-activation basic blocks (BN-ReLU-conv twice),
stages [2, 2, 2, 2] of widths 64/128/256/512 (times ``width``), stride 2 at the start of every
stage but the first, then a final BN-ReLU, global average pooling and the classifier.

A block with a projection shortcut (stride or width change) applies the 1x1 shortcut conv to the
pre-activated input, as in the paper's reference design; an identity shortcut carries the raw
input. A block's second conv therefore feeds a residual addition directly and has no
normalization of its own (its neurons are read at the conv output); each first conv is paired
with the block's second batch norm.
"""

from torch import Tensor, nn

from trojanscope.models.archs.resnet import make_stages
from trojanscope.models.base import ARCHITECTURES, Architecture, scaled


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        # Decided at construction time (fx-traceable): projection reads the pre-activation.
        residual = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + residual


class PreActResNet(nn.Module):
    def __init__(self, blocks: list[int], in_channels: int, num_classes: int, width: float) -> None:
        super().__init__()
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        stages = make_stages(PreActBlock, blocks, widths)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        cin = widths[-1]
        self.final_bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.relu(self.final_bn(x))
        return self.fc(self.gap(x).flatten(1))


@ARCHITECTURES.register("preact-resnet18")
class PreActResNet18(Architecture):
    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return PreActResNet([2, 2, 2, 2], in_channels, num_classes, self.params.width)
