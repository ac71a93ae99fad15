"""NAS-Bench-201 building blocks: cell operations, cells, residual blocks, the standalone network.

Everything above the ``# ---- supernet`` marker imports only ``torch``:
:meth:`NB201Supernet.export_source <fastnas.spaces.nb201.NB201Supernet.export_source>` copies the
source text of these classes into the exported file, so the exported network and
:class:`NB201Network` are the same code and have the same ``state_dict`` keys.

Module names (useful for a later mixed-op forward): a network is ``stem`` (Conv2d, BatchNorm2d),
``cells`` (a ModuleList mixing cells and residual blocks, in order), ``lastact`` (BatchNorm2d, ReLU),
``global_pooling`` and ``classifier``. A standalone :class:`Cell` has ``edges[k]`` (one module per edge,
``k`` in :data:`EDGES` order); a :class:`SuperCell` has ``edges[k][op_name]`` for every op but ``none``.
A ReLU-Conv-BN op is an ``nn.Sequential`` (``0`` ReLU, ``1`` Conv2d, ``2`` BatchNorm2d).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "OPS", "EDGES", "ReLUConvBN", "Zero", "make_op", "Cell", "ResidualBlock", "NB201Network", "SuperCell",
]

#: Candidate operations, in the order :meth:`NB201.enumerate` counts them.
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: Edges ``(to_node, from_node)`` in the order of the official string ``|a~0|+|b~0|c~1|+|d~0|e~1|f~2|``.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


class ReLUConvBN(nn.Sequential):
    """ReLU, Conv2d without bias (padding ``kernel_size // 2``), BatchNorm2d."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=True),
        )


class Zero(nn.Module):
    """Placeholder for a ``none`` edge; cells never call it (a ``none`` edge contributes nothing)."""

    def forward(self, x):
        return x.mul(0.0)


def make_op(name, channels, affine=True):
    """The module of cell operation ``name`` on ``channels`` channels (stride 1, shape-preserving)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, affine)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"op={name!r}: expected one of {list(OPS)}")


class Cell(nn.Module):
    """A NAS-Bench-201 cell with a fixed architecture (6 op names in :data:`EDGES` order).

    Node 0 is the input, node 3 the output; node ``i`` is the sum of its non-``none`` incoming edges,
    or a zero tensor when all of them are ``none`` (later ops still run on that zero tensor, as in the
    benchmark's networks).
    """

    def __init__(self, arch, channels, affine=True):
        super().__init__()
        self.arch = tuple(arch)
        self.edges = nn.ModuleList([make_op(op, channels, affine) for op in self.arch])

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        nodes = [x]
        for node in (1, 2, 3):
            out = None
            for k, (to, src) in enumerate(EDGES):
                if to != node or self.arch[k] == "none":
                    continue
                y = self.edges[k](nodes[src])
                out = y if out is None else out + y
            nodes.append(torch.zeros_like(x) if out is None else out)
        return nodes[3]


class ResidualBlock(nn.Module):
    """ResNet basic block between stages: ReLU-Conv3x3-BN (stride 2), ReLU-Conv3x3-BN, plus the shortcut
    AvgPool2d(2, 2) + Conv1x1 (no BN, no bias). Always affine BN."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, True)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, True)
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False),
        )

    def forward(self, x):  # (B, c_in, H, W) -> (B, c_out, H/2, W/2)
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """The standalone NAS-Bench-201 network of one cell architecture.

    Args:
        arch: 6 op names in :data:`EDGES` order (the same cell in every stage).
        C: channels of the first stage (then ``2C``, ``4C``).
        N: cells per stage.
        num_classes: classifier outputs.
        in_channels: input image channels.
        affine_cells: affine BatchNorm in the cells' ReLU-Conv-BN ops (the benchmark's networks: True;
            networks extracted from a supernet with non-affine cell BatchNorms: False). Stem, residual
            blocks and the final BatchNorm are always affine.
    """

    def __init__(self, arch, C=16, N=5, num_classes=10, in_channels=3, affine_cells=True):
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C, 3, 1, 1, bias=False),
            nn.BatchNorm2d(C),
        )
        cells = []
        c = C
        for stage in range(3):
            if stage > 0:
                cells.append(ResidualBlock(c, 2 * c))
                c = 2 * c
            cells.extend(Cell(arch, c, affine_cells) for _ in range(N))
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):  # (B, in_channels, H, W) -> (B, num_classes)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected (batch, {self.in_channels}, height, width)"
            )
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.global_pooling(self.lastact(x)).flatten(1)
        return self.classifier(x)


# ---- supernet (not exported)


class SuperCell(nn.Module):
    """A cell holding every candidate op on every edge: ``edges[k][op]`` for ``op != "none"``.

    ``forward(x, arch)`` runs only the ops of ``arch``; ``none`` edges are skipped entirely, and a node
    whose incoming edges are all ``none`` is a zero tensor (exactly as in :class:`Cell`).
    """

    def __init__(self, channels: int, affine: bool = False):
        super().__init__()
        self.edges = nn.ModuleList([
            nn.ModuleDict({op: make_op(op, channels, affine) for op in OPS if op != "none"})
            for _ in EDGES
        ])

    def forward(self, x: torch.Tensor, arch) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        nodes = [x]
        for node in (1, 2, 3):
            out = None
            for k, (to, src) in enumerate(EDGES):
                if to != node or arch[k] == "none":
                    continue
                y = self.edges[k][arch[k]](nodes[src])
                out = y if out is None else out + y
            nodes.append(torch.zeros_like(x) if out is None else out)
        return nodes[3]
