"""The DARTS search space (Liu et al., ICLR 2019) with GeNAS's single-path supernet.

An architecture is a :class:`Genotype`: for the normal and the reduction cell, two ``(op, input)``
edges per intermediate node. Inputs 0 and 1 are the two cell inputs, input ``k + 2`` is intermediate node
``k``; node ``k`` (0-based) may take inputs ``0 .. k + 1``. As in GeNAS every node takes exactly two
non-``none`` edges from two distinct predecessors; the output concatenates every intermediate node.

Canonical form: the two edges of a node are sorted by input index, so equal genotypes compare equal.
The text form is DARTS's ``repr`` of a genotype::

    Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
             reduce=[...], reduce_concat=[2, 3, 4, 5])

(``range(2, 6)`` is accepted for the concat lists, as printed by DARTS's search code).

The supernet (:class:`DARTSSupernet`) follows GeNAS's (``train_supernet/super_model.py``, copied from
RLNAS): every candidate op on every edge, pooling ops followed by a BN (``MixedOp``), one normal genotype
shared by all normal cells and one reduction genotype by the reduction cells. ``build`` returns the DARTS
evaluation network (affine BN, no BN after pooling, optional auxiliary head and drop-path) at the space's
own ``C`` and ``layers``; ``flops`` counts that network. ``params`` counts the network the search gives
(``supernet().extract(arch)``, what ``fastnas export`` writes: a BN after pooling, the supernet's
``affine``); ``params(arch, network="evaluation")`` counts ``build(arch)`` and ``params_benchmark(arch)``
DARTS's published size (36 channels, 20 cells).

Fidelity to the reference code (clovaai/GeNAS), and the options that keep the other behaviour:

* ``affine=True`` (default): the supernet's cell ops, the BNs after pooling and the cells' preprocessing
  have affine BNs, as in GeNAS's ``train_supernet/super_model.py`` and ``evolution_search/super_model.py``
  (``MixedOp``: ``OPS[primitive](C, stride, True)`` and ``BatchNorm2d(C, affine=True)`` after pooling;
  ``Cell``: ``preprocess0/1`` with ``affine=True``). So "perturb everything" and the angle see those
  parameters. ``affine=False`` is DARTS's own search network (``model_search.py``: ``affine=False``
  everywhere in the cells), fastnas's behaviour before this option.
* ``operators="genas"`` (default): :meth:`DARTS.mutate` re-draws only the normal cell, as GeNAS's
  ``evolution_search/search.py`` ``EvolutionTrainer.get_mutation`` does (it mutates the first
  ``config.edges`` genes): each of the cell's edges (``(k + 2)`` per node, ``none`` where the genotype has
  none) becomes, with probability ``prob``, a uniform draw from all 8 primitives (``none`` included, the
  old op possible); then every node is repaired to two non-``none`` inputs as ``utils.check_cand`` does
  (surplus inputs chosen uniformly become ``none``; missing ones are chosen uniformly among the ``none``
  edges and get a uniform non-``none`` op). The reduction cell is kept. :meth:`DARTS.crossover` takes
  each edge of both cells from either parent (``get_crossover``), then repairs both cells the same way.
  ``operators="pairs"`` is fastnas's earlier behaviour: every ``(op, input)`` pair of both cells re-drawn
  with probability ``prob``, crossover by whole nodes.
* Not matched: :meth:`DARTS.sample` draws two distinct inputs and uniform non-``none`` ops per node, while
  GeNAS's ``random_can`` draws every edge's op uniformly from all 8 primitives and repairs (a different
  distribution over the same genotypes).
"""

from __future__ import annotations

import ast
import numbers
import random
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from fastnas.spaces import darts_ops
from fastnas.spaces.base import (
    CellGraph, CellwiseArch, Presets, Space,
    Supernet, check_class_name, register_space, size_keyword,
)
from fastnas.spaces.darts_ops import PRIMITIVES, NetworkCIFAR, ReLUConvBN, FactorizedReduce, make_op
from fastnas._hints import did_you_mean

__all__ = ["Genotype", "DARTS", "DARTSSupernet", "PRIMITIVES", "OPS", "OPERATORS", "DARTS_V1", "DARTS_V2", "TRAIN_RECIPE"]

#: GeNAS's DARTS supernet recipe (``train_supernet/train.py`` of clovaai/GeNAS): SGD, lr 0.025 cosine to
#: 0.001 per epoch, momentum 0.9 (no Nesterov), weight decay 3e-4, gradient-norm clip 5 (batch 64, 250
#: epochs; those two are left to the run).
TRAIN_RECIPE: Dict[str, Any] = {"lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "nesterov": False,
                                "weight_decay": 3e-4, "grad_clip": 5.0}

Edge = Tuple[str, int]

# The operations a genotype may use: every primitive but ``none`` (GeNAS samples non-``none`` edges).
OPS: Tuple[str, ...] = tuple(p for p in PRIMITIVES if p != "none")

#: ``DARTS(operators=...)``: ``"genas"`` (GeNAS's mutation and crossover) or ``"pairs"`` (earlier fastnas).
OPERATORS: Tuple[str, ...] = ("genas", "pairs")


class Genotype(NamedTuple):
    """A DARTS architecture: ``(op, input)`` edges of the normal and reduction cells, two per node."""

    normal: Tuple[Edge, ...]
    normal_concat: Tuple[int, ...]
    reduce: Tuple[Edge, ...]
    reduce_concat: Tuple[int, ...]


_FIELDS = Genotype._fields


def _format(g: Genotype) -> str:
    return (f"Genotype(normal={list(g.normal)}, normal_concat={list(g.normal_concat)}, "
            f"reduce={list(g.reduce)}, reduce_concat={list(g.reduce_concat)})")


_MAX_RANGE = 1024


def _literal(node: ast.AST) -> Any:
    """A literal value, or ``range(a, b)`` with literal integer bounds (never evaluates code)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords and 1 <= len(node.args) <= 3):
        bounds = [ast.literal_eval(a) for a in node.args]
        if not all(type(b) is int for b in bounds):
            raise ValueError("range() bounds must be integers")
        values = range(*bounds)
        if len(values) > _MAX_RANGE:  # checked before the list is made: range(0, 10**9) would take ~40 GB
            raise ValueError(f"range({', '.join(map(str, bounds))}) has {len(values)} values; a concat lists "
                             f"node indices (at most {_MAX_RANGE})")
        return list(values)
    return ast.literal_eval(node)


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return value


# --------------------------------------------------------------------------------------------------
# Analytic size and cost of NetworkCIFAR: the evaluation network and the supernet's extracted path.
# --------------------------------------------------------------------------------------------------

def _half(n: int) -> int:
    return (n - 1) // 2 + 1  # output size of every stride-2 op in the space (3x3/5x5 padded, 1x1)


def _op_cost(name: str, C: int, stride: int, H: int, W: int, bn: int = 2, pool_bn: bool = False) -> Tuple[int, int]:
    """(parameters, conv MACs) of one op; ``bn`` parameters per BatchNorm channel (2 affine, 0 not),
    ``pool_bn``: a BN after pooling (the supernet's convention; the evaluation network has none)."""
    HW = (_half(H) * _half(W)) if stride == 2 else H * W
    if name.startswith("sep_conv_"):
        k = int(name[-1])
        return 2 * (k * k * C + C * C) + 2 * bn * C, 2 * (k * k * C + C * C) * HW
    if name.startswith("dil_conv_"):
        k = int(name[-1])
        return k * k * C + C * C + bn * C, (k * k * C + C * C) * HW
    if name == "skip_connect" and stride == 2:
        return 2 * C * (C // 2) + bn * C, 2 * C * (C // 2) * HW
    if name in ("max_pool_3x3", "avg_pool_3x3") and pool_bn:
        return bn * C, 0
    return 0, 0  # none, pooling, identity


def _network_cost(g: Genotype, C: int, layers: int, num_classes: int, in_channels: int,
                  stem_multiplier: int, resolution: int, affine: bool = True,
                  pool_bn: bool = False) -> Tuple[int, int]:
    """(parameters, conv + linear MACs per image) of ``NetworkCIFAR(..., affine, pool_bn)`` without the
    auxiliary head: the evaluation network by default, ``affine=supernet.affine, pool_bn=True`` the one
    :meth:`DARTSSupernet.extract` returns. The stem BN is always affine."""
    bn = 2 if affine else 0
    C_stem = stem_multiplier * C
    H = W = resolution
    params = 9 * in_channels * C_stem + 2 * C_stem
    macs = 9 * in_channels * C_stem * H * W
    C_pp, C_p, C_cur = C_stem, C_stem, C
    H_pp = H_p = H
    reduction_prev = False
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_cur *= 2
        edges, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
        if reduction_prev:  # FactorizedReduce(C_pp, C_cur)
            params += 2 * C_pp * (C_cur // 2) + bn * C_cur
            macs += 2 * C_pp * (C_cur // 2) * _half(H_pp) * _half(H_pp)
        else:  # ReLUConvBN 1x1
            params += C_pp * C_cur + bn * C_cur
            macs += C_pp * C_cur * H_pp * H_pp
        params += C_p * C_cur + bn * C_cur
        macs += C_p * C_cur * H_p * H_p
        H_out = _half(H_p) if reduction else H_p
        for name, j in edges:
            if reduction and j < 2:  # stride 2 from a cell input
                p, m = _op_cost(name, C_cur, 2, H_p, H_p, bn, pool_bn)
            else:  # stride 1 from a node (already at the output resolution) or in a normal cell
                p, m = _op_cost(name, C_cur, 1, H_out, H_out, bn, pool_bn)
            params += p
            macs += m
        C_pp, C_p = C_p, len(concat) * C_cur
        H_pp, H_p = H_p, H_out
        reduction_prev = reduction
    params += C_p * num_classes + num_classes
    macs += C_p * num_classes
    return params, macs


# --------------------------------------------------------------------------------------------------
# The space
# --------------------------------------------------------------------------------------------------

@register_space("darts")
class DARTS(Space):
    """The DARTS CNN search space (CIFAR setting).

    Args:
        C: initial channels of the supernet; default 16.
        layers: cells of the supernet (reduction cells at ``layers // 3`` and ``2 * layers // 3``);
            default 8.
        num_classes: classifier outputs (supernet and standalone networks); default 10.
        in_channels: image channels; default 3.
        resolution: input height and width used by :meth:`flops`; default 32.
        steps: intermediate nodes per cell (4 in DARTS).
        multiplier: intermediate nodes concatenated into the cell output (the last ``multiplier``).
        stem_multiplier: stem width as a multiple of the initial channels.
        channels, cells: the generic names of ``C`` and ``layers`` (see :func:`~fastnas.spaces.create_space`).
        affine: affine BNs in the supernet's cells (ops, BN after pooling, preprocessing), as GeNAS;
            ``False``: DARTS's non-affine search cells. ``build`` is always affine.
        operators: ``"genas"`` (mutate the normal cell and repair; edge-wise crossover and repair) or
            ``"pairs"``; see the module docstring.

    ``None`` keeps a default.
    """

    name = "darts"

    def __init__(self, C: Optional[int] = None, layers: Optional[int] = None, num_classes: Optional[int] = None,
                 in_channels: Optional[int] = None, resolution: Optional[int] = None, steps: int = 4,
                 multiplier: int = 4, stem_multiplier: int = 3, affine: bool = True, operators: str = "genas", *,
                 channels: Optional[int] = None, cells: Optional[int] = None) -> None:
        self.C = _check_positive("C", size_keyword("C", C, "channels", channels, 16))
        self.layers = _check_positive("layers", size_keyword("layers", layers, "cells", cells, 8))
        self.num_classes = _check_positive("num_classes", 10 if num_classes is None else num_classes)
        self.in_channels = _check_positive("in_channels", 3 if in_channels is None else in_channels)
        self.resolution = _check_positive("resolution", 32 if resolution is None else resolution)
        self.steps = _check_positive("steps", steps)
        self.multiplier = _check_positive("multiplier", multiplier)
        self.stem_multiplier = _check_positive("stem_multiplier", stem_multiplier)
        if multiplier > steps:
            raise ValueError(f"multiplier={multiplier}: expected at most steps={steps}")
        self.concat: Tuple[int, ...] = tuple(range(2 + steps - multiplier, 2 + steps))
        if not isinstance(affine, bool):
            raise ValueError(f"affine={affine!r}: expected True or False")
        self.affine = affine
        if operators not in OPERATORS:
            raise ValueError(f"operators={operators!r}: expected one of {list(OPERATORS)}"
                             f"{did_you_mean(str(operators), OPERATORS, n=2)}")
        self.operators = operators

    def config(self) -> Dict[str, Any]:
        return dict(C=self.C, layers=self.layers, num_classes=self.num_classes, in_channels=self.in_channels,
                    resolution=self.resolution, steps=self.steps, multiplier=self.multiplier,
                    stem_multiplier=self.stem_multiplier, affine=self.affine, operators=self.operators)

    def __repr__(self) -> str:
        return f"DARTS({', '.join(f'{k}={v}' for k, v in self.config().items())})"

    # -- validation and text form ------------------------------------------------------------------

    def _cell(self, field: str, edges: Any) -> Tuple[Edge, ...]:
        n = 2 * self.steps
        if isinstance(edges, (str, bytes)) or not isinstance(edges, Sequence) or len(edges) != n:
            got = f"{len(edges)} edges" if isinstance(edges, Sequence) else repr(edges)
            raise ValueError(f"{field}={edges!r}: expected {n} (op, input) edges, two per node "
                             f"({self.steps} nodes); got {got}")
        out: List[Edge] = []
        for e, edge in enumerate(edges):
            if (isinstance(edge, (str, bytes)) or not isinstance(edge, Sequence) or len(edge) != 2
                    or not isinstance(edge[0], str) or isinstance(edge[1], bool)
                    or not isinstance(edge[1], numbers.Integral)):
                raise ValueError(f"{field}[{e}]={edge!r}: expected an (op, input) pair such as ('sep_conv_3x3', 0)")
            op, j = edge[0], int(edge[1])
            k = e // 2
            if op == "none":
                raise ValueError(f"{field}[{e}]={edge!r}: 'none' is not allowed; every node takes two "
                                 f"non-'none' edges (GeNAS); expected one of {list(OPS)}")
            if op not in OPS:
                hint = did_you_mean(op, OPS, n=3)
                raise ValueError(f"{field}[{e}]={edge!r}: unknown op {op!r}; expected one of {list(OPS)}{hint}")
            if not 0 <= j <= k + 1:
                raise ValueError(f"{field}[{e}]={edge!r}: node {k} (0-based) takes inputs 0..{k + 1}, got {j}")
            out.append((op, j))
        for k in range(self.steps):
            a, b = out[2 * k], out[2 * k + 1]
            if a[1] == b[1]:
                raise ValueError(f"{field}: node {k} has edges {a!r} and {b!r} from the same input {a[1]}; "
                                 f"expected two distinct predecessors")
            if a[1] > b[1]:
                out[2 * k], out[2 * k + 1] = b, a
        return tuple(out)

    def _concat(self, field: str, concat: Any) -> Tuple[int, ...]:
        try:
            values = tuple(concat)
        except TypeError:
            values = None
        if values != self.concat:
            raise ValueError(f"{field}={concat!r}: expected {list(self.concat)} (the last {self.multiplier} "
                             f"of {self.steps} nodes)")
        return self.concat

    def validate(self, arch: Any) -> Genotype:
        """The canonical :class:`Genotype` of ``arch`` (a genotype, a 4-tuple or its text form).

        Raises:
            ValueError: quoting the offending part when ``arch`` is not in this space.
        """
        if isinstance(arch, CellwiseArch):
            raise ValueError(f"arch={arch!r} is a CellwiseArch: the DARTS supernet has no per-cell architectures "
                             "(one normal and one reduction genotype are shared by all its cells)")
        if isinstance(arch, str):
            return self.parse(arch)
        if all(hasattr(arch, f) for f in _FIELDS):
            fields = [getattr(arch, f) for f in _FIELDS]
        elif isinstance(arch, (tuple, list)) and len(arch) == 4:
            fields = list(arch)
        else:
            raise ValueError(f"arch={arch!r}: expected a Genotype(normal, normal_concat, reduce, reduce_concat)")
        return Genotype(self._cell("normal", fields[0]), self._concat("normal_concat", fields[1]),
                        self._cell("reduce", fields[2]), self._concat("reduce_concat", fields[3]))

    def format(self, arch: Any) -> str:
        return _format(self.validate(arch))

    def parse(self, text: str) -> Genotype:
        """Genotype from DARTS's text form. Parses the text (``ast``) without evaluating it."""
        if not isinstance(text, str):
            raise ValueError(f"text={text!r}: expected a string such as {_format(DARTS_V2)!r}")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            raise ValueError(f"genotype {text!r} is malformed: {err.msg}") from None
        except (ValueError, MemoryError, RecursionError) as err:  # NUL bytes; nesting the parser cannot hold
            detail = str(err) or "nested too deeply"
            raise ValueError(f"genotype {text!r} is malformed: {detail}") from None
        call = tree.body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
            raise ValueError(f"genotype {text!r} is malformed: expected 'Genotype(normal=[...], "
                             f"normal_concat=[...], reduce=[...], reduce_concat=[...])'")
        values: Dict[str, Any] = {}
        try:
            if len(call.args) > 4:
                raise ValueError(f"{len(call.args)} positional arguments, expected at most 4")
            for name, node in zip(_FIELDS, call.args):
                values[name] = _literal(node)
            for kw in call.keywords:
                if kw.arg not in _FIELDS:
                    raise ValueError(f"unknown field {kw.arg!r}; expected {list(_FIELDS)}")
                if kw.arg in values:
                    raise ValueError(f"field {kw.arg!r} given twice")
                values[kw.arg] = _literal(kw.value)
            missing = [f for f in _FIELDS if f not in values]
            if missing:
                raise ValueError(f"missing field(s) {missing}")
            return self.validate(Genotype(*(values[f] for f in _FIELDS)))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as err:
            raise ValueError(f"genotype {text!r}: {err}") from None

    # -- search operators --------------------------------------------------------------------------

    def _sample_cell(self, rng: random.Random) -> Tuple[Edge, ...]:
        edges: List[Edge] = []
        for k in range(self.steps):
            for j in sorted(rng.sample(range(k + 2), 2)):
                edges.append((rng.choice(OPS), j))
        return tuple(edges)

    def sample(self, rng: random.Random) -> Genotype:
        """Per node two distinct predecessors, each with a uniformly random non-``none`` op."""
        return Genotype(self._sample_cell(rng), self.concat, self._sample_cell(rng), self.concat)

    def _mutate_cell(self, edges: Sequence[Edge], prob: float, rng: random.Random) -> List[Edge]:
        out = list(edges)
        for k in range(self.steps):
            for idx in (2 * k, 2 * k + 1):
                if rng.random() < prob:
                    other = out[idx ^ 1][1]
                    j = rng.choice([i for i in range(k + 2) if i != other])
                    out[idx] = (rng.choice(OPS), j)
        return out

    def _edge_ops(self, edges: Sequence[Edge]) -> List[str]:
        """The cell as one op per supernet edge (``_SearchCell.edge_index`` order), ``none`` where absent."""
        ops = ["none"] * (self.steps * (self.steps + 3) // 2)
        for e, (op, j) in enumerate(edges):
            ops[_SearchCell.edge_index(e // 2, j)] = op
        return ops

    def _repair(self, ops: List[str], rng: random.Random) -> Tuple[Edge, ...]:
        """Every node brought to exactly two non-``none`` inputs, as GeNAS's ``utils.check_cand``."""
        edges: List[Edge] = []
        for k in range(self.steps):
            first = _SearchCell.edge_index(k, 0)
            idx = range(first, first + k + 2)
            live = [i for i in idx if ops[i] != "none"]
            if len(live) > 2:
                for i in rng.sample(live, len(live) - 2):
                    ops[i] = "none"
            elif len(live) < 2:
                for i in rng.sample([i for i in idx if ops[i] == "none"], 2 - len(live)):
                    ops[i] = rng.choice(OPS)
            edges.extend((ops[i], i - first) for i in idx if ops[i] != "none")
        return tuple(edges)

    def mutate(self, arch: Any, prob: float, rng: random.Random) -> Genotype:
        """A mutant of ``arch`` (``operators="genas"``: the normal cell only, see the module docstring).

        ``"genas"``: each edge of the normal cell set, with probability ``prob``, to a uniform primitive
        (``none`` included), then the cell repaired; the reduction cell is kept. ``"pairs"``: each
        ``(op, input)`` pair of both cells re-drawn with probability ``prob`` (input distinct from the
        node's other edge).
        """
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob={prob!r}: expected a probability in [0, 1]")
        g = self.validate(arch)
        if self.operators == "genas":
            ops = self._edge_ops(g.normal)
            for i in range(len(ops)):
                if rng.random() < prob:
                    ops[i] = rng.choice(PRIMITIVES)
            return self.validate(Genotype(self._repair(ops, rng), g.normal_concat, g.reduce, g.reduce_concat))
        return self.validate(Genotype(self._mutate_cell(g.normal, prob, rng), g.normal_concat,
                                      self._mutate_cell(g.reduce, prob, rng), g.reduce_concat))

    def crossover(self, a: Any, b: Any, rng: random.Random) -> Genotype:
        """A child of ``a`` and ``b``.

        ``operators="genas"``: each edge of both cells (``none`` where a parent has none) from ``a`` or
        ``b`` with probability 1/2, then both cells repaired. ``"pairs"``: each node's pair of edges from
        ``a`` or ``b`` with probability 1/2.
        """
        ga, gb = self.validate(a), self.validate(b)
        if self.operators == "genas":
            # Every gene (normal cell first) is drawn before the repairs, in GeNAS's order.
            normal, reduce = [[x if rng.random() < 0.5 else y for x, y in zip(self._edge_ops(ea), self._edge_ops(eb))]
                              for ea, eb in ((ga.normal, gb.normal), (ga.reduce, gb.reduce))]
            return self.validate(Genotype(self._repair(normal, rng), self.concat,
                                          self._repair(reduce, rng), self.concat))

        def mix(ea: Sequence[Edge], eb: Sequence[Edge]) -> List[Edge]:
            out: List[Edge] = []
            for k in range(self.steps):
                src = ea if rng.random() < 0.5 else eb
                out.extend(src[2 * k: 2 * k + 2])
            return out

        return self.validate(Genotype(mix(ga.normal, gb.normal), self.concat, mix(ga.reduce, gb.reduce), self.concat))

    # -- presets and plots -------------------------------------------------------------------------

    def presets(self, data: Optional[str] = None) -> Presets:
        """GeNAS's DARTS sigmas: (1e-3, 3e-3, 6e-3) when ``data`` names CIFAR-100, else the CIFAR-10
        ones (1e-5, 5e-5, 1e-4); and GeNAS's supernet recipe (:data:`TRAIN_RECIPE`) for every dataset."""
        sigmas = (1e-3, 3e-3, 6e-3) if data is not None and "cifar100" in str(data).lower() else (1e-5, 5e-5, 1e-4)
        return Presets(sigmas=sigmas, train=TRAIN_RECIPE)

    def cell_graph(self, arch: Any) -> List[CellGraph]:
        """The normal and the reduction cell: inputs ``k-2``, ``k-1``, nodes ``0 ..``, ``out`` (the concat)."""
        g = self.validate(arch)
        labels = ["k-2", "k-1"] + [str(k) for k in range(self.steps)] + ["out"]
        graphs = []
        for title, cell, concat in (("normal cell", g.normal, g.normal_concat),
                                    ("reduction cell", g.reduce, g.reduce_concat)):
            edges = [(labels[j], labels[2 + e // 2], op) for e, (op, j) in enumerate(cell)]
            edges += [(labels[k], "out", "") for k in concat]
            graphs.append(CellGraph(title, list(labels), edges, inputs=2))
        return graphs

    # -- size and cost -----------------------------------------------------------------------------

    def _size(self, C: int | None, layers: int | None) -> Tuple[int, int]:
        return (self.C if C is None else _check_positive("C", C),
                self.layers if layers is None else _check_positive("layers", layers))

    def params(self, arch: Any, *, C: int | None = None, layers: int | None = None,
               network: str = "searched") -> int:
        """Parameters of a network of ``arch`` (auxiliary head excluded), analytically.

        ``network="searched"`` (default): the network the search scored and ``fastnas export`` writes,
        ``supernet().extract(arch)`` (the supernet's ``affine``, a BN after each pooling op).
        ``network="evaluation"``: DARTS's evaluation network ``build(arch, C=C, layers=layers)`` (affine, no
        BN after pooling; DARTS's "param size"). ``C`` and ``layers`` default to the space's. DARTS's
        published counts (CIFAR-10 networks of 36 channels and 20 cells, e.g. 3,349,342 for DARTS V2) are
        :meth:`params_benchmark`.
        """
        g = self.validate(arch)
        C, layers = self._size(C, layers)
        if network not in ("searched", "evaluation"):
            raise ValueError(f"network={network!r}: expected 'searched' or 'evaluation'")
        searched = network == "searched"
        return _network_cost(g, C, layers, self.num_classes, self.in_channels, self.stem_multiplier,
                             self.resolution, affine=self.affine or not searched, pool_bn=searched)[0]

    def params_benchmark(self, arch: Any) -> int:
        """DARTS's convention: the evaluation network of 36 channels and 20 cells (CIFAR-10 "param size";
        3,349,342 for DARTS V2 with 10 classes), whatever the space's own size."""
        return self.params(arch, C=36, layers=20, network="evaluation")

    def flops(self, arch: Any, *, C: int | None = None, layers: int | None = None,
              resolution: int | None = None) -> float:
        """Millions of multiply-adds per image of ``build(arch, C=C, layers=layers)``.

        Convention: convolution and linear-layer multiply-accumulates only (no BN, ReLU, pooling,
        additions, biases), auxiliary head excluded; computed analytically at ``resolution`` in the
        network's eval mode. ``C``, ``layers`` and ``resolution`` default to the space's (DARTS's
        benchmark: ``C=36, layers=20`` at 32x32).
        """
        g = self.validate(arch)
        C, layers = self._size(C, layers)
        res = self.resolution if resolution is None else _check_positive("resolution", resolution)
        macs = _network_cost(g, C, layers, self.num_classes, self.in_channels, self.stem_multiplier, res)[1]
        return macs / 1e6

    # -- networks ----------------------------------------------------------------------------------

    def supernet(self, **kwargs: Any) -> "DARTSSupernet":
        """The single-path supernet; ``C``, ``layers`` and ``affine`` default to the space's (``None``
        keeps them)."""
        unknown = sorted(set(kwargs) - {"C", "layers", "affine"})
        if unknown:
            raise ValueError(f"supernet() got unknown argument(s) {unknown}; expected 'C', 'layers', 'affine'")
        C = self.C if kwargs.get("C") is None else kwargs["C"]
        layers = self.layers if kwargs.get("layers") is None else kwargs["layers"]
        affine = self.affine if kwargs.get("affine") is None else kwargs["affine"]
        return DARTSSupernet(self, C=C, layers=layers, affine=affine)

    def build(self, arch: Any, C: int | None = None, layers: int | None = None, auxiliary: bool = False,
              drop_path_prob: float = 0.0) -> NetworkCIFAR:
        """DARTS's evaluation network (``NetworkCIFAR``) of ``arch`` with fresh weights.

        ``C`` and ``layers`` default to the space's. In train mode with ``auxiliary=True`` it returns
        ``(logits, aux_logits)``, else ``logits``.
        """
        g = self.validate(arch)
        if not 0.0 <= drop_path_prob < 1.0:
            raise ValueError(f"drop_path_prob={drop_path_prob!r}: expected a value in [0, 1)")
        C, layers = self._size(C, layers)
        return NetworkCIFAR(C, self.num_classes, layers, g,
                            auxiliary=bool(auxiliary), in_channels=self.in_channels,
                            stem_multiplier=self.stem_multiplier, drop_path_prob=float(drop_path_prob))


# --------------------------------------------------------------------------------------------------
# The supernet
# --------------------------------------------------------------------------------------------------

class _SearchCell(nn.Module):
    """Every op on every edge (``edges[offset(k) + j][op]``), BN after pooling; ``affine``: the BNs of
    the ops, of the pooling and of the preprocessing are affine (GeNAS) or not (DARTS)."""

    def __init__(self, steps: int, concat: Sequence[int], C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, affine: bool = True) -> None:
        super().__init__()
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.C = C
        self.concat = list(concat)
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=affine)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=affine)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=affine)
        self.edges = nn.ModuleList()
        for k in range(steps):
            for j in range(k + 2):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(nn.ModuleDict(
                    {name: make_op(name, C, stride, affine=affine, pool_bn=True) for name in PRIMITIVES}))

    @staticmethod
    def edge_index(k: int, j: int) -> int:
        """Index in ``edges`` of the edge from input ``j`` to intermediate node ``k``."""
        return k * (k + 3) // 2 + j

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, edges: Sequence[Edge]) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for k in range(len(edges) // 2):
            (op_a, j_a), (op_b, j_b) = edges[2 * k], edges[2 * k + 1]
            states.append(self.edges[self.edge_index(k, j_a)][op_a](states[j_a])
                          + self.edges[self.edge_index(k, j_b)][op_b](states[j_b]))
        return torch.cat([states[i] for i in self.concat], dim=1)  # (B, multiplier * C, H', W')


class DARTSSupernet(Supernet):
    """GeNAS's single-path DARTS supernet: ``forward(x, genotype)`` runs only the genotype's edges.

    Parameter names: ``stem.*``, ``cells.{i}.preprocess{0,1}.*``, ``cells.{i}.edges.{e}.{op}.*`` (edge
    ``e = k * (k + 3) / 2 + j`` from input ``j`` to node ``k``), ``classifier.*``.

    Args:
        space: the :class:`DARTS` space (channels, classes, steps, multiplier).
        C: initial channels.
        layers: number of cells.
        affine: affine BNs in the cells (ops, BN after pooling, preprocessing), as GeNAS's supernet;
            ``False``: DARTS's non-affine search cells. The stem BN is affine either way.
    """

    def __init__(self, space: DARTS, C: int = 16, layers: int = 8, affine: bool = True) -> None:
        super().__init__()
        self.space = space
        self.C = _check_positive("C", C)
        self.layers = _check_positive("layers", layers)
        if not isinstance(affine, bool):
            raise ValueError(f"affine={affine!r}: expected True or False")
        self.affine = affine
        C_curr = space.stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(space.in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(_SearchCell(space.steps, space.concat, C_prev_prev, C_prev, C_curr,
                                          reduction, reduction_prev, affine=affine))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, space.multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, space.num_classes)
        self._divisor = 2 ** sum(1 for c in self.cells if c.reduction)

    def _check_input(self, x: torch.Tensor) -> None:
        d, c = self._divisor, self.space.in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.size(1) != c or x.size(2) % d or x.size(3) % d:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input of shape {shape}: expected (N, {c}, H, W) with H and W divisible by {d}")

    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of the path of ``arch`` for images ``x`` ``(N, in_channels, H, W)``."""
        self._check_input(x)
        g = self.space.validate(arch)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, g.reduce if cell.reduction else g.normal)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))  # (N, num_classes)

    def _path_modules(self, g: Genotype) -> List[str]:
        prefixes = ["stem."]
        for i, cell in enumerate(self.cells):
            prefixes += [f"cells.{i}.preprocess0.", f"cells.{i}.preprocess1."]
            edges = g.reduce if cell.reduction else g.normal
            for e, (op, j) in enumerate(edges):
                prefixes.append(f"cells.{i}.edges.{cell.edge_index(e // 2, j)}.{op}.")
        prefixes.append("classifier.")
        return prefixes

    def path_parameters(self, arch: Any) -> List[str]:
        prefixes = tuple(self._path_modules(self.space.validate(arch)))
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]

    def _standalone(self, g: Genotype) -> NetworkCIFAR:
        return NetworkCIFAR(self.C, self.space.num_classes, self.layers, g, auxiliary=False,
                            in_channels=self.space.in_channels, stem_multiplier=self.space.stem_multiplier,
                            affine=self.affine, pool_bn=True)

    def _extract_pairs(self, g: Genotype) -> List[Tuple[str, str]]:
        """(module of the extracted network, module of the supernet) whose states are copied."""
        pairs = [("stem", "stem")]
        for i, cell in enumerate(self.cells):
            pairs += [(f"cells.{i}.preprocess0", f"cells.{i}.preprocess0"),
                      (f"cells.{i}.preprocess1", f"cells.{i}.preprocess1")]
            for e, (op, j) in enumerate(g.reduce if cell.reduction else g.normal):
                pairs.append((f"cells.{i}.ops.{e}", f"cells.{i}.edges.{cell.edge_index(e // 2, j)}.{op}"))
        pairs.append(("classifier", "classifier"))
        return pairs

    def extract(self, arch: Any, *, return_map: bool = False):
        """A ``NetworkCIFAR`` (supernet conventions: the supernet's ``affine``, BN after pooling) with this
        path's weights and BN statistics copied in; same device, dtype and train/eval mode.

        With ``return_map=True``: ``(net, name_map)``; ``name_map`` maps each parameter of ``net`` to the
        supernet's: ``cells.{i}.ops.{e}.rest`` -> ``cells.{i}.edges.{edge_index}.{op}.rest``, the same name
        elsewhere.
        """
        g = self.space.validate(arch)
        ref = self.classifier.weight
        net = self._standalone(g).to(device=ref.device, dtype=ref.dtype)
        name_map: Dict[str, str] = {}
        with torch.no_grad():
            for dst, src in self._extract_pairs(g):
                module = net.get_submodule(dst)
                module.load_state_dict(self.get_submodule(src).state_dict())
                name_map.update({f"{dst}.{n}": f"{src}.{n}" for n, _ in module.named_parameters()})
        net.train(self.training)
        return (net, name_map) if return_map else net

    def searched_prefixes(self) -> Tuple[str, ...]:
        """``cells.{i}.`` of every cell (preprocessing included)."""
        return tuple(f"cells.{i}." for i in range(len(self.cells)))

    def angle_pieces(self, arch: Any) -> Counter:
        """The RLNAS angle vector of ``arch`` (see its code, REFERENCES.md).

        Per cell the paths from a cell input (0 or 1) to an intermediate node (30 for 4 steps); an edge the
        genotype does not have drops the path. ``sep_conv``/``dil_conv`` contribute all their parameters
        (convolutions, and BatchNorm affine pairs where the BN is affine), pooling a constant ``(C, 3, 3)``
        tensor of 1/9 plus its BatchNorm's parameters, ``skip_connect`` an identity ``eye(C)`` (stride 1) or
        its FactorizedReduce parameters (stride 2). Fixed parts: the stem, the preprocessing of every cell,
        the classifier weight. An edge on several paths counts once per path.
        """
        g = self.space.validate(arch)
        paths = _angle_paths(self.space.steps)
        pieces: Counter = Counter()

        def add_params(module: nn.Module, prefix: str) -> None:
            for name, _ in module.named_parameters():
                pieces[("param", f"{prefix}{name}")] += 1

        add_params(self.stem, "stem.")
        for i, cell in enumerate(self.cells):
            for pre in ("preprocess0", "preprocess1"):
                add_params(getattr(cell, pre), f"cells.{i}.{pre}.")
            genes = g.reduce if cell.reduction else g.normal
            ops = {(j, 2 + e // 2): op for e, (op, j) in enumerate(genes)}  # (input j, node n) -> op
            for path in paths:
                hops = [(path[t - 1], path[t]) for t in range(1, len(path))]
                if any(h not in ops for h in hops):
                    continue
                for j, n in hops:
                    op = ops[(j, n)]
                    e = cell.edge_index(n - 2, j)
                    module = cell.edges[e][op]
                    if op in ("max_pool_3x3", "avg_pool_3x3"):
                        pieces[("const", "pool", cell.C)] += 1
                    elif op == "skip_connect" and not isinstance(module, FactorizedReduce):
                        pieces[("const", "eye", cell.C)] += 1
                    add_params(module, f"cells.{i}.edges.{e}.{op}.")
        pieces[("param", "classifier.weight")] += 1
        return pieces

    def export_source(self, arch: Any, class_name: str = "Network") -> str:
        """Python source of the network :meth:`extract` returns, genotype baked in; imports only torch
        (and ``collections`` from the standard library). Load weights with
        ``Network().load_state_dict(supernet.extract(arch).state_dict())``."""
        g = self.space.validate(arch)
        src = Path(darts_ops.__file__).read_text()
        tree = ast.parse(src)
        reserved = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        reserved |= {"Genotype", "GENOTYPE", "PRIMITIVES", "torch", "nn", "namedtuple"}
        check_class_name(class_name, reserved)
        first = tree.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            src = "\n".join(src.splitlines()[first.end_lineno:])
        sp = self.space
        return (
            f'"""DARTS network exported by fastnas (supernet conventions: {"affine" if self.affine else "non-affine"} '
            f"BN inside cells,\nBN after pooling).\n\n{_format(g)}\n"
            f'"""\n\nfrom collections import namedtuple\n'
            f"{src}\n\n"
            f"Genotype = namedtuple(\"Genotype\", \"normal normal_concat reduce reduce_concat\")\n\n"
            f"GENOTYPE = {_format(g)}\n\n\n"
            f"class {class_name}(NetworkCIFAR):\n"
            f'    """The exported network; its state_dict keys match the extracted module\'s."""\n\n'
            f"    def __init__(self, num_classes: int = {sp.num_classes}, drop_path_prob: float = 0.0) -> None:\n"
            f"        super().__init__(C={self.C}, num_classes=num_classes, layers={self.layers}, "
            f"genotype=GENOTYPE,\n"
            f"                         in_channels={sp.in_channels}, stem_multiplier={sp.stem_multiplier}, "
            f"affine={self.affine}, pool_bn=True,\n"
            f"                         drop_path_prob=drop_path_prob)\n\n\n"
            f"__all__ = [*__all__, \"Genotype\", \"GENOTYPE\", {class_name!r}]\n"
        )


def _angle_paths(steps: int) -> List[Tuple[int, ...]]:
    """Every path from a cell input (0 or 1) to an intermediate node (2 .. steps + 1); 30 for 4 steps."""
    out: List[Tuple[int, ...]] = []

    def walk(path: Tuple[int, ...]) -> None:
        for nxt in range(max(path[-1] + 1, 2), steps + 2):
            p = path + (nxt,)
            out.append(p)
            walk(p)

    for start in (0, 1):
        walk((start,))
    return out


def _canonical(normal: Sequence[Edge], reduce: Sequence[Edge]) -> Genotype:
    return DARTS().validate(Genotype(tuple(normal), (2, 3, 4, 5), tuple(reduce), (2, 3, 4, 5)))


# The genotypes published with DARTS (first- and second-order search), canonical form.
DARTS_V1 = _canonical(
    [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
     ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
)
DARTS_V2 = _canonical(
    [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
     ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
     ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
)
