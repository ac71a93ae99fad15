"""NATS-Bench's size search space ("sss"): the NAS-Bench-201 network with a fixed cell and searched widths.

NATS-Bench (Dong et al., TPAMI 2021) fixes the cell to the best NAS-Bench-201 cell
``|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|`` and
searches the width of each of the ``3N + 2`` layers of the network (``N = 1``: 5 layers -- cell, residual
block, cell, residual block, cell), each from ``{8, 16, 24, 32, 40, 48, 56, 64}``: 8**5 = 32,768
architectures, written ``"8:16:32:48:64"``. The network is the reference's ``DynamicShapeTinyNet``
(AutoDL-Projects, ``xautodl/models/shape_infers/InferTinyCellNet.py``):

* stem Conv3x3 (no bias) + BN with ``widths[0]`` channels;
* layer ``j`` maps ``widths[j-1]`` (the stem's for ``j = 0``) to ``widths[j]`` channels: a reduction
  layer (``j = N`` and ``2N + 1``) is the NAS-Bench-201 residual block (stride 2), the others a cell
  whose edges out of node 0 map ``c_in -> c_out`` and whose other edges ``c_out -> c_out``;
* on an edge out of node 0 of a cell that changes width, ``skip_connect`` becomes a 1x1 projection
  (Conv1x1 without bias, BN, no ReLU: the reference's ``FactorizedReduce`` at stride 1) and
  ``avg_pool_3x3`` is preceded by a ReLU-Conv1x1-BN; a ``none`` edge gives ``c_out`` zero channels;
* final BN + ReLU, global average pooling, linear classifier; every BatchNorm affine.

The supernet is a nested ("weight-contained") family: it owns the weights of the largest member, and a
member uses the leading ``c_out x c_in`` block of every weight (``conv.weight[:c_out, :c_in]``, BatchNorm
weight, bias and running statistics ``[:c_out]``, the classifier's ``[:, :c]``). Its parameter names are
those of the standalone network, so ``path_parameters(arch)`` lists each tensor the member has, as a
:class:`~fastnas.ops.ParamSlice` (or a name where the member uses all of it). A 1x1 projection exists
only in members whose cell changes width; the largest member has none, so :meth:`NB201Size.contains`
is the channel order *and* "every projection of the small member is also in the big one" (every
member contains :meth:`~NB201Size.smallest`; :meth:`~NB201Size.largest` contains exactly the members
with no projection).

Everything above the ``# ---- supernet`` marker imports only torch (and the NAS-Bench-201 blocks):
:meth:`NB201SizeSupernet.export_source` copies that source into the exported file.
"""

from __future__ import annotations

import inspect
import itertools
import random
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.ops import ParamSlice
from fastnas.spaces.base import (
    CellGraph, Presets, Space,
    Supernet, check_class_name, register_space, size_keyword,
)
from fastnas.spaces.elastic_resnet_ops import ElasticBatchNorm2d  # the one prefix-sliced BatchNorm
from fastnas.spaces.nb201 import NB201, TRAIN_RECIPE
from fastnas.spaces.nb201_ops import EDGES, OPS, ReLUConvBN, ResidualBlock, Zero

__all__ = ["NB201Size", "NB201SizeSupernet", "NB201SizeNetwork", "SizeCell", "NATS_CELL", "NATS_CHANNELS",
           "ElasticBatchNorm2d"]

#: NATS-Bench's fixed cell of the size search space (the best NAS-Bench-201 cell).
NATS_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
#: NATS-Bench's width choices of every layer.
NATS_CHANNELS = (8, 16, 24, 32, 40, 48, 56, 64)

Arch = Tuple[int, ...]


class SkipProjection(nn.Sequential):
    """``skip_connect`` between two widths (the reference's stride-1 ``FactorizedReduce``): Conv1x1 (no
    bias), BatchNorm; no ReLU."""

    def __init__(self, c_in, c_out):
        super().__init__(nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out))


def make_size_op(name, c_in, c_out):
    """The module of op ``name`` from ``c_in`` to ``c_out`` channels (stride 1), as NATS-Bench builds it."""
    if name == "none":
        return Zero()  # placeholder; cells skip ``none`` edges
    if name == "skip_connect":
        return nn.Identity() if c_in == c_out else SkipProjection(c_in, c_out)
    if name == "nor_conv_1x1":
        return ReLUConvBN(c_in, c_out, 1)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c_in, c_out, 3)
    if name == "avg_pool_3x3":
        pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        return pool if c_in == c_out else nn.Sequential(ReLUConvBN(c_in, c_out, 1), pool)
    raise ValueError(f"op={name!r}: expected one of {list(OPS)}")


class SizeCell(nn.Module):
    """A NAS-Bench-201 cell from ``c_in`` to ``c_out`` channels: edges out of node 0 map ``c_in -> c_out``,
    the others ``c_out -> c_out``; a node fed only by ``none`` edges is ``c_out`` zero channels."""

    def __init__(self, arch, c_in, c_out):
        super().__init__()
        self.arch = tuple(arch)
        self.c_out = c_out
        self.edges = nn.ModuleList([make_size_op(op, c_in if src == 0 else c_out, c_out)
                                    for op, (_, src) in zip(self.arch, EDGES)])

    def forward(self, x):  # (B, c_in, H, W) -> (B, c_out, H, W)
        nodes = [x]
        for node in (1, 2, 3):
            out = None
            for k, (to, src) in enumerate(EDGES):
                if to != node or self.arch[k] == "none":
                    continue
                y = self.edges[k](nodes[src])
                out = y if out is None else out + y
            nodes.append(x.new_zeros(x.shape[0], self.c_out, x.shape[2], x.shape[3]) if out is None else out)
        return nodes[3]


def layer_is_reduction(num_layers):
    """Which of the ``3N + 2`` layers are the residual blocks (layers ``N`` and ``2N + 1``)."""
    n = (num_layers - 2) // 3
    return [False] * n + [True] + [False] * n + [True] + [False] * n


class NB201SizeNetwork(nn.Module):
    """The standalone network of one size architecture (NATS-Bench's ``DynamicShapeTinyNet``).

    Args:
        cell: 6 op names in the order of the NAS-Bench-201 string (the same cell in every cell layer).
        widths: the ``3N + 2`` layer widths.
        num_classes: classifier outputs.
        in_channels: input image channels.
    """

    def __init__(self, cell, widths, num_classes=10, in_channels=3):
        super().__init__()
        self.in_channels = in_channels
        widths = list(widths)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]))
        layers, c = [], widths[0]
        for w, reduction in zip(widths, layer_is_reduction(len(widths))):
            layers.append(ResidualBlock(c, w) if reduction else SizeCell(cell, c, w))
            c = w
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):  # (B, in_channels, H, W) -> (B, num_classes)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, {self.in_channels}, height, width)")
        x = self.stem(x)
        for layer in self.cells:
            x = layer(x)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))


# ---- supernet (not exported)

_EXPORTED = (ReLUConvBN, Zero, ResidualBlock, SkipProjection, make_size_op, SizeCell, layer_is_reduction,
             NB201SizeNetwork)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return value


def _default_candidates(largest: int) -> Tuple[int, ...]:
    """NATS-Bench's 8 evenly spaced widths scaled to ``largest``, rounded up (64 -> 8, 16, ..., 64;
    4 -> 1, 2, 3, 4)."""
    return tuple(sorted({-(-largest * i // 8) for i in range(1, 9)}))  # ceil(largest * i / 8)


@register_space("nb201_size")
class NB201Size(Space):
    """NATS-Bench's size search space: ``3N + 2`` layer widths around a fixed NAS-Bench-201 cell.

    Args:
        candidates: the width choices of every layer (default NATS-Bench's 8, 16, ..., 64).
        N: cells per stage (NATS-Bench: 1, so 5 layers).
        num_classes: classifier outputs; default 10.
        in_channels: input image channels; default 3.
        resolution: input height = width for :meth:`flops`, a multiple of 4; default 32.
        cell: the fixed cell, a NAS-Bench-201 string or 6 op names (default :data:`NATS_CELL`).
        channels: the generic size keyword: the largest width; without ``candidates`` the choices are 8
            evenly spaced widths up to it (64 gives NATS-Bench's).
        cells: the generic name of ``N``.

    Architectures are tuples of ``3N + 2`` ints, text ``"8:16:32:48:64"``. Family: :meth:`largest`,
    :meth:`smallest`, :meth:`contains`.
    """

    name = "nb201_size"

    def __init__(self, candidates: Optional[Sequence[int]] = None, N: Optional[int] = None,
                 num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                 resolution: Optional[int] = None, cell: Any = None, *, channels: Optional[int] = None,
                 cells: Optional[int] = None) -> None:
        if candidates is None:
            largest = _positive_int("channels", 64 if channels is None else channels)
            cand = _default_candidates(largest)
        else:
            try:
                cand = tuple(sorted({_positive_int("candidates", c) for c in candidates}))
            except TypeError:
                raise ValueError(f"candidates={candidates!r}: expected a sequence of positive widths") from None
            if not cand:
                raise ValueError(f"candidates={candidates!r}: expected at least one width")
            if channels is not None and channels != cand[-1]:
                raise ValueError(f"channels={channels!r} and candidates={candidates!r} disagree; channels is the "
                                 "largest width: give one of them")
        self.candidates: Tuple[int, ...] = cand
        self.N = _positive_int("N", size_keyword("N", N, "cells", cells, 1))
        self.num_layers = 3 * self.N + 2
        self.num_classes = _positive_int("num_classes", 10 if num_classes is None else num_classes)
        self.in_channels = _positive_int("in_channels", 3 if in_channels is None else in_channels)
        self.resolution = _positive_int("resolution", 32 if resolution is None else resolution)
        if self.resolution % 4:
            raise ValueError(f"resolution={resolution!r}: expected a multiple of 4 (two stride-2 layers)")
        topology = NB201()
        cell = NATS_CELL if cell is None else cell
        try:
            self.cell = topology.parse(cell) if isinstance(cell, str) else topology.validate(cell)
        except ValueError as e:
            raise ValueError(f"cell={cell!r}: expected a NAS-Bench-201 cell ({e})") from None
        self.cell_text = topology.format(self.cell)
        self.reductions = tuple(layer_is_reduction(self.num_layers))
        # Cell layers whose edges out of node 0 change width when the layer does (projection ops).
        projecting = any(op in ("skip_connect", "avg_pool_3x3") for op, (_, src) in zip(self.cell, EDGES) if src == 0)
        self.projecting_layers = tuple(j for j in range(1, self.num_layers) if projecting and not self.reductions[j])

    def config(self) -> Dict[str, Any]:
        return {"candidates": list(self.candidates), "N": self.N, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "resolution": self.resolution, "cell": self.cell_text}

    def __repr__(self) -> str:
        return "NB201Size(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    # ---- architectures

    def _check(self, arch: Any, what: str = "arch") -> Arch:
        expected = f"{self.num_layers} widths from {list(self.candidates)}"
        if isinstance(arch, str):
            raise ValueError(f"{what}={arch!r} is a string; expected a tuple of {expected} (use parse() for the "
                             "'8:16:32:48:64' text form)")
        if not isinstance(arch, (tuple, list)) or len(arch) != self.num_layers:
            raise ValueError(f"{what}={arch!r}: expected a tuple of {expected}, one per layer")
        for j, c in enumerate(arch):
            if isinstance(c, bool) or not isinstance(c, int) or c not in self.candidates:
                raise ValueError(f"{what}={arch!r}: layer {j} width {c!r} is not one of {list(self.candidates)}")
        return tuple(int(c) for c in arch)

    def validate(self, arch: Any) -> Arch:
        return self._check(arch)

    def format(self, arch: Any) -> str:
        """NATS-Bench's text form, the widths joined by ``:`` (``"8:16:32:48:64"``)."""
        return ":".join(str(c) for c in self.validate(arch))

    def parse(self, text: str) -> Arch:
        example = ":".join(str(self.candidates[-1]) for _ in range(self.num_layers))
        if not isinstance(text, str):
            raise ValueError(f"text={text!r}: expected a string like {example!r}")
        parts = text.strip().split(":")
        try:
            widths = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"text={text!r}: expected {self.num_layers} integer widths joined by ':', like "
                             f"{example!r}") from None
        try:
            return self.validate(widths)
        except ValueError as e:
            raise ValueError(f"text={text!r}: {e}") from None

    def sample(self, rng: random.Random) -> Arch:
        return tuple(rng.choice(self.candidates) for _ in range(self.num_layers))

    def mutate(self, arch: Any, prob: float, rng: random.Random) -> Arch:
        """Each width, with probability ``prob``, redrawn uniformly from the choices (possibly the same)."""
        a = self.validate(arch)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob={prob!r}: expected a probability in [0, 1]")
        return tuple(rng.choice(self.candidates) if rng.random() < prob else c for c in a)

    def crossover(self, a: Any, b: Any, rng: random.Random) -> Arch:
        a, b = self.validate(a), self.validate(b)
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    def fair_paths(self, rng: random.Random) -> Tuple[Arch, ...]:
        """FairNAS strict fairness: ``len(candidates)`` architectures in which every width of every layer
        appears exactly once (a random permutation of the choices per layer)."""
        perms = [rng.sample(self.candidates, len(self.candidates)) for _ in range(self.num_layers)]
        return tuple(tuple(p[j] for p in perms) for j in range(len(self.candidates)))

    def enumerate(self) -> Iterator[Arch]:
        """Every architecture, the last layer varying fastest (NATS-Bench's index order for N = 1)."""
        return itertools.product(self.candidates, repeat=self.num_layers)

    def size(self) -> int:
        return len(self.candidates) ** self.num_layers

    # ---- family

    def largest(self) -> Arch:
        return (self.candidates[-1],) * self.num_layers

    def smallest(self) -> Arch:
        return (self.candidates[0],) * self.num_layers

    def projections(self, arch: Any) -> Tuple[int, ...]:
        """The cell layers where ``arch`` has 1x1 projections (its width differs from the layer before)."""
        a = self.validate(arch)
        return tuple(j for j in self.projecting_layers if a[j - 1] != a[j])

    def contains(self, big: Any, small: Any) -> bool:
        """Whether every weight of ``small`` is a leading block of a weight of ``big``: every layer of
        ``small`` is no wider, and every projection ``small`` has, ``big`` has too."""
        b, s = self._check(big, "big"), self._check(small, "small")
        return all(cs <= cb for cb, cs in zip(b, s)) and set(self.projections(s)) <= set(self.projections(b))

    # ---- cost

    def _layers(self, arch: Arch) -> Iterator[Tuple[int, int, int, bool]]:
        """``(c_in, c_out, input resolution, is_reduction)`` per layer."""
        c, h = arch[0], self.resolution
        for w, red in zip(arch, self.reductions):
            yield c, w, h, red
            c, h = w, (h // 2 if red else h)

    def _cost(self, arch: Arch) -> Tuple[int, int]:
        """``(parameters, multiply-adds)`` of ``build(arch)``; multiply-adds count convolutions and the
        linear layer (plus its bias), as the NAS-Bench-201 / NATS-Bench API does."""
        a, R, nc = self.validate(arch), self.resolution, self.num_classes
        params = self.in_channels * a[0] * 9 + 2 * a[0]
        macs = self.in_channels * a[0] * 9 * R * R
        for ci, co, h, red in self._layers(a):
            if red:
                h2 = h // 2
                params += 9 * ci * co + 2 * co + 9 * co * co + 2 * co + ci * co
                macs += (9 * ci * co + 9 * co * co + ci * co) * h2 * h2
                continue
            for op, (_, src) in zip(self.cell, EDGES):
                cin = ci if src == 0 else co
                k = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}.get(op)
                if k is None and op in ("skip_connect", "avg_pool_3x3") and cin != co:
                    k = 1  # the projection
                if k is not None:
                    params += k * k * cin * co + 2 * co
                    macs += k * k * cin * co * h * h
        c = a[-1]
        params += 2 * c + c * nc + nc
        macs += c * nc + nc
        return params, macs

    def params(self, arch: Any) -> int:
        """Parameters of ``build(arch)``, analytically (NATS-Bench's ``params`` is this over 1e6)."""
        return self._cost(arch)[0]

    def flops(self, arch: Any) -> float:
        """Multiply-adds (millions, per image) of ``build(arch)`` at ``resolution``: convolutions and the
        linear layer with its bias (the NAS-Bench-201 API's counting)."""
        return self._cost(arch)[1] / 1e6

    # ---- presets and plots

    def presets(self, data: Optional[str] = None) -> Presets:
        """NAS-Bench-201's presets (GeNAS's sigmas, RLNAS's supernet recipe): the same network family."""
        return Presets(sigmas=(2e-3, 1e-2, 2e-2), train=TRAIN_RECIPE)

    def cell_graph(self, arch: Any) -> List[CellGraph]:
        """The fixed cell, titled by the widths."""
        a = self.validate(arch)
        labels = ("in", "1", "2", "out")
        edges = [(labels[src], labels[to], op) for (to, src), op in zip(EDGES, self.cell) if op != "none"]
        return [CellGraph(f"cell of {self.format(a)}", list(labels), edges)]

    # ---- networks

    def build(self, arch: Any, **kwargs: Any) -> nn.Module:
        """The standalone :class:`NB201SizeNetwork` of ``arch`` with fresh weights."""
        if kwargs:
            raise ValueError(f"build() takes no options for space {self.name!r}; got {sorted(kwargs)}")
        return NB201SizeNetwork(self.cell, self.validate(arch), self.num_classes, self.in_channels)

    def supernet(self, **kwargs: Any) -> "NB201SizeSupernet":
        """The weight-sharing supernet: the largest member's weights, members by prefix slices."""
        if kwargs:
            raise ValueError(f"supernet() takes no options for space {self.name!r}; got {sorted(kwargs)}")
        return NB201SizeSupernet(self)


def _conv(conv: nn.Conv2d, x: torch.Tensor, c_out: int) -> torch.Tensor:
    """``conv`` with its leading ``(c_out, x.shape[1])`` block of weights."""
    return F.conv2d(x, conv.weight[:c_out, :x.shape[1]], None, conv.stride, conv.padding)


class ElasticReLUConvBN(nn.Sequential):
    """ReLU-Conv-BN of the largest widths (``1`` conv, ``2`` BN); ``forward(x, c_out)`` uses the prefix."""

    def __init__(self, c: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c, c, kernel_size, stride, kernel_size // 2, bias=False),
                         ElasticBatchNorm2d(c))

    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:  # type: ignore[override]
        return self[2](_conv(self[1], F.relu(x), c_out))


class ElasticSkip(nn.Sequential):
    """``skip_connect`` out of node 0 of a cell that may change width: identity at equal widths, else the
    leading block of a 1x1 projection (``0`` conv, ``1`` BN)."""

    def __init__(self, c: int) -> None:
        super().__init__(nn.Conv2d(c, c, 1, 1, 0, bias=False), ElasticBatchNorm2d(c))

    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:  # type: ignore[override]
        return x if x.shape[1] == c_out else self[1](_conv(self[0], x, c_out))


class ElasticPool(nn.Sequential):
    """``avg_pool_3x3`` out of node 0 of a cell that may change width: at different widths preceded by the
    leading block of a ReLU-Conv1x1-BN (``0``)."""

    def __init__(self, c: int) -> None:
        super().__init__(ElasticReLUConvBN(c, 1), nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))

    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:  # type: ignore[override]
        return self[1](x if x.shape[1] == c_out else self[0](x, c_out))


class _Fixed(nn.Module):
    """A parameter-free op (identity, pooling) that ignores the width."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        return self.op(x)


class ElasticCell(nn.Module):
    """The fixed cell at the largest width; ``forward(x, c_out)`` runs the member's prefix."""

    def __init__(self, cell: Sequence[str], c: int, projecting: bool) -> None:
        super().__init__()
        self.arch = tuple(cell)
        edges: List[nn.Module] = []
        for op, (_, src) in zip(self.arch, EDGES):
            if op == "none":
                edges.append(Zero())
            elif op in ("nor_conv_1x1", "nor_conv_3x3"):
                edges.append(ElasticReLUConvBN(c, 1 if op == "nor_conv_1x1" else 3))
            elif projecting and src == 0:
                edges.append(ElasticSkip(c) if op == "skip_connect" else ElasticPool(c))
            else:
                edges.append(_Fixed(nn.Identity() if op == "skip_connect" else
                                    nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)))
        self.edges = nn.ModuleList(edges)

    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H, W)
        nodes = [x]
        for node in (1, 2, 3):
            out = None
            for k, (to, src) in enumerate(EDGES):
                if to != node or self.arch[k] == "none":
                    continue
                y = self.edges[k](nodes[src], c_out)
                out = y if out is None else out + y
            nodes.append(x.new_zeros(x.shape[0], c_out, x.shape[2], x.shape[3]) if out is None else out)
        return nodes[3]


class ElasticResidualBlock(nn.Module):
    """The NAS-Bench-201 residual block at the largest width (``conv_a``, ``conv_b``, ``shortcut``)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_a = ElasticReLUConvBN(c, 3, stride=2)
        self.conv_b = ElasticReLUConvBN(c, 3)
        self.shortcut = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                      nn.Conv2d(c, c, 1, 1, 0, bias=False))

    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/2, W/2)
        return _conv(self.shortcut[1], self.shortcut[0](x), c_out) + self.conv_b(self.conv_a(x, c_out), c_out)


Entry = Any  # a parameter name or a ParamSlice


class NB201SizeSupernet(Supernet):
    """The size space's supernet: the largest member's weights; member ``arch`` uses the leading block of
    each tensor. Its state names are those of :class:`NB201SizeNetwork` (``stem.*``, ``cells.{j}.*``,
    ``lastact.0.*``, ``classifier.*``), plus the projections (``cells.{j}.edges.{k}.*``) that only members
    whose cell ``j`` changes width use."""

    def __init__(self, space: NB201Size) -> None:
        super().__init__()
        self.space = space
        W = space.candidates[-1]
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, W, 3, 1, 1, bias=False), ElasticBatchNorm2d(W))
        self.cells = nn.ModuleList([
            ElasticResidualBlock(W) if red else ElasticCell(space.cell, W, j in space.projecting_layers)
            for j, red in enumerate(space.reductions)])
        self.lastact = nn.Sequential(ElasticBatchNorm2d(W), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(W, space.num_classes)
        self._shape_cache: Dict[Arch, Dict[str, torch.Size]] = {}

    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:  # (B, in_ch, H, W) -> (B, classes)
        a = self.space.validate(arch)
        c = self.space.in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x has shape {shape}; expected (batch, {c}, height, width)")
        x = self.stem[1](_conv(self.stem[0], x, a[0]))
        for layer, w in zip(self.cells, a):
            x = layer(x, w)
        x = self.global_pooling(self.lastact(x)).flatten(1)
        return F.linear(x, self.classifier.weight[:, :x.shape[1]], self.classifier.bias)

    def _shapes(self, arch: Arch) -> Dict[str, torch.Size]:
        """State name -> shape of the member's standalone network (built on the meta device, cached)."""
        shapes = self._shape_cache.get(arch)
        if shapes is None:
            with torch.device("meta"):
                net = self.space.build(arch)
            shapes = {k: v.shape for k, v in net.state_dict().items()}
            if len(self._shape_cache) >= 4096:
                self._shape_cache.clear()
            self._shape_cache[arch] = shapes
        return shapes

    @staticmethod
    def _entry(name: str, full: torch.Size, shape: torch.Size) -> Entry:
        if tuple(full) == tuple(shape):
            return name
        return ParamSlice(name, tuple((0, n) for n in shape))

    def path_parameters(self, arch: Any) -> List[Entry]:
        """The member's tensors in ``named_parameters()`` order: the leading block of each weight it has."""
        shapes = self._shapes(self.space.validate(arch))
        return [self._entry(n, p.shape, shapes[n]) for n, p in self.named_parameters() if n in shapes]

    def extract(self, arch: Any, *, return_map: bool = False):
        """The standalone :class:`NB201SizeNetwork` of ``arch`` with the leading blocks of the supernet's
        weights and BatchNorm statistics copied in; same device, dtype and train/eval mode. With
        ``return_map=True``: ``(net, name_map)``, each parameter of ``net`` -> its supernet slice (or name)."""
        a = self.space.validate(arch)
        ref = self.classifier.weight
        net = self.space.build(a).to(device=ref.device, dtype=ref.dtype)
        source = self.state_dict()
        net.load_state_dict({k: source[k][tuple(slice(0, n) for n in v.shape)].clone()
                             for k, v in net.state_dict().items()})
        net.train(self.training)
        if not return_map:
            return net
        full = dict(self.named_parameters())
        return net, {k: self._entry(k, full[k].shape, p.shape) for k, p in net.named_parameters()}

    def searched_prefixes(self) -> Tuple[str, ...]:
        """``cells.``: the searched layers (the stem and classifier follow their widths)."""
        return ("cells.",)

    def export_source(self, arch: Any, class_name: str = "Network") -> str:
        """Plain PyTorch source (imports only torch) of ``arch``'s network; its ``state_dict`` keys are those
        of ``extract(arch)``."""
        a = self.space.validate(arch)
        taken = {getattr(obj, "__name__", "") for obj in _EXPORTED} | {"OPS", "EDGES", "CELL", "WIDTHS", "torch",
                                                                          "nn"}
        check_class_name(class_name, taken)
        s = self.space
        parts = [
            f'"""NATS-Bench size network {s.format(a)} (cell {s.cell_text})\n\n'
            f'Generated by fastnas from {s!r}. Needs only torch.\n"""\n',
            "from __future__ import annotations\n",
            "import torch",
            "from torch import nn\n",
            f"OPS = {OPS!r}",
            f"EDGES = {EDGES!r}",
            f"CELL = {s.cell!r}",
            f"WIDTHS = {a!r}\n",
        ]
        parts += ["\n" + inspect.getsource(obj) for obj in _EXPORTED]
        parts.append(
            f"\nclass {class_name}(NB201SizeNetwork):\n"
            f'    """NATS-Bench size network {s.format(a)}"""\n\n'
            f"    def __init__(self):\n"
            f"        super().__init__(CELL, WIDTHS, num_classes={s.num_classes}, in_channels={s.in_channels})\n")
        return "\n".join(parts)
