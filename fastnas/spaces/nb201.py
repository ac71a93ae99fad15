"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020): its architectures, supernet and networks.

An architecture is a tuple of 6 op names, one per cell edge, in the order of the official string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: edges (1,0), (2,0), (2,1), (3,0), (3,1), (3,2) as
``(to_node, from_node)``. The same cell is used in all ``3 * N`` cells of the network.

Example::

    space = NB201()                      # C=16, N=5, CIFAR-10 setting
    arch = space.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
                       "+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    space.params_benchmark(arch), space.flops(arch)  # as published by NAS-Bench-201
    net = space.supernet()
    logits = net(x, arch)                # (B, 3, 32, 32) -> (B, 10)

Fidelity to the reference code (megvii-model/RLNAS, ``nas_bench_201/exps/algos/``), and the option that
keeps the other behaviour:

* ``operators="rlnas"`` (default): :meth:`NB201.mutate` sets each edge, with probability ``prob``, to an
  op drawn uniformly from the four non-``none`` ops (the old op may be drawn again), as
  ``rlnas_evolution_search_with_angle.py`` ``EvolutionTrainer.get_mutation`` does
  (``np.random.randint(1, op_num)``): mutation never introduces ``none`` (random candidates and
  crossover still carry it). ``operators="different"`` is fastnas's earlier mutation: the edge becomes a
  different op drawn uniformly from the other four, ``none`` included. Crossover (each edge from either
  parent, ``get_crossover``) is the same under both.
* The supernet's cell BatchNorms are non-affine with running statistics (``'affine': False`` in the
  reference's model config); ``supernet(affine_cells=True)`` makes them affine.
* ``params_benchmark``/``flops`` count ``build(arch)`` (affine cell BNs) at the space's own ``C``, ``N``,
  ``num_classes``, ``in_channels`` (and ``resolution``); the defaults reproduce NAS-Bench-201's published
  numbers. ``params`` counts the network a search gives, ``supernet().extract(arch)`` (non-affine cell
  BNs; what ``fastnas export`` writes).
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import random
import re
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from fastnas._hints import did_you_mean
from fastnas.spaces.base import (
    CellGraph, CellwiseArch, Presets, Space,
    Supernet, check_class_name, register_space, size_keyword,
)
from fastnas.spaces.nb201_ops import (
    EDGES, OPS, Cell, NB201Network, ReLUConvBN, ResidualBlock, SuperCell, Zero, make_op,
)

__all__ = ["NB201", "NB201Supernet", "OPS", "EDGES", "FLOPS_CONVENTIONS", "ANGLE_PATHS", "OPERATORS",
           "TRAIN_RECIPE"]

Arch = Tuple[str, str, str, str, str, str]

_OP_SET = frozenset(OPS)
#: ``NB201(operators=...)``: ``"rlnas"`` (mutation never picks ``none``) or ``"different"`` (earlier fastnas).
OPERATORS = ("rlnas", "different")
_MUTATION_OPS = tuple(op for op in OPS if op != "none")  # RLNAS: randint(1, op_num) over OPS' order
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
_EDGE_NAMES = ", ".join(f"{to}<-{src}" for to, src in EDGES)

#: The NAS-Bench-201 supernet recipe of GeNAS, whose NB201 experiments use RLNAS's code
#: (``configs/nas-benchmark/algos/SPOS.config`` of megvii-model/RLNAS): SGD, lr 0.025 cosine to 0.001 per
#: epoch, momentum 0.9 with Nesterov, weight decay 5e-4, no gradient clipping (batch 64, 250 epochs; those
#: two are left to the run).
TRAIN_RECIPE: Dict[str, Any] = {"lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "nesterov": True,
                                "weight_decay": 5e-4, "grad_clip": 0.0}

#: ``"nb201"``: what the NAS-Bench-201 API reports (its counter sums only Conv2d and Linear modules:
#: conv multiply-adds, linear multiply-adds plus bias). ``"full"``: additionally 2 per BatchNorm output
#: element, 1 per ReLU input element, ``k*k`` per average-pooling output element and 1 per global-
#: average-pool input element.
FLOPS_CONVENTIONS = ("nb201", "full")


def _unknown_op_message(op: Any) -> str:
    close = difflib.get_close_matches(str(op), OPS, n=2) if isinstance(op, str) else []
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"unknown op {op!r}; expected one of {list(OPS)}{hint}"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return value


@register_space("nb201")
class NB201(Space):
    """NAS-Bench-201: 5 ops on the 6 edges of a 4-node cell, 5**6 = 15,625 architectures.

    Args:
        C: channels of the first stage (stages have C, 2C, 4C channels); default 16.
        N: cells per stage; default 5.
        num_classes: classifier outputs (CIFAR-10: 10, CIFAR-100: 100, ImageNet16-120: 120); default 10.
        in_channels: input image channels; default 3.
        resolution: input height = width, used by :meth:`flops` (CIFAR: 32, ImageNet16-120: 16); a
            multiple of 4 (two stride-2 reductions); default 32.
        channels, cells: the generic names of ``C`` and ``N`` (see :func:`~fastnas.spaces.create_space`).
        operators: ``"rlnas"`` (mutation draws among the non-``none`` ops, as RLNAS) or ``"different"``
            (a different op, ``none`` included); see the module docstring.

    ``None`` keeps a default.
    """

    name = "nb201"
    ops = OPS
    edges = EDGES

    def __init__(self, C: Optional[int] = None, N: Optional[int] = None, num_classes: Optional[int] = None,
                 in_channels: Optional[int] = None, resolution: Optional[int] = None, operators: str = "rlnas", *,
                 channels: Optional[int] = None, cells: Optional[int] = None):
        self.C = _positive_int("C", size_keyword("C", C, "channels", channels, 16))
        self.N = _positive_int("N", size_keyword("N", N, "cells", cells, 5))
        self.num_classes = _positive_int("num_classes", 10 if num_classes is None else num_classes)
        self.in_channels = _positive_int("in_channels", 3 if in_channels is None else in_channels)
        self.resolution = _positive_int("resolution", 32 if resolution is None else resolution)
        if self.resolution % 4:
            raise ValueError(f"resolution={resolution!r}: expected a multiple of 4 (two stride-2 stages)")
        if operators not in OPERATORS:
            raise ValueError(f"operators={operators!r}: expected one of {list(OPERATORS)}"
                             f"{did_you_mean(operators, OPERATORS, n=1)}")
        self.operators = operators
        self._costs = {conv: self._cost_model(conv) for conv in FLOPS_CONVENTIONS}

    def config(self) -> Dict[str, Any]:
        return {"C": self.C, "N": self.N, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "resolution": self.resolution, "operators": self.operators}

    def __repr__(self) -> str:
        return "NB201(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    # ---- architectures

    def validate(self, arch: Any) -> Arch:
        """Returns ``arch`` as a tuple if it is 6 known op names (a list is accepted), else ``ValueError``."""
        if isinstance(arch, CellwiseArch):
            raise ValueError(f"arch={arch!r} is a CellwiseArch (one architecture per cell); this takes one "
                             "architecture of 6 op names (only the supernet's forward and path_parameters take "
                             "a CellwiseArch)")
        if isinstance(arch, str):
            raise ValueError(f"arch={arch!r} is a string; expected a tuple of 6 op names "
                             f"(use NB201.parse() for the '|op~0|+...' text form)")
        if not isinstance(arch, (tuple, list)) or len(arch) != len(EDGES):
            raise ValueError(f"arch={arch!r}: expected a tuple of {len(EDGES)} op names from {list(OPS)}, "
                             f"one per edge ({_EDGE_NAMES})")
        for k, op in enumerate(arch):
            if not isinstance(op, str) or op not in _OP_SET:
                to, src = EDGES[k]
                raise ValueError(f"arch={arch!r}: edge {to}<-{src}: {_unknown_op_message(op)}")
        return tuple(arch)

    def format(self, arch: Arch) -> str:
        """The official NAS-Bench-201 string, e.g. ``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|``."""
        a = self.validate(arch)
        return f"|{a[0]}~0|+|{a[1]}~0|{a[2]}~1|+|{a[3]}~0|{a[4]}~1|{a[5]}~2|"

    def parse(self, text: str) -> Arch:
        """Architecture from the official string (surrounding whitespace is ignored)."""
        if not isinstance(text, str):
            raise ValueError(f"text={text!r}: expected a string like {_EXAMPLE!r}")
        groups = text.strip().split("+")
        if len(groups) != 3:
            raise ValueError(f"text={text!r}: expected 3 nodes separated by '+', got {len(groups)}; "
                             f"expected the form {_EXAMPLE!r}")
        ops: List[str] = []
        for node, group in enumerate(groups, start=1):
            if len(group) < 2 or group[0] != "|" or group[-1] != "|":
                raise ValueError(f"text={text!r}: node {node} part {group!r} is not enclosed in '|'; "
                                 f"expected the form {_EXAMPLE!r}")
            items = group[1:-1].split("|")
            if len(items) != node:
                raise ValueError(f"text={text!r}: node {node} part {group!r} has {len(items)} edges; "
                                 f"expected {node} (one from each earlier node)")
            for src, item in enumerate(items):
                op, sep, index = item.rpartition("~")
                if not sep:
                    raise ValueError(f"text={text!r}: edge {item!r} of node {node}: expected 'op~{src}'")
                if index != str(src):
                    raise ValueError(f"text={text!r}: edge {item!r} of node {node}: expected input index "
                                     f"{src} (edges are listed as ~0, ~1, ... in order)")
                if op not in _OP_SET:
                    raise ValueError(f"text={text!r}: edge {item!r} of node {node}: {_unknown_op_message(op)}")
                ops.append(op)
        return tuple(ops)  # type: ignore[return-value]

    def enumerate(self) -> Iterator[Arch]:
        """All 15,625 architectures, the last edge varying fastest, ops in :data:`OPS` order."""
        return itertools.product(OPS, repeat=len(EDGES))  # type: ignore[return-value]

    def size(self) -> int:
        return len(OPS) ** len(EDGES)

    def sample(self, rng: random.Random) -> Arch:
        """Uniform over all 15,625 architectures (``none`` included, no repair)."""
        return tuple(rng.choice(OPS) for _ in EDGES)  # type: ignore[return-value]

    def sample_connected(self, rng: random.Random) -> Arch:
        """A cell drawn as RLNAS's supernet trainer draws one: node by node, the ops of the node's incoming
        edges uniformly from all five, redrawn together until at least one is not ``none``.

        This is the ``forward_urs`` sampling of the NAS-Bench-201 search cell in the RLNAS code
        (``search_cells.py``): every node, the output included, gets a non-zero input, so the cell
        output is always connected to its input. Node 1 has one edge (uniform over the four non-``none``
        ops), node 2 two (uniform over the 24 pairs that are not both ``none``), node 3 three (124 triples).
        """
        ops: List[str] = []
        for node in (1, 2, 3):
            fan_in = sum(1 for to, _ in EDGES if to == node)  # EDGES lists the edges node by node
            while True:
                drawn = [rng.choice(OPS) for _ in range(fan_in)]
                if any(op != "none" for op in drawn):
                    break
            ops.extend(drawn)
        return tuple(ops)  # type: ignore[return-value]

    def sample_cellwise(self, rng: random.Random) -> CellwiseArch:
        """One :meth:`sample_connected` cell per searched cell (``3 * N`` of them, in network order): the
        per-cell sampling of RLNAS's supernet trainer, where every cell draws its own ops in each
        forward pass."""
        return CellwiseArch(self.sample_connected(rng) for _ in range(3 * self.N))

    def fair_paths(self, rng: random.Random) -> Tuple[Arch, ...]:
        """FairNAS's strict fairness: five architectures; edge ``k`` of architecture ``j`` is op ``j`` of a
        random permutation of the five ops drawn for edge ``k``, so every op of every edge is in exactly
        one of them. ``none`` is one of the five (it has no weights; the path holding it trains the
        other edges with that edge cut)."""
        perms = [rng.sample(OPS, len(OPS)) for _ in EDGES]  # (edges, K)
        return tuple(tuple(perm[j] for perm in perms) for j in range(len(OPS)))  # type: ignore[return-value]

    def mutate(self, arch: Arch, prob: float, rng: random.Random) -> Arch:
        """Each edge, with probability ``prob``, re-drawn: ``operators="rlnas"`` uniformly among the four
        non-``none`` ops (possibly the same op), ``"different"`` uniformly among the four other ops."""
        a = self.validate(arch)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob={prob!r}: expected a probability in [0, 1]")
        rlnas = self.operators == "rlnas"
        out = []
        for op in a:
            if rng.random() < prob:
                op = rng.choice(_MUTATION_OPS) if rlnas else rng.choice([o for o in OPS if o != op])
            out.append(op)
        return tuple(out)  # type: ignore[return-value]

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Each edge from ``a`` or ``b`` with probability 1/2."""
        a, b = self.validate(a), self.validate(b)
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))  # type: ignore[return-value]

    def canonical(self, arch: Arch) -> Arch:
        """The representative of ``arch``'s class of equivalent cells.

        Two cells are equivalent when they compute the same expression of the cell input, where:
        a ``none`` edge contributes nothing; an op whose input node is zero contributes nothing (exact
        for ``skip_connect`` and ``avg_pool_3x3``; for ReLU-Conv-BN this ignores the constant the
        BatchNorm shift adds to a zero input); ``skip_connect`` passes its input node's terms through
        unchanged; a node is the unordered sum (multiset) of its terms. This identifies cells that differ
        only in edges that do not reach the output or start at a zero node, in the numbering of nodes
        1 and 2, and in skip chains (``x -skip-> 1 -conv-> 3`` equals ``x -conv-> 3``). It does not use
        the linearity of average pooling. The cell output's expression is all that matters; the
        representative is the class member with the fewest non-``none`` edges (ties: first in
        :meth:`enumerate` order), so dead edges become ``none``.
        """
        a = self.validate(arch)
        return _canonical_table()[a]

    # ---- presets and plots

    def presets(self, data: Optional[str] = None) -> Presets:
        """GeNAS's NAS-Bench-201 sigmas (2e-3, 1e-2, 2e-2) and supernet recipe (:data:`TRAIN_RECIPE`), for
        every dataset."""
        return Presets(sigmas=(2e-3, 1e-2, 2e-2), train=TRAIN_RECIPE)

    def cell_graph(self, arch: Arch) -> List[CellGraph]:
        """The one cell: nodes ``in, 1, 2, out``, an edge per non-``none`` op; titled by the text form."""
        a = self.validate(arch)
        labels = ("in", "1", "2", "out")
        edges = [(labels[src], labels[to], op) for (to, src), op in zip(EDGES, a) if op != "none"]
        return [CellGraph(self.format(a), list(labels), edges)]

    # ---- cost

    def params(self, arch: Arch, *, affine_cells: bool = False) -> int:
        """Parameters of the network of ``arch`` with ``affine_cells`` BatchNorms in its cells, analytically.

        The default counts the network the search scored and ``fastnas export`` writes,
        ``supernet().extract(arch)`` (non-affine cell BNs, as the supernet). ``affine_cells=True`` counts
        ``build(arch)``, NAS-Bench-201's networks: :meth:`params_benchmark`. Every op of the cell counts,
        also on edges that cannot reach the output (the network holds them); a search scores the
        :meth:`canonical` cell, whose dead edges are ``none``.
        """
        a = self.validate(arch)
        cost = self._costs["nb201"]
        fixed, per_op = cost["params"], cost["op_params_affine" if affine_cells else "op_params"]
        return fixed + sum(per_op[op] for op in a)

    def params_benchmark(self, arch: Arch) -> int:
        """NAS-Bench-201's count: ``build(arch)``, affine BNs in the cells (its published ``params`` is this
        divided by 1e6 at C=16, N=5)."""
        return self.params(arch, affine_cells=True)

    def flops(self, arch: Arch, *, convention: str = "nb201") -> float:
        """FLOPs (millions, per image) of ``build(arch)`` at ``resolution``; see :data:`FLOPS_CONVENTIONS`.

        The default reproduces NAS-Bench-201's published numbers, e.g. 220.11969 for all
        ``nor_conv_3x3`` and 7.78305 for any cell without convolutions (C=16, N=5, CIFAR-10). Every op of
        the cell counts, also on edges that cannot reach the output.
        """
        a = self.validate(arch)
        if convention not in self._costs:
            raise ValueError(f"convention={convention!r}: expected one of {list(FLOPS_CONVENTIONS)}")
        cost = self._costs[convention]
        return (cost["flops"] + sum(cost["op_flops"][op] for op in a)) / 1e6

    def _cost_model(self, convention: str) -> Dict[str, Any]:
        """Fixed parts and per-edge op totals (summed over all 3N cells) of params and FLOPs."""
        full = convention == "full"

        def relu_conv_bn(c_in: int, c_out: int, k: int, h_in: int, h_out: int) -> int:
            f = k * k * c_in * c_out * h_out * h_out
            return f + (c_in * h_in * h_in + 2 * c_out * h_out * h_out if full else 0)

        C, N, R, nc = self.C, self.N, self.resolution, self.num_classes
        params = self.in_channels * C * 9 + 2 * C
        flops = self.in_channels * C * 9 * R * R + (2 * C * R * R if full else 0)
        op_params = dict.fromkeys(OPS, 0)
        op_params_affine = dict.fromkeys(OPS, 0)
        op_flops = dict.fromkeys(OPS, 0)
        c, h = C, R
        for stage in range(3):
            if stage > 0:  # residual block c -> 2c, h -> h/2
                c2, h2 = 2 * c, h // 2
                params += 9 * c * c2 + 2 * c2 + 9 * c2 * c2 + 2 * c2 + c * c2
                flops += relu_conv_bn(c, c2, 3, h, h2) + relu_conv_bn(c2, c2, 3, h2, h2)
                flops += c * c2 * h2 * h2 + (4 * c * h2 * h2 if full else 0)  # shortcut conv, pool
                c, h = c2, h2
            for op, k in (("nor_conv_1x1", 1), ("nor_conv_3x3", 3)):
                op_params[op] += N * k * k * c * c
                op_params_affine[op] += N * (k * k * c * c + 2 * c)
                op_flops[op] += N * relu_conv_bn(c, c, k, h, h)
            op_flops["avg_pool_3x3"] += N * (9 * c * h * h if full else 0)
        params += 2 * c + c * nc + nc  # final BN, classifier
        flops += c * nc + nc + (3 * c * h * h + c * h * h if full else 0)  # linear; BN, ReLU, GAP
        return {"params": params, "op_params": op_params, "op_params_affine": op_params_affine,
                "flops": flops, "op_flops": op_flops}

    # ---- networks

    def build(self, arch: Arch, *, affine_cells: bool = True) -> nn.Module:
        """The standalone network of ``arch`` with fresh weights (affine BN everywhere by default, as in
        NAS-Bench-201)."""
        a = self.validate(arch)
        return NB201Network(a, self.C, self.N, self.num_classes, self.in_channels, affine_cells=affine_cells)

    def supernet(self, *, affine_cells: bool = False) -> "NB201Supernet":
        """The weight-sharing supernet (non-affine cell BatchNorms by default, as in the RLNAS code)."""
        return NB201Supernet(self, affine_cells=affine_cells)


_CANONICAL: Optional[Dict[Arch, Arch]] = None


def _expression(arch: Arch) -> tuple:
    """The cell output as a sorted tuple of terms; a term is ``("x",)`` or ``(op, node_expression)``."""
    nodes: List[tuple] = [(("x",),)]
    for node in (1, 2, 3):
        terms: List[tuple] = []
        for k, (to, src) in enumerate(EDGES):
            op = arch[k]
            if to != node or op == "none" or not nodes[src]:
                continue
            if op == "skip_connect":
                terms.extend(nodes[src])
            else:
                terms.append((op, nodes[src]))
        nodes.append(tuple(sorted(terms)))
    return nodes[3]


def _canonical_table() -> Dict[Arch, Arch]:
    global _CANONICAL
    if _CANONICAL is None:
        best: Dict[tuple, Tuple[int, int, Arch]] = {}
        exprs = []
        for index, arch in enumerate(itertools.product(OPS, repeat=len(EDGES))):
            expr = _expression(arch)
            exprs.append((arch, expr))
            key = (sum(op != "none" for op in arch), index, arch)
            if expr not in best or key < best[expr]:
                best[expr] = key
        _CANONICAL = {arch: best[expr][2] for arch, expr in exprs}
    return _CANONICAL


_EXPORTED = (ReLUConvBN, Zero, make_op, Cell, ResidualBlock, NB201Network)
_EDGE_KEY = re.compile(r"^cells\.(\d+)\.edges\.(\d+)\.")

#: The input-to-output paths through the 4-node cell (node indices) of the RLNAS angle, as in its code.
ANGLE_PATHS = ((0, 3), (0, 2, 3), (0, 1, 2, 3), (0, 1, 3))


class NB201Supernet(Supernet):
    """NAS-Bench-201 supernet: every candidate op's weights on every edge of every cell.

    ``forward(x, arch)`` runs only the ops of ``arch``: ``none`` edges are skipped (zero contribution),
    a node fed only by ``none`` edges is a zero tensor. Cell BatchNorms are non-affine with running
    statistics (as in the RLNAS / NAS-Bench-201 search code) unless ``affine_cells=True``; stem,
    residual-block and final BatchNorms are affine.

    Parameter names: ``stem.*``, ``cells.{i}.*`` (``cells.{i}.edges.{k}.{op}.1.weight`` is the conv of op
    ``op`` on edge ``k`` of cell ``i``; residual blocks are ``cells.{N}`` and ``cells.{2N+1}``),
    ``lastact.0.*``, ``classifier.*``.
    """

    def __init__(self, space: NB201, affine_cells: bool = False):
        super().__init__()
        self.space = space
        self.affine_cells = bool(affine_cells)
        C, N = space.C, space.N
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, C, 3, 1, 1, bias=False), nn.BatchNorm2d(C))
        cells: List[nn.Module] = []
        c = C
        for stage in range(3):
            if stage > 0:
                cells.append(ResidualBlock(c, 2 * c))
                c = 2 * c
            cells.extend(SuperCell(c, self.affine_cells) for _ in range(N))
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, space.num_classes)
        # (name, position among the searched cells, edge index, op name); None, None, None when every
        # path uses the parameter
        position = {i: p for p, i in enumerate(self._search_cells())}
        self._num_searched = len(position)
        self._slots: List[Tuple[str, Optional[int], Optional[int], Optional[str]]] = []
        for name, _ in self.named_parameters():
            m = _EDGE_KEY.match(name)
            if m and int(m.group(1)) in position:
                self._slots.append((name, position[int(m.group(1))], int(m.group(2)),
                                    name[m.end():].split(".", 1)[0]))
            else:
                self._slots.append((name, None, None, None))

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.space.in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x has shape {shape}; expected (batch, {c}, height, width)")

    def _cell_archs(self, arch: Any) -> List[Arch]:
        """The architecture of each searched cell, in network order: ``arch`` in every cell, or the cells'
        own architectures of a :class:`~fastnas.spaces.base.CellwiseArch`."""
        n = self._num_searched
        if isinstance(arch, CellwiseArch):
            if len(arch) != n:
                raise ValueError(f"arch: a CellwiseArch of {len(arch)} cell architectures; this supernet has "
                                 f"{n} searched cells (3 * N, N={self.space.N})")
            return [self.space.validate(a) for a in arch]
        return [self.space.validate(arch)] * n

    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:  # (B, in_ch, H, W) -> (B, classes)
        """Runs the path of ``arch`` -- one architecture for every cell, or a
        :class:`~fastnas.spaces.base.CellwiseArch` giving each searched cell its own."""
        archs = iter(self._cell_archs(arch))
        self._check_input(x)
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, next(archs)) if isinstance(cell, SuperCell) else cell(x)
        x = self.global_pooling(self.lastact(x)).flatten(1)
        return self.classifier(x)

    def path_parameters(self, arch: Any) -> List[str]:
        """Names of the parameters the path of ``arch`` uses: stem, residual blocks, final BN,
        classifier and, on every edge, the parameters of its op (none for ``none``, ``skip_connect``,
        ``avg_pool_3x3``). Ops whose input node is zero are included: the forward pass runs them.
        ``arch`` may be a :class:`~fastnas.spaces.base.CellwiseArch` (each cell's own ops)."""
        archs = self._cell_archs(arch)
        return [name for name, cell, k, op in self._slots if cell is None or archs[cell][k] == op]

    def _supernet_key(self, key: str, arch: Arch) -> str:
        m = _EDGE_KEY.match(key)
        if m and isinstance(self.cells[int(m.group(1))], SuperCell):
            return f"{key[:m.end()]}{arch[int(m.group(2))]}.{key[m.end():]}"
        return key

    def extract(self, arch: Arch, *, return_map: bool = False):
        """The standalone :class:`NB201Network` of ``arch`` (``affine_cells`` as this supernet) with the
        path's weights and BatchNorm statistics copied; same device, dtype and train/eval mode.

        With ``return_map=True``: ``(net, name_map)``; ``name_map`` maps each parameter of ``net`` to the
        supernet's: ``cells.{i}.edges.{k}.rest`` -> ``cells.{i}.edges.{k}.{op}.rest`` in search cells, the
        same name elsewhere.
        """
        a = self.space.validate(arch)
        s = self.space
        net = NB201Network(a, s.C, s.N, s.num_classes, s.in_channels, affine_cells=self.affine_cells)
        ref = self.classifier.weight
        net.to(device=ref.device, dtype=ref.dtype)
        source = self.state_dict()
        net.load_state_dict({key: source[self._supernet_key(key, a)] for key in net.state_dict()})
        net.train(self.training)
        if not return_map:
            return net
        return net, {name: self._supernet_key(name, a) for name, _ in net.named_parameters()}

    def _search_cells(self) -> List[int]:
        return [i for i, c in enumerate(self.cells) if isinstance(c, SuperCell)]

    def searched_prefixes(self) -> Tuple[str, ...]:
        """``cells.{i}.`` of the search cells (the residual blocks are not searched)."""
        return tuple(f"cells.{i}." for i in self._search_cells())

    def batched_forward(self):
        """The mixed-op forward :class:`~fastnas.spaces.nb201_batched.BatchedNB201` over this supernet."""
        from fastnas.spaces.nb201_batched import BatchedNB201

        return BatchedNB201(self)

    def angle_pieces(self, arch: Arch) -> Optional[Counter]:
        """The RLNAS angle vector of ``arch`` (see its code, REFERENCES.md).

        For each input-to-output path of :data:`ANGLE_PATHS` in every search cell, the weights along the
        path: a convolution op its conv weight, ``avg_pool_3x3`` a constant ``(C, 3, 3)`` tensor of 1/9,
        ``skip_connect`` nothing; a ``none`` edge drops the path (in every cell). Fixed parts: every
        parameter outside the search cells (stem, residual blocks, final BatchNorm, classifier). An edge on
        several paths counts once per path. ``None`` when every path is dropped.
        """
        a = self.space.validate(arch)
        edge_of = {(to, src): k for k, (to, src) in enumerate(EDGES)}
        cell_ids = self._search_cells()
        pieces: Counter = Counter()
        kept = 0
        for path in ANGLE_PATHS:
            edges = [edge_of[(path[t], path[t - 1])] for t in range(1, len(path))]
            if any(a[k] == "none" for k in edges):
                continue
            kept += 1
            for i in cell_ids:
                for k in edges:
                    op = a[k]
                    if op in ("nor_conv_1x1", "nor_conv_3x3"):
                        pieces[("param", f"cells.{i}.edges.{k}.{op}.1.weight")] += 1
                    elif op == "avg_pool_3x3":
                        c = self.cells[i].edges[k]["nor_conv_3x3"][1].weight.shape[0]
                        pieces[("const", "pool", c)] += 1
        if kept == 0:
            return None
        cell_prefixes = self.searched_prefixes()
        for name, _ in self.named_parameters():
            if not name.startswith(cell_prefixes):
                pieces[("param", name)] += 1
        return pieces

    def export_source(self, arch: Arch, class_name: str = "Network") -> str:
        """Plain PyTorch source (imports only torch) defining ``class_name`` with ``arch`` baked in; its
        ``state_dict`` keys are those of ``extract(arch)``, so ``load_state_dict`` of that works."""
        a = self.space.validate(arch)
        taken = {obj.__name__ for obj in _EXPORTED} | {"OPS", "EDGES", "ARCH", "torch", "nn"}
        check_class_name(class_name, taken)
        s = self.space
        parts = [
            f'"""NAS-Bench-201 network {s.format(a)}\n\n'
            f"Generated by fastnas from {s!r}, affine_cells={self.affine_cells}. Needs only torch.\n"
            f'"""\n',
            "from __future__ import annotations\n",
            "import torch",
            "from torch import nn\n",
            f"OPS = {OPS!r}",
            f"EDGES = {EDGES!r}",
            f"ARCH = {a!r}\n",
        ]
        parts += ["\n" + inspect.getsource(obj) for obj in _EXPORTED]
        parts.append(
            f"\nclass {class_name}(NB201Network):\n"
            f'    """NAS-Bench-201 network {s.format(a)}"""\n\n'
            f"    def __init__(self):\n"
            f"        super().__init__(ARCH, C={s.C}, N={s.N}, num_classes={s.num_classes}, "
            f"in_channels={s.in_channels}, affine_cells={self.affine_cells})\n"
        )
        return "\n".join(parts)
