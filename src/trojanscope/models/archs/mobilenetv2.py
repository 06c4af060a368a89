"""MobileNetV2 (Sandler et al. 2018): inverted residual blocks with linear bottlenecks.

Each block expands its input with a 1x1 conv (BN, ReLU6; left out when the expansion factor is
1), filters it with a depthwise 3x3 conv (BN, ReLU6) and projects it back with a 1x1 conv and BN
without activation (the linear bottleneck); the input is added back when the stride is 1 and
the width is unchanged. The paper's stage table is kept except for the CIFAR-style
adaptation to small inputs: the stem conv has stride 1 and the second stage (24 channels) stride
1, so the network downsamples by 8 in total and an 8 px input ends at 1 px. A last 1x1 conv to
1280w channels (BN, ReLU6), global average pooling and the classifier close the network.
"""

from torch import Tensor, nn

from trojanscope.models.base import ARCHITECTURES, Architecture, scaled

# (expansion factor t, base output channels c, repeats n, stride of the first block s)
STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the paper (ImageNet); 1 for small inputs
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand: nn.Conv2d | None = None
        self.expand_bn: nn.BatchNorm2d | None = None
        if expansion != 1:
            self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = x
        expand, expand_bn = self.expand, self.expand_bn
        if expand is not None and expand_bn is not None:  # structural: fixed when built
            out = self.act(expand_bn(expand(out)))
        out = self.act(self.depthwise_bn(self.depthwise(out)))
        out = self.project_bn(self.project(out))
        return out + x if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float) -> None:
        super().__init__()
        cin = scaled(32, width)
        self.stem = nn.Conv2d(in_channels, cin, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(cin)
        self.act = nn.ReLU6()
        blocks = []
        for t, c, n, s in STAGES:
            cout = scaled(c, width)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        last = scaled(1280, width)
        self.head = nn.Conv2d(cin, last, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(last)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = self.act(self.head_bn(self.head(x)))
        return self.fc(self.gap(x).flatten(1))


@ARCHITECTURES.register("mobilenetv2")
class MobileNetV2Arch(Architecture):
    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return MobileNetV2(in_channels, num_classes, self.params.width)
