"""Built-in CIFAR backbones for NAR's backbone refinement (plain PyTorch, imports only torch).

* :func:`resnet20`: He et al.'s CIFAR ResNet-20: a 3x3 stem of ``width`` channels (default 16), three
  stages of three :class:`BasicBlock` each with ``width``, ``2 width``, ``4 width`` channels, the later
  stages halving the resolution; global average pooling and a linear classifier. Shortcuts are
  **option B**: a 1x1 conv + BatchNorm projection where a block changes the stride or the channels,
  the identity elsewhere (the paper's option A pads with zeros; B is the common re-implementation).
* :func:`resnet18`: the CIFAR ResNet-18 of NAR's Table 5 (the kuangliu/pytorch-cifar layout): a 3x3
  stem of ``width`` channels (default 64) with no max-pool, four stages of two :class:`BasicBlock`
  (64, 128, 256, 512), 1x1 projection shortcuts, global average pooling and a linear classifier.

Both take ``in_channels`` and ``num_classes``; ``torch.fx.symbolic_trace`` traces them.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet18", "BACKBONES"]


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convs; the shortcut is a
    1x1 conv + BN where the stride or the channels change (option B), else the identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet of BasicBlocks: 3x3 stem (no max-pool), ``len(blocks)`` stages (stage ``s`` has
    ``widths[s]`` channels and ``blocks[s]`` blocks; every stage after the first starts with stride 2),
    global average pooling, linear classifier."""

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths={tuple(widths)!r}, blocks={tuple(blocks)!r}: expected one block count per "
                             "stage width")
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels), *(("width", w) for w in widths),
                        *(("blocks", b) for b in blocks)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r}: expected a positive integer")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=False)
        layers = []
        c = widths[0]
        for s, (w, n) in enumerate(zip(widths, blocks)):
            stage = []
            for i in range(n):
                stage.append(BasicBlock(c, w, stride=2 if (s > 0 and i == 0) else 1))
                c = w
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3, width: int = 16, blocks: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 (3 stages x 3 BasicBlocks, ``width``/2w/4w channels, option-B shortcuts);
    ``blocks`` per stage gives ResNet-(6 blocks + 2)."""
    return CifarResNet((width, 2 * width, 4 * width), (blocks,) * 3, num_classes=num_classes,
                       in_channels=in_channels)


def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64, blocks: int = 2) -> CifarResNet:
    """CIFAR ResNet-18 (4 stages x 2 BasicBlocks, ``width``..8w channels, 3x3 stem, no max-pool);
    ``blocks`` per stage other than 2 gives a deeper or shallower variant."""
    return CifarResNet((width, 2 * width, 4 * width, 8 * width), (blocks,) * 4, num_classes=num_classes,
                       in_channels=in_channels)


#: The built-in backbones by name: (constructor, default width, default blocks per stage).
BACKBONES = {"resnet20": (resnet20, 16, 3), "resnet18": (resnet18, 64, 2)}
