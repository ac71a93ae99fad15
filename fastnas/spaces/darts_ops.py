"""Operations, cells and the standalone CIFAR network of the DARTS search space.

This module imports only torch: ``DARTSSupernet.export_source`` ships its source, unchanged, as the
body of an exported network. Definitions follow DARTS (Liu et al., ICLR 2019):

* ``sep_conv_kxk``: (ReLU, depthwise kxk conv, pointwise 1x1 conv, BN) applied twice; only the first
  depthwise conv carries the stride.
* ``dil_conv_kxk``: ReLU, depthwise kxk conv with dilation 2, pointwise 1x1 conv, BN.
* ``skip_connect``: identity, or :class:`FactorizedReduce` when the edge has stride 2.
* ``avg_pool_3x3`` excludes the padding from the average; ``max_pool_3x3``; ``none`` outputs zeros.
* In the search network (``pool_bn=True``) pooling is followed by a BN, as in DARTS's ``MixedOp``; that
  BN is affine exactly when the cell's other BNs are (``affine``): GeNAS's supernet builds them all affine,
  DARTS's search network none.
"""

import torch
from torch import nn

__all__ = [
    "PRIMITIVES", "Zero", "Identity", "ReLUConvBN", "DilConv", "SepConv", "FactorizedReduce",
    "make_op", "drop_path", "Cell", "AuxiliaryHeadCIFAR", "NetworkCIFAR",
]

# Candidate operations on every edge, in DARTS's order.
PRIMITIVES = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output shape (no weights)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class Identity(nn.Module):
    """The stride-1 ``skip_connect``; drop-path is never applied to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ReLUConvBN(nn.Sequential):
    """ReLU, conv (no bias), BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, dilated depthwise conv, pointwise conv, BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise conv, pointwise conv, BN); the stride is on the first."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halves the resolution: ReLU, two stride-2 1x1 convs on offset grids, concatenated, BN.

    Needs even input height and width (the two halves must have equal sizes).
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        if C_out % 2 != 0:
            raise ValueError(f"C_out={C_out}: FactorizedReduce needs an even number of output channels")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)  # (B, C_out, H/2, W/2)
        return self.bn(out)


def make_op(name: str, C: int, stride: int, affine: bool, pool_bn: bool = False) -> nn.Module:
    """The operation ``name`` on ``C`` channels (``pool_bn``: BN after pooling, affine when ``affine``)."""
    if name == "none":
        return Zero(stride)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        if name == "max_pool_3x3":
            pool = nn.MaxPool2d(3, stride=stride, padding=1)
        else:
            pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        if pool_bn:
            return nn.Sequential(pool, nn.BatchNorm2d(C, affine=affine))
        return pool
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)
    if name == "sep_conv_3x3":
        return SepConv(C, C, 3, stride, 1, affine=affine)
    if name == "sep_conv_5x5":
        return SepConv(C, C, 5, stride, 2, affine=affine)
    if name == "dil_conv_3x3":
        return DilConv(C, C, 3, stride, 2, 2, affine=affine)
    if name == "dil_conv_5x5":
        return DilConv(C, C, 5, stride, 4, 2, affine=affine)
    raise ValueError(f"op={name!r} is not a DARTS operation; expected one of {list(PRIMITIVES)}")


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zeroes whole samples with probability ``drop_prob`` and rescales the rest by 1/(1-drop_prob)."""
    keep_prob = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x / keep_prob * mask


class Cell(nn.Module):
    """A DARTS cell with fixed operations.

    Args:
        edges: ``(op, input)`` pairs, two per intermediate node; inputs 0 and 1 are the cell inputs,
            input ``k + 2`` is intermediate node ``k``.
        concat: states concatenated into the output (DARTS numbers: 2.. for intermediate nodes).
        C_prev_prev, C_prev: channels of the two cell inputs; C: channels of every node.
        reduction: whether this cell halves the resolution (edges from the cell inputs use stride 2).
        reduction_prev: whether the previous cell did (the first input is then reduced too).
        affine: BN affine parameters inside the cell (the BN after pooling included).
        pool_bn: BN after pooling ops (search-network convention).
    """

    def __init__(self, edges, concat, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, affine: bool = True, pool_bn: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=affine)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=affine)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=affine)
        self.indices = [int(j) for _, j in edges]
        self.concat = [int(i) for i in concat]
        self.multiplier = len(self.concat)
        self.ops = nn.ModuleList(
            make_op(name, C, 2 if reduction and j < 2 else 1, affine, pool_bn) for name, j in edges
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for k in range(len(self.ops) // 2):
            hs = []
            for e in (2 * k, 2 * k + 1):
                op = self.ops[e]
                h = op(states[self.indices[e]])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)  # (B, multiplier * C, H', W')


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier; expects 8x8 inputs (after the second reduction at 32x32)."""

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # DARTS uses inplace=True here, which rewrites the main path's tensor
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),  # 2x2 -> 1x1
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class NetworkCIFAR(nn.Module):
    """The DARTS network for CIFAR-sized inputs with a fixed genotype.

    Stem conv3x3 + BN with ``stem_multiplier * C`` channels, ``layers`` cells with reduction cells at
    ``layers // 3`` and ``2 * layers // 3`` (channels doubled there), global average pooling, linear
    classifier. ``drop_path_prob`` (set by the trainer) applies in train mode to non-identity ops.

    Args:
        C: channels of the first cells' nodes.
        num_classes: classifier outputs.
        layers: number of cells.
        genotype: any object with attributes ``normal``, ``normal_concat``, ``reduce``,
            ``reduce_concat`` (DARTS ``Genotype``).
        auxiliary: adds the auxiliary head after cell ``2 * layers // 3``; in train mode ``forward``
            then returns ``(logits, aux_logits)``.
        in_channels: input channels.
        stem_multiplier: stem width as a multiple of ``C``.
        affine: BN affine parameters inside the cells (the BN after pooling included); networks taken
            from a supernet have the supernet's setting.
        pool_bn: BN after pooling ops (True for networks taken from the supernet).
        drop_path_prob: initial drop-path probability.
    """

    def __init__(self, C: int, num_classes: int, layers: int, genotype, auxiliary: bool = False,
                 in_channels: int = 3, stem_multiplier: int = 3, affine: bool = True, pool_bn: bool = False,
                 drop_path_prob: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_to_auxiliary = C_prev
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
                edges, concat = genotype.reduce, genotype.reduce_concat
            else:
                edges, concat = genotype.normal, genotype.normal_concat
            cell = Cell(edges, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                        affine=affine, pool_bn=pool_bn)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor):
        div = 2 ** sum(1 for cell in self.cells if cell.reduction)
        if x.dim() != 4 or x.size(1) != self.in_channels or x.size(2) % div or x.size(3) % div:
            raise ValueError(f"input of shape {tuple(x.shape)}: expected (N, {self.in_channels}, H, W) "
                             f"with H and W divisible by {div}")
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        logits = self.classifier(out.view(out.size(0), -1))  # (N, num_classes)
        if logits_aux is not None:
            return logits, logits_aux
        return logits
