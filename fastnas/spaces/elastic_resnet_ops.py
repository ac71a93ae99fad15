"""Elastic ResNet building blocks: the standalone network of one member, and the supernet's elastic layers.

Everything above the ``# ---- supernet`` marker imports only ``torch``:
:meth:`ElasticResNetSupernet.export_source <fastnas.spaces.elastic_resnet.ElasticResNetSupernet.export_source>`
copies the source text of these classes into the exported file, so the exported network and
:class:`ResNet` are the same code and have the same ``state_dict`` keys.

Module names, the same in a member's network and in the supernet (only the shapes differ):
``stem`` (``0`` Conv2d 3x3, ``1`` BatchNorm2d), ``stages.{s}.{i}`` (block ``i`` of stage ``s``) with
``conv1`` and ``conv2`` (each ``0`` conv, ``1`` BatchNorm) and ``shortcut`` (a 1x1 ConvBN at the first
block of a stage that changes stride or channels, else an identity), and ``classifier`` (Linear).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBN", "BasicBlock", "ResNet", "ElasticConv2d", "ElasticBatchNorm2d", "ElasticConvBN",
           "ElasticBlock"]


class ConvBN(nn.Sequential):
    """Conv2d without bias (padding ``kernel_size // 2``), then BatchNorm2d."""

    def __init__(self, c_in, c_out, kernel_size, stride=1):
        super().__init__(nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """``relu(conv2(relu(conv1(x))) + shortcut(x))``: two k x k ConvBNs (c_in -> width -> c_out, the first
    with the stride), the shortcut an identity or, when the stride or the channels change, a 1x1 ConvBN."""

    def __init__(self, c_in, width, c_out, kernel_size, stride=1):
        super().__init__()
        self.conv1 = ConvBN(c_in, width, kernel_size, stride)
        self.conv2 = ConvBN(width, c_out, kernel_size)
        self.shortcut = ConvBN(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x):  # (B, c_in, H, W) -> (B, c_out, ceil(H / stride), ceil(W / stride))
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """One member: a 3x3 ConvBN-ReLU stem of ``stage_channels[0]`` channels, then per stage the blocks of
    ``arch[s]`` (``(width, kernel)`` pairs; stage 0 keeps the resolution, every later stage halves it in its
    first block), global average pooling and a linear classifier."""

    def __init__(self, arch, stage_channels, num_classes, in_channels):
        super().__init__()
        c = stage_channels[0]
        self.stem = ConvBN(in_channels, c, 3)
        stages = []
        for s, blocks in enumerate(arch):
            out, layers = stage_channels[s], []
            for i, (width, kernel) in enumerate(blocks):
                layers.append(BasicBlock(c, width, out, kernel, 2 if s > 0 and i == 0 else 1))
                c = out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):  # (B, in_channels, H, W) -> (B, num_classes)
        x = torch.relu(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return self.classifier(x.mean(dim=(2, 3)))


# ---- supernet (not exported)

class ElasticConv2d(nn.Module):
    """The largest ``(c_out, c_in, K, K)`` conv weight (no bias); ``forward(x, out, kernel)`` convolves
    with ``weight[:out, :x.shape[1]]``, the ``kernel x kernel`` centre of its ``K x K`` (odd sizes)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's initialisation

    def forward(self, x: torch.Tensor, out: int, kernel: int) -> torch.Tensor:  # (B, c, H, W), c <= c_in
        o = (self.kernel_size - kernel) // 2
        w = self.weight[:out, :x.shape[1], o:o + kernel, o:o + kernel]
        return F.conv2d(x, w, None, self.stride, kernel // 2)

    def extra_repr(self) -> str:
        c_out, c_in = self.weight.shape[:2]
        return f"{c_in}, {c_out}, kernel_size={self.kernel_size}, stride={self.stride}"


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm of the largest width; an input of ``c`` channels uses the first ``c`` entries of the
    weight, bias and running statistics (the statistics updated in place in training mode). A
    :class:`~torch.nn.BatchNorm2d`, so :func:`~fastnas.spaces.base.recalibrate_bn` finds and resets it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, H, W), c <= num_features
        c = x.shape[1]
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None
        rm = self.running_mean[:c] if self.running_mean is not None else None
        rv = self.running_var[:c] if self.running_var is not None else None
        return F.batch_norm(x, rm, rv, self.weight[:c], self.bias[:c], use_batch, factor, self.eps)


class ElasticConvBN(nn.Sequential):
    """:class:`ElasticConv2d` then :class:`ElasticBatchNorm2d` (names ``0.*``, ``1.*`` as :class:`ConvBN`);
    ``forward(x, out, kernel)``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(ElasticConv2d(c_in, c_out, kernel_size, stride), ElasticBatchNorm2d(c_out))

    def forward(self, x: torch.Tensor, out: int, kernel: int) -> torch.Tensor:  # type: ignore[override]
        return self[1](self[0](x, out, kernel))


class ElasticBlock(nn.Module):
    """The largest :class:`BasicBlock` of one position: ``conv1`` (c_in -> max width), ``conv2`` (max width
    -> c_out), both of the largest kernel; ``forward(x, width, kernel)`` runs the member's slices. The
    shortcut (whole in every member) is that of :class:`BasicBlock`."""

    def __init__(self, c_in: int, max_width: int, c_out: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.c_out = c_out
        self.conv1 = ElasticConvBN(c_in, max_width, kernel_size, stride)
        self.conv2 = ElasticConvBN(max_width, c_out, kernel_size)
        self.shortcut = ConvBN(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, width: int, kernel: int) -> torch.Tensor:  # (B, c_in, H, W)
        h = torch.relu(self.conv1(x, width, kernel))  # (B, width, H', W')
        return torch.relu(self.conv2(h, self.c_out, kernel) + self.shortcut(x))  # (B, c_out, H', W')
