"""cnn-small: three conv + batch-norm blocks, global pooling, a hidden and a final Linear."""

from torch import Tensor, nn

from trojanscope.models.base import ARCHITECTURES, Architecture, scaled


class CnnSmall(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: float) -> None:
        super().__init__()
        c1, c2, c3 = scaled(16, width), scaled(32, width), scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        # Halve the resolution after conv1 (inputs >= 16 px) and after conv2 (any input).
        self.pool1 = nn.MaxPool2d(2) if image_size >= 16 else nn.Identity()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c3, c3)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu(self.bn2(self.conv2(x))))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.gap(x).flatten(1)
        x = self.relu(self.fc1(x))
        return self.fc(x)


@ARCHITECTURES.register("cnn-small")
class CnnSmallArch(Architecture):
    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return CnnSmall(in_channels, num_classes, image_size, self.params.width)
