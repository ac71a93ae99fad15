"""A test-only nested ("weight-contained", once-for-all / REG-NAS) family: its paths are slices.

A conv stem of ``max(widths)`` channels, ``cells`` layers of Conv-BN-ReLU whose width is one of
``widths`` and kernel one of ``(3, 1)``, then global average pooling and a linear classifier. The supernet
owns only the largest weights; a member uses the channel prefix of each layer (``conv.weight[:out, :in]``,
BatchNorm ``[:out]``), a 1x1 kernel is the centre of the 3x3 (``weight[:out, :in, 1:2, 1:2]``), and the
classifier's input slice follows the last width. So ``path_parameters(arch)`` returns
:class:`fastnas.ops.ParamSlice` entries (and names where a member uses a whole tensor).

BatchNorm is one layer of the largest width per cell (:class:`ElasticBatchNorm2d`); a member normalises
with the first ``out`` entries of its weight, bias and running statistics (updated in place in training
mode), so ``extract(arch)`` (a plain BatchNorm with those entries copied) equals ``forward(x, arch)``.
The standalone network is defined once, as source text (:data:`NET_SOURCE`), as in ``_tiny_space.py``.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.ops import ParamSlice
from fastnas.spaces.base import CellGraph, Space, Supernet
from fastnas.spaces.elastic_resnet_ops import ElasticBatchNorm2d  # the library's prefix-sliced BatchNorm

NET_SOURCE = '''
import torch
from torch import nn


class NestedNet(nn.Module):
    def __init__(self, arch, stem_channels, num_classes, in_channels):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_channels), nn.ReLU())
        layers, c = [], stem_channels
        for width, kernel in arch:
            layers.append(nn.Sequential(nn.Conv2d(c, width, kernel, padding=kernel // 2, bias=False),
                                        nn.BatchNorm2d(width), nn.ReLU()))
            c = width
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):  # (B, in_channels, H, W) -> (B, num_classes)
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x.mean(dim=(2, 3)))
'''

_NS: Dict[str, Any] = {}
exec(compile(NET_SOURCE, "<nested-net>", "exec"), _NS)
NestedNet = _NS["NestedNet"]

KERNELS = (3, 1)
Gene = Tuple[int, int]  # (width, kernel)


class NestedSpace(Space):
    """``cells`` layers of ``(width, kernel)``; text form like ``"4k3-2k1"``.

    Family: :meth:`largest`, :meth:`smallest`, :meth:`contains` (every layer of the small member is no
    wider and its kernel no larger).
    """

    name = "nested"

    def __init__(self, widths: Tuple[int, ...] = (2, 4), cells: Optional[int] = None,
                 num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                 resolution: Optional[int] = None) -> None:
        self.widths = tuple(sorted(int(w) for w in widths))
        self.cells = 2 if cells is None else cells
        self.num_classes = 3 if num_classes is None else num_classes
        self.in_channels = 3 if in_channels is None else in_channels
        self.resolution = 8 if resolution is None else resolution
        self.stem_channels = max(self.widths)
        self.genes: Tuple[Gene, ...] = tuple(itertools.product(self.widths, KERNELS))

    def config(self) -> Dict[str, Any]:
        return {"widths": self.widths, "cells": self.cells, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "resolution": self.resolution}

    def validate(self, arch: Any) -> Tuple[Gene, ...]:
        if not isinstance(arch, (tuple, list)) or len(arch) != self.cells:
            raise ValueError(f"arch={arch!r}: expected {self.cells} (width, kernel) pairs from {list(self.genes)}")
        out = []
        for g in arch:
            g = tuple(g) if isinstance(g, (tuple, list)) else g
            if g not in self.genes:
                raise ValueError(f"arch={arch!r}: layer {g!r} is not one of {list(self.genes)}")
            out.append(g)
        return tuple(out)

    def format(self, arch: Any) -> str:
        return "-".join(f"{w}k{k}" for w, k in self.validate(arch))

    def parse(self, text: str) -> Tuple[Gene, ...]:
        if not isinstance(text, str):
            raise ValueError(f"text={text!r}: expected a string like '4k3-2k1'")
        try:
            genes = [tuple(int(v) for v in part.split("k")) for part in text.strip().split("-")]
        except ValueError:
            raise ValueError(f"text={text!r}: expected layers like '4k3' joined by '-'") from None
        return self.validate(genes)

    def sample(self, rng: random.Random) -> Tuple[Gene, ...]:
        return tuple(rng.choice(self.genes) for _ in range(self.cells))

    def mutate(self, arch: Any, prob: float, rng: random.Random) -> Tuple[Gene, ...]:
        return tuple(rng.choice(self.genes) if rng.random() < prob else g for g in self.validate(arch))

    def crossover(self, a: Any, b: Any, rng: random.Random) -> Tuple[Gene, ...]:
        a, b = self.validate(a), self.validate(b)
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    def enumerate(self):
        return itertools.product(self.genes, repeat=self.cells)

    def size(self) -> int:
        return len(self.genes) ** self.cells

    def largest(self) -> Tuple[Gene, ...]:
        return ((max(self.widths), max(KERNELS)),) * self.cells

    def smallest(self) -> Tuple[Gene, ...]:
        return ((min(self.widths), min(KERNELS)),) * self.cells

    def contains(self, big: Any, small: Any) -> bool:
        return all(ws <= wb and ks <= kb for (wb, kb), (ws, ks) in zip(self.validate(big), self.validate(small)))

    def params(self, arch: Any) -> int:
        a, c = self.validate(arch), self.stem_channels
        n = self.in_channels * c * 9 + 2 * c
        for w, k in a:
            n += c * w * k * k + 2 * w
            c = w
        return n + c * self.num_classes + self.num_classes

    def flops(self, arch: Any) -> float:
        a, c, hw = self.validate(arch), self.stem_channels, self.resolution ** 2
        macs = self.in_channels * c * 9 * hw
        for w, k in a:
            macs += c * w * k * k * hw
            c = w
        return (macs + c * self.num_classes) / 1e6

    def cell_graph(self, arch: Any) -> List[CellGraph]:
        a = self.validate(arch)
        nodes = ["in"] + [str(i + 1) for i in range(len(a) - 1)] + ["out"]
        return [CellGraph(self.format(a), nodes, [(nodes[i], nodes[i + 1], f"{w}k{k}") for i, (w, k) in enumerate(a)])]

    def supernet(self, **kwargs: Any) -> "NestedSupernet":
        return NestedSupernet(self)

    def build(self, arch: Any, **kwargs: Any) -> nn.Module:
        return NestedNet(self.validate(arch), self.stem_channels, self.num_classes, self.in_channels)


class ElasticLayer(nn.Module):
    """One searched layer: the largest conv (``conv``, 3x3) and its BatchNorm (``bn``)."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = ElasticBatchNorm2d(width)

    def forward(self, x: torch.Tensor, width: int, kernel: int) -> torch.Tensor:
        w = self.conv.weight[:width, :x.shape[1]]
        if kernel == 1:
            w = w[:, :, 1:2, 1:2]  # the centre of the 3x3
        return F.relu(self.bn(F.conv2d(x, w, padding=kernel // 2)))


Entry = Union[str, ParamSlice]


def _entry(name: str, full: torch.Size, box: Tuple[Tuple[int, int], ...]) -> Entry:
    """The name where ``box`` is the whole tensor, else the slice."""
    whole = all(a == 0 and b == n for (a, b), n in zip(box, full))
    return name if whole else ParamSlice(name, box)


class NestedSupernet(Supernet):
    """The largest member's weights: ``stem.*``, ``layers.{i}.conv.weight``, ``layers.{i}.bn.*``,
    ``classifier.*``; the standalone net has ``layers.{i}.0.weight`` (conv) and ``layers.{i}.1.*`` (BN)."""

    def __init__(self, space: NestedSpace) -> None:
        super().__init__()
        self.space = space
        S, W = space.stem_channels, max(space.widths)
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, S, 3, padding=1, bias=False), nn.BatchNorm2d(S),
                                  nn.ReLU())
        self.layers = nn.ModuleList([ElasticLayer(S if i == 0 else W, W) for i in range(space.cells)])
        self.classifier = nn.Linear(W, space.num_classes)

    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:
        a = self.space.validate(arch)
        x = self.stem(x)
        for layer, (w, k) in zip(self.layers, a):
            x = layer(x, w, k)
        c = x.shape[1]
        return F.linear(x.mean(dim=(2, 3)), self.classifier.weight[:, :c], self.classifier.bias)

    def _map(self, arch: Tuple[Gene, ...]) -> Dict[str, Tuple[str, Tuple[Tuple[int, int], ...]]]:
        """Standalone state name -> (supernet state name, box) for every parameter and buffer."""
        out: Dict[str, Tuple[str, Tuple[Tuple[int, int], ...]]] = {}
        for n, t in self.stem.state_dict().items():
            out[f"stem.{n}"] = (f"stem.{n}", tuple((0, s) for s in t.shape))
        c = self.space.stem_channels
        for i, (w, k) in enumerate(arch):
            lo, hi = (1, 2) if k == 1 else (0, 3)
            out[f"layers.{i}.0.weight"] = (f"layers.{i}.conv.weight", ((0, w), (0, c), (lo, hi), (lo, hi)))
            for n in ("weight", "bias", "running_mean", "running_var"):
                out[f"layers.{i}.1.{n}"] = (f"layers.{i}.bn.{n}", ((0, w),))
            out[f"layers.{i}.1.num_batches_tracked"] = (f"layers.{i}.bn.num_batches_tracked", ())
            c = w
        out["classifier.weight"] = ("classifier.weight", ((0, self.space.num_classes), (0, c)))
        out["classifier.bias"] = ("classifier.bias", ((0, self.space.num_classes),))
        return out

    def path_parameters(self, arch: Any) -> List[Entry]:
        a = self.space.validate(arch)
        named = dict(self.named_parameters())
        by_name = {sn: box for sn, box in self._map(a).values() if sn in named}
        return [_entry(n, named[n].shape, by_name[n]) for n in named if n in by_name]

    def extract(self, arch: Any, *, return_map: bool = False):
        a = self.space.validate(arch)
        net = self.space.build(a).to(self.classifier.weight.device)
        source = self.state_dict()
        mapping = self._map(a)
        net.load_state_dict({k: source[sn][tuple(slice(lo, hi) for lo, hi in box)].clone()
                             for k, (sn, box) in mapping.items()})
        net.train(self.training)
        if not return_map:
            return net
        full = dict(self.named_parameters())
        return net, {k: _entry(mapping[k][0], full[mapping[k][0]].shape, mapping[k][1])
                     for k, _ in net.named_parameters()}

    def export_source(self, arch: Any, class_name: str = "Network") -> str:
        a = self.space.validate(arch)
        s = self.space
        return (NET_SOURCE + f"\n\nclass {class_name}(NestedNet):\n    def __init__(self):\n"
                f"        super().__init__({a!r}, {s.stem_channels}, {s.num_classes}, {s.in_channels})\n")

    def searched_prefixes(self) -> Tuple[str, ...]:
        return ("layers.",)
