"""A compiled forward of one NAS-Bench-201 network for scoring: BatchNorm recalibration and folded eval.

:class:`CompiledNB201` runs an extracted :class:`~fastnas.spaces.nb201_ops.NB201Network` (what
``supernet.extract(arch)`` returns) the way scoring needs it, faster than the module's own forward and
with the same results to float rounding:

* **dead work skipped**: an edge whose node does not reach the cell output is never run (it changes no
  output); an edge leaving a *zero* node (one whose inputs are all ``none``) is skipped when it
  contributes exactly zero: a skip or pooling of zero, or a ReLU-Conv-BN whose BatchNorm is non-affine
  with a zero running mean (recalibration guarantees that mean: train mode normalises a zero batch to
  zero, and the average of zero means is zero);
* **one ReLU per node**: the cell's ReLU-Conv-BN edges leaving one node share its ReLU;
* **average pooling as a depthwise convolution**: ``avg_pool_3x3`` (``count_include_pad=False``) is a
  3x3 depthwise convolution, the borders rescaled to their count of valid taps (measured 3-6x faster
  than ``avg_pool2d`` on channels-last CPU tensors, in fp32 and bf16);
* **eval mode folded**: each convolution carries its BatchNorm (:func:`fastnas.ops.fold.fold_conv_bn`),
  in channels-last format and in the program's dtype (bf16 weights are cast once per :meth:`refresh`,
  not once per call as under autocast).

Stacking the edges that leave one node into one wider convolution was measured too (2x faster for
one 16-channel convolution alone) and gave nothing end to end, so the forward keeps one convolution per
edge.

:meth:`~CompiledNB201.recalibrate` re-estimates the BatchNorm statistics in train mode as
:func:`fastnas.spaces.base.recalibrate_bn` does (reset, then ``nn.BatchNorm2d``'s cumulative average for
``mode="exact"`` or its momentum-0.1 average for ``"momentum"``), writing them into the network's
buffers. The stem's train-mode output and statistics do not depend on the architecture: a
:class:`StemCache` computes them once per calibration set and stem weights, and every candidate reuses
them (checked by value: a cache never serves other stem weights or other images). Statistics of edges
that are never run (dead edges) keep their values; they feed no output.

The network's parameters stay the source of truth: perturb them in place, call :meth:`refresh`, run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.ops.fold import FoldSpec, fold_conv_bn
from fastnas.spaces.nb201_ops import EDGES, Cell, NB201Network, ReLUConvBN, ResidualBlock, Zero

__all__ = ["CompiledNB201", "StemCache", "CellSchedule", "cell_schedule", "not_supported_reasons"]

_KERNEL = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}
_DTYPES = (torch.float32, torch.bfloat16)
_MODES = ("exact", "momentum")


# ---- the static cell schedule ---------------------------------------------------------------------

@dataclass(frozen=True)
class CellSchedule:
    """What one cell of an architecture runs, per source node ``src`` in ``(0, 1, 2)``.

    Attributes:
        convs, skips, pools: ``convs[src]`` etc.: the live edges of each kind leaving node ``src``.
        zero_convs: ReLU-Conv-BN edges leaving a zero node that are skipped (recalibration feeds their
            BatchNorms a zero batch, as the module's forward does).
        zero_output: node 3 is zero (the cell outputs zeros).
    """

    convs: Tuple[Tuple[int, ...], ...]
    skips: Tuple[Tuple[int, ...], ...]
    pools: Tuple[Tuple[int, ...], ...]
    zero_convs: Tuple[int, ...]
    zero_output: bool


def cell_schedule(arch: Sequence[str], prune_zero: bool = True) -> CellSchedule:
    """The :class:`CellSchedule` of ``arch`` (6 op names in :data:`EDGES` order).

    A node is *zero* when none of its inputs contributes: ``none`` edges, and edges from zero nodes
    (skip and pooling of zero are zero; with ``prune_zero`` a ReLU-Conv-BN of zero counts as zero too,
    else it runs on a zero tensor). An edge is *live* when it contributes and its node reaches node 3.
    """
    zero = {0: False}
    contributes: Dict[int, bool] = {}
    zero_convs: List[int] = []
    for node in (1, 2, 3):
        fed = False
        for e, (to, src) in enumerate(EDGES):
            if to != node or arch[e] == "none":
                continue
            ok = not zero[src]
            if zero[src] and arch[e] in _KERNEL and not prune_zero:
                ok = True
            elif zero[src] and arch[e] in _KERNEL:
                zero_convs.append(e)
            contributes[e] = ok
            fed = fed or ok
        zero[node] = not fed
    reach = {3: True}
    for node in (2, 1, 0):
        reach[node] = any(contributes.get(e, False) and reach[to] for e, (to, src) in enumerate(EDGES) if src == node)
    live = sorted(e for e, ok in contributes.items() if ok and reach[EDGES[e][0]])

    def kind(src: int, test) -> Tuple[int, ...]:
        return tuple(e for e in live if EDGES[e][1] == src and test(arch[e]))

    return CellSchedule(tuple(kind(s, lambda op: op in _KERNEL) for s in (0, 1, 2)),
                        tuple(kind(s, lambda op: op == "skip_connect") for s in (0, 1, 2)),
                        tuple(kind(s, lambda op: op == "avg_pool_3x3") for s in (0, 1, 2)),
                        tuple(zero_convs), zero[3])


# ---- support check --------------------------------------------------------------------------------

def _conv_bn_ok(op: nn.Module, kernel: int) -> bool:
    if type(op) is not ReLUConvBN:
        return False
    conv, bn = op[1], op[2]
    return (type(conv) is nn.Conv2d and conv.kernel_size == (kernel, kernel) and conv.stride == (1, 1)
            and conv.padding == (kernel // 2, kernel // 2) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.bias is None and conv.padding_mode == "zeros" and type(bn) is nn.BatchNorm2d)


def _edge_ok(m: nn.Module, op: str) -> bool:
    if op == "none":
        return type(m) is Zero
    if op == "skip_connect":
        return type(m) is nn.Identity
    if op == "avg_pool_3x3":
        return (type(m) is nn.AvgPool2d and m.kernel_size == 3 and m.stride == 1 and m.padding == 1
                and not m.count_include_pad and not m.ceil_mode and m.divisor_override is None)
    return op in _KERNEL and _conv_bn_ok(m, _KERNEL[op])


def not_supported_reasons(net: nn.Module) -> List[str]:
    """Why :class:`CompiledNB201` cannot run ``net`` (empty when it can): an
    :class:`~fastnas.spaces.nb201_ops.NB201Network` of float32 parameters with its standard modules, one
    architecture in every cell, BatchNorms tracking running statistics, and no hooks."""
    if type(net) is not NB201Network:
        return [f"expected an NB201Network, got {type(net).__name__}"]
    why = []
    if any(m._forward_hooks or m._forward_pre_hooks for m in net.modules()):
        why.append("a submodule has forward hooks")
    if any(p.dtype != torch.float32 for p in net.parameters()):
        why.append("a parameter is not float32")
    arch = None
    for i, cell in enumerate(net.cells):
        if type(cell) is ResidualBlock:
            continue
        if type(cell) is not Cell:
            why.append(f"cells[{i}] is a {type(cell).__name__}, expected Cell or ResidualBlock")
            continue
        arch = arch or cell.arch
        if cell.arch != arch:
            why.append(f"cells[{i}] has architecture {cell.arch}, an earlier cell {arch}: expected one everywhere")
        why += [f"cells[{i}].edges[{e}] ({op}) is not the standard module"
                for e, op in enumerate(cell.arch) if not _edge_ok(cell.edges[e], op)]
    if arch is None:
        why.append("the network has no search cell")
    if any(isinstance(m, nn.BatchNorm2d) and not m.track_running_stats for m in net.modules()):
        why.append("a BatchNorm does not track running statistics")
    return why


# ---- the stem cache ---------------------------------------------------------------------------------

@dataclass
class _StemEntry:
    weights: List[torch.Tensor]    # clones of the stem's conv weight, BN weight and bias (compared by value)
    eps: float
    batches: List[torch.Tensor]    # the calibration batches, held: their identity and versions are the key
    versions: Tuple[int, ...]
    outputs: List[torch.Tensor]    # the stem's train-mode output per batch (never written)
    mean: torch.Tensor             # the stem BatchNorm's recalibrated statistics
    var: torch.Tensor


class StemCache:
    """The stem's train-mode output per calibration batch and its recalibrated statistics, computed once
    and reused for every candidate whose stem has equal weights (compared by value) on the same batches
    (the same, unmodified tensor objects), in the same mode, dtype and memory format. One entry per
    ``(mode, dtype, memory format)``.

    Attributes:
        hits, misses: lookups served and computed.
    """

    def __init__(self) -> None:
        self._entries: Dict[tuple, _StemEntry] = {}
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Drops every entry (their memory is freed)."""
        self._entries.clear()

    @staticmethod
    def _key_tensors(net: NB201Network) -> List[torch.Tensor]:
        bn = net.stem[1]
        return [t.detach() for t in (net.stem[0].weight, bn.weight, bn.bias) if t is not None]

    @staticmethod
    def _matches(e: _StemEntry, net: NB201Network, batches: Sequence[torch.Tensor]) -> bool:
        keys = StemCache._key_tensors(net)
        return (e.eps == net.stem[1].eps and len(e.batches) == len(batches)
                and all(a is b for a, b in zip(e.batches, batches))
                and e.versions == tuple(b._version for b in batches) and len(keys) == len(e.weights)
                and all(k.shape == w.shape and k.device == w.device and torch.equal(k, w)
                        for k, w in zip(keys, e.weights)))

    def get(self, program: "CompiledNB201", batches: Sequence[torch.Tensor], mode: str) -> _StemEntry:
        """The entry of ``program``'s stem on ``batches`` (computed on a miss)."""
        key = (mode, program.dtype, program.memory_format)
        e = self._entries.get(key)
        if e is not None and self._matches(e, program.net, batches):
            self.hits += 1
            return e
        self.misses += 1
        self._entries.pop(key, None)  # free the old entry before computing the new one
        e = self._entries[key] = program._stem_pass(batches, mode)
        return e


# ---- the compiled network ---------------------------------------------------------------------------

class _Unit:
    """A convolution with its BatchNorm (``bn=None``: none, the residual shortcut), and its eval weights."""

    def __init__(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], stride: int, padding: int) -> None:
        self.conv, self.bn, self.stride, self.padding = conv, bn, stride, padding
        self.fold_w: Optional[torch.Tensor] = None  # float32, contiguous: the fold kernel's destination
        self.fold_b: Optional[torch.Tensor] = None
        self.w: Optional[torch.Tensor] = None       # eval weights in the program's dtype and memory format
        self.b: Optional[torch.Tensor] = None


def _factor(mode: str, k: int) -> float:
    """``nn.BatchNorm2d``'s averaging factor at the ``k``-th batch after a reset: ``1 / (k + 1)``
    (``momentum=None``: the cumulative average) or 0.1 (``momentum=0.1``)."""
    return 1.0 / float(k + 1) if mode == "exact" else 0.1


class CompiledNB201:
    """The compiled forward of ``net``, an :class:`NB201Network`; see the module docstring.

    Args:
        net: the network (e.g. ``supernet.extract(arch)``); its parameters and BatchNorm buffers are read
            by every :meth:`refresh` and written by :meth:`recalibrate`.
        dtype: ``torch.float32`` or ``torch.bfloat16``: the forward, recalibration included, runs in it
            (BatchNorm statistics and parameters stay float32; logits come back in ``dtype``).
        channels_last: run in channels-last format (the fast one for CPU convolutions).
        stem_cache: a :class:`StemCache` shared by the candidates of one supernet (``None``: no cache).

    Raises:
        ValueError: ``net`` is not supported (with the reasons of :func:`not_supported_reasons`), or a bad
            ``dtype``.

    Example::

        program = CompiledNB201(supernet.extract(arch))
        program.recalibrate(batches)       # writes the network's BatchNorm statistics
        program.refresh()                  # folds; again after every change of the parameters
        logits = program(x)                # == net.eval()(x) to float rounding
    """

    def __init__(self, net: nn.Module, *, dtype: torch.dtype = torch.float32, channels_last: bool = True,
                 stem_cache: Optional[StemCache] = None) -> None:
        why = not_supported_reasons(net)
        if why:
            raise ValueError(f"net: CompiledNB201 cannot run it: {'; '.join(why)}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype}: expected torch.float32 or torch.bfloat16")
        self.net = net
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.stem_cache = stem_cache
        self.arch = next(c.arch for c in net.cells if type(c) is Cell)
        self.affine_cells = any(m[2].affine for c in net.cells if type(c) is Cell
                                for m in c.edges if type(m) is ReLUConvBN)
        self.recalibrated = False
        self.stem = _Unit(net.stem[0], net.stem[1], 1, 1)
        self.layers: List[tuple] = []  # ("res", (a, b, shortcut)) or ("cell", (cell, {edge: unit}))
        for cell in net.cells:
            if type(cell) is ResidualBlock:
                self.layers.append(("res", (_Unit(cell.conv_a[1], cell.conv_a[2], 2, 1),
                                            _Unit(cell.conv_b[1], cell.conv_b[2], 1, 1),
                                            _Unit(cell.shortcut[1], None, 1, 0))))
            else:
                units = {e: _Unit(m[1], m[2], 1, _KERNEL[op] // 2)
                         for e, (m, op) in enumerate(zip(cell.edges, cell.arch)) if op in _KERNEL}
                self.layers.append(("cell", (cell, units)))
        # Train mode: a ReLU-Conv-BN of zero outputs exactly zero iff its BatchNorm is non-affine.
        self.train_schedule = cell_schedule(self.arch, prune_zero=not self.affine_cells)
        self._schedule: Optional[CellSchedule] = None  # eval mode, set by refresh()
        self._pool: Dict[int, torch.Tensor] = {}  # channels -> the depthwise pooling kernel

    # ---- shared pieces

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    def _pool3(self, x: torch.Tensor) -> torch.Tensor:
        """``avg_pool2d(x, 3, 1, 1, count_include_pad=False)`` as a depthwise convolution, then the border
        rows and columns scaled by 9/6 (corners twice: 9/4) to their count of valid taps (a full-size
        multiply by a count map would cost a pass over memory). float32: taps 1/9; bf16: taps 1 (exact
        in bf16, unlike 1/9), the sum accumulated in float32 inside the kernel, then scaled by 1/9."""
        _, c, h, w = x.shape
        if h < 2 or w < 2:
            return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        if c not in self._pool:
            tap = 1.0 if self.dtype == torch.bfloat16 else 1.0 / 9.0
            self._pool[c] = torch.full((c, 1, 3, 3), tap, dtype=self.dtype, device=x.device).contiguous(
                memory_format=self.memory_format)
        y = F.conv2d(x, self._pool[c], None, 1, 1, 1, c)
        if self.dtype == torch.bfloat16:
            y.mul_(1.0 / 9.0)
        y[:, :, ::h - 1].mul_(1.5)  # rows 0 and h-1
        y[:, :, :, ::w - 1].mul_(1.5)  # columns 0 and w-1
        return y

    def _cell(self, cell: Cell, units: Dict[int, _Unit], schedule: CellSchedule, x: torch.Tensor,
              conv) -> torch.Tensor:
        """One cell on ``x`` (never written: it may be a cached stem output); ``conv(unit, relu_input)``."""
        if schedule.zero_output:
            return torch.zeros_like(x)
        nodes: List[Optional[torch.Tensor]] = [x, None, None, None]
        owned = [False] * 4  # nodes[i] is a tensor of ours, safe to add into in place

        def add(node: int, y: torch.Tensor, own: bool) -> None:
            if nodes[node] is None:
                nodes[node], owned[node] = y, own
            elif owned[node]:
                nodes[node].add_(y)
            else:
                nodes[node], owned[node] = nodes[node] + y, True

        for src in (0, 1, 2):
            h = nodes[src]
            if h is None:
                if not schedule.convs[src]:
                    continue  # a zero node: nothing it feeds contributes
                h = torch.zeros_like(x)  # ReLU-Conv-BNs of zero that need not vanish (see cell_schedule)
            if schedule.convs[src]:
                r = F.relu(h)
                for e in schedule.convs[src]:
                    add(EDGES[e][0], conv(units[e], r), True)
            for e in schedule.skips[src]:
                add(EDGES[e][0], h, False)
            if schedule.pools[src]:
                p = self._pool3(h)
                for e in schedule.pools[src]:
                    add(EDGES[e][0], p, len(schedule.pools[src]) == 1)
        return torch.zeros_like(x) if nodes[3] is None else nodes[3]

    def _forward(self, h: torch.Tensor, schedule: CellSchedule, conv) -> torch.Tensor:
        """Cells and residual blocks on the stem output ``h``."""
        for kind, layer in self.layers:
            if kind == "res":
                a, b, s = layer
                y = conv(b, F.relu(conv(a, F.relu(h))))
                h = conv(s, F.avg_pool2d(h, 2, 2)).add_(y)
            else:
                h = self._cell(layer[0], layer[1], schedule, h, conv)
        return h

    # ---- recalibration (train mode)

    def _stem_pass(self, batches: Sequence[torch.Tensor], mode: str) -> _StemEntry:
        """The stem's train-mode outputs and statistics on ``batches`` (not cached here)."""
        conv, bn = self.net.stem
        w = self._cast(conv.weight.detach())
        mean, var = torch.zeros_like(bn.running_mean), torch.ones_like(bn.running_var)
        outs = []
        with torch.no_grad():
            for k, x in enumerate(batches):
                y = F.conv2d(self._cast(x), w, None, 1, 1)
                outs.append(F.batch_norm(y, mean, var, bn.weight, bn.bias, True, _factor(mode, k), bn.eps))
        keys = [t.clone() for t in StemCache._key_tensors(self.net)]
        return _StemEntry(keys, bn.eps, list(batches), tuple(b._version for b in batches), outs, mean, var)

    def recalibrate(self, batches: Sequence[torch.Tensor], mode: str = "exact") -> int:
        """Re-estimates the running statistics of the BatchNorms the forward uses, in train mode, as
        :func:`~fastnas.spaces.base.recalibrate_bn` does, and writes them into the network.

        Args:
            batches: input tensors ``(B, in_channels, H, W)`` (or ``(x, y)`` pairs; ``y`` is ignored).
            mode: ``"exact"`` (cumulative average) or ``"momentum"`` (0.1, from the reset values).

        Returns:
            The number of batches used.
        """
        if mode not in _MODES:
            raise ValueError(f"mode={mode!r}: expected one of {list(_MODES)}")
        batches = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
        if not batches:
            return 0
        schedule = self.train_schedule
        fresh: Dict[int, Tuple[nn.BatchNorm2d, torch.Tensor, torch.Tensor]] = {}  # id(bn) -> (bn, mean, var)

        def stats(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
            if id(bn) not in fresh:  # reset on first use, as recalibrate_bn
                fresh[id(bn)] = (bn, torch.zeros_like(bn.running_mean), torch.ones_like(bn.running_var))
            return fresh[id(bn)][1:]

        weights: Dict[int, torch.Tensor] = {}
        factor = 1.0

        def conv_bn(unit: _Unit, x: torch.Tensor) -> torch.Tensor:
            if id(unit) not in weights:
                weights[id(unit)] = self._cast(unit.conv.weight.detach())
            y = F.conv2d(x, weights[id(unit)], None, unit.stride, unit.padding)
            if unit.bn is None:
                return y
            bn = unit.bn
            mean, var = stats(bn)
            return F.batch_norm(y, mean, var, bn.weight, bn.bias, True, factor, bn.eps)

        zero_bns = [layer[0].edges[e][2] for kind, layer in self.layers if kind == "cell"
                    for e in schedule.zero_convs]
        stem = self.stem_cache.get(self, batches, mode) if self.stem_cache is not None else \
            self._stem_pass(batches, mode)
        last = self.net.lastact[0]
        with torch.no_grad():
            for k in range(len(batches)):
                factor = _factor(mode, k)
                h = self._forward(stem.outputs[k], schedule, conv_bn)
                mean, var = stats(last)
                F.batch_norm(h, mean, var, last.weight, last.bias, True, factor, last.eps)
                for bn in zero_bns:  # the zero batch the module's forward would feed them
                    mean, var = stats(bn)
                    F.batch_norm(torch.zeros(2, bn.num_features, 1, 1, device=mean.device), mean, var, None, None,
                                 True, factor, bn.eps)
            updates = [(bn, mean, var) for bn, mean, var in fresh.values()] + [(self.net.stem[1], stem.mean, stem.var)]
            for bn, mean, var in updates:
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.fill_(len(batches))
        self.recalibrated = True
        self._schedule = None
        return len(batches)

    # ---- eval

    def _eval_schedule(self) -> CellSchedule:
        """In eval mode a ReLU-Conv-BN of zero outputs its folded bias ``beta - mean * scale``: zero when
        the BatchNorm is non-affine with zero running means (always after :meth:`recalibrate`)."""
        prune = not self.affine_cells
        if prune and not self.recalibrated:
            zs = cell_schedule(self.arch, prune_zero=True).zero_convs
            prune = not any(bool(layer[0].edges[e][2].running_mean.any())
                            for kind, layer in self.layers if kind == "cell" for e in zs)
        return cell_schedule(self.arch, prune_zero=prune)

    def folded(self) -> int:
        """The number of convolutions with a BatchNorm folded in by :meth:`refresh`."""
        schedule = self._eval_schedule() if self._schedule is None else self._schedule
        cells = sum(len(edges) for kind, _ in self.layers if kind == "cell" for edges in schedule.convs)
        return 1 + 2 * sum(kind == "res" for kind, _ in self.layers) + cells

    def refresh(self) -> int:
        """Folds the network's current parameters and running statistics into the eval weights.

        Returns:
            The number of convolutions with a BatchNorm folded in.
        """
        schedule = self._eval_schedule() if self._schedule is None else self._schedule
        units: List[_Unit] = [self.stem]
        for kind, layer in self.layers:
            if kind == "res":
                units.extend(layer)
            else:
                units.extend(layer[1][e] for src in (0, 1, 2) for e in schedule.convs[src])
        specs: List[FoldSpec] = []
        for u in units:
            w = u.conv.weight
            if u.fold_w is None:
                u.fold_w = torch.empty(w.shape, dtype=torch.float32, device=w.device)
                u.fold_b = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
                u.w = torch.empty(w.shape, dtype=self.dtype, device=w.device).contiguous(
                    memory_format=self.memory_format)
                u.b = torch.empty(w.shape[0], dtype=self.dtype, device=w.device)
            bn = u.bn
            bn_kw = {} if bn is None else dict(
                mean=bn.running_mean, var=bn.running_var, eps=bn.eps,
                gamma=None if bn.weight is None else bn.weight.detach(),
                beta=None if bn.bias is None else bn.bias.detach())
            specs.append(FoldSpec(u.fold_w, u.fold_b, w.detach(), **bn_kw))
        with torch.no_grad():
            fold_conv_bn(specs)
            for u in units:
                u.w.copy_(u.fold_w)
                u.b.copy_(u.fold_b)
            cls = self.net.classifier
            self._cls = (cls.weight.detach().to(self.dtype), cls.bias.detach().to(self.dtype))
        self._schedule = schedule
        return sum(u.bn is not None for u in units)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits ``(B, classes)`` of ``x`` ``(B, in_channels, H, W)``, as of the last
        :meth:`refresh` (made here if none was)."""
        if self._schedule is None:
            self.refresh()

        def conv(unit: _Unit, r: torch.Tensor) -> torch.Tensor:
            return F.conv2d(r, unit.w, unit.b, unit.stride, unit.padding)

        h = self._forward(conv(self.stem, self._cast(x)), self._schedule, conv)
        last = self.net.lastact[0]  # float32 parameters and statistics normalise a bf16 input in float32
        w, b = (None if t is None else t.detach() for t in (last.weight, last.bias))
        h = F.batch_norm(h, last.running_mean, last.running_var, w, b, False, 0.0, last.eps).relu_()
        return F.linear(h.mean((2, 3)), *self._cls)
