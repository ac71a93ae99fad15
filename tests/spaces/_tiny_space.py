"""A tiny test-only search space: a chain of ``cells`` layers, each a 3x3 or a 1x1 Conv-BN-ReLU block,
between a conv stem and a linear classifier (global average pooling before it). 2**cells architectures.

It implements the whole protocol (the conformance suite runs on it beside the registered spaces) with
whole tensors only. Its standalone network is defined once, as source text (:data:`NET_SOURCE`): ``build``
and ``extract`` execute it, ``export_source`` returns it, so the exported network is the built one.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from fastnas.spaces.base import CellGraph, Space, Supernet

OPS = ("conv3x3", "conv1x1")
KERNEL = {"conv3x3": 3, "conv1x1": 1}

NET_SOURCE = '''
import torch
from torch import nn

KERNEL = {"conv3x3": 3, "conv1x1": 1}


def block(op, channels):
    k = KERNEL[op]
    return nn.Sequential(nn.Conv2d(channels, channels, k, padding=k // 2, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU())


class TinyNet(nn.Module):
    def __init__(self, arch, channels, num_classes, in_channels):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.layers = nn.ModuleList([block(op, channels) for op in arch])
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):  # (B, in_channels, H, W) -> (B, num_classes)
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(x.mean(dim=(2, 3)))
'''

_NS: Dict[str, Any] = {}
exec(compile(NET_SOURCE, "<tiny-net>", "exec"), _NS)
TinyNet = _NS["TinyNet"]
block = _NS["block"]


class TinySpace(Space):
    """``cells`` layers, each ``conv3x3`` or ``conv1x1``; text form like ``"conv3x3-conv1x1-conv3x3"``."""

    name = "tiny"

    def __init__(self, channels: Optional[int] = None, cells: Optional[int] = None,
                 num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                 resolution: Optional[int] = None) -> None:
        self.channels = 4 if channels is None else channels
        self.cells = 3 if cells is None else cells
        self.num_classes = 3 if num_classes is None else num_classes
        self.in_channels = 3 if in_channels is None else in_channels
        self.resolution = 8 if resolution is None else resolution

    def config(self) -> Dict[str, Any]:
        return {"channels": self.channels, "cells": self.cells, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "resolution": self.resolution}

    def validate(self, arch: Any) -> Tuple[str, ...]:
        if not isinstance(arch, (tuple, list)) or len(arch) != self.cells or any(op not in OPS for op in arch):
            raise ValueError(f"arch={arch!r}: expected {self.cells} ops from {list(OPS)}")
        return tuple(arch)

    def format(self, arch: Any) -> str:
        return "-".join(self.validate(arch))

    def parse(self, text: str) -> Tuple[str, ...]:
        if not isinstance(text, str):
            raise ValueError(f"text={text!r}: expected a string like 'conv3x3-conv1x1-conv3x3'")
        return self.validate(tuple(text.strip().split("-")))

    def sample(self, rng: random.Random) -> Tuple[str, ...]:
        return tuple(rng.choice(OPS) for _ in range(self.cells))

    def mutate(self, arch: Any, prob: float, rng: random.Random) -> Tuple[str, ...]:
        a = self.validate(arch)
        return tuple((OPS[1] if op == OPS[0] else OPS[0]) if rng.random() < prob else op for op in a)

    def crossover(self, a: Any, b: Any, rng: random.Random) -> Tuple[str, ...]:
        a, b = self.validate(a), self.validate(b)
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    def enumerate(self):
        return itertools.product(OPS, repeat=self.cells)

    def size(self) -> int:
        return len(OPS) ** self.cells

    def params(self, arch: Any) -> int:
        a, C = self.validate(arch), self.channels
        fixed = self.in_channels * C * 9 + 2 * C + C * self.num_classes + self.num_classes
        return fixed + sum(KERNEL[op] ** 2 * C * C + 2 * C for op in a)

    def flops(self, arch: Any) -> float:
        a, C, hw = self.validate(arch), self.channels, self.resolution ** 2
        macs = self.in_channels * C * 9 * hw + C * self.num_classes
        return (macs + sum(KERNEL[op] ** 2 * C * C * hw for op in a)) / 1e6

    def cell_graph(self, arch: Any) -> List[CellGraph]:
        a = self.validate(arch)
        nodes = ["in"] + [str(i + 1) for i in range(len(a) - 1)] + ["out"]
        return [CellGraph(self.format(a), nodes, [(nodes[i], nodes[i + 1], op) for i, op in enumerate(a)])]

    def supernet(self, **kwargs: Any) -> "TinySupernet":
        return TinySupernet(self)

    def build(self, arch: Any, **kwargs: Any) -> nn.Module:
        return TinyNet(self.validate(arch), self.channels, self.num_classes, self.in_channels)


class TinySupernet(Supernet):
    """Both ops of every layer: ``layers.{i}.{op}.*``; the standalone net has ``layers.{i}.*``."""

    def __init__(self, space: TinySpace) -> None:
        super().__init__()
        self.space = space
        C = space.channels
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C),
                                  nn.ReLU())
        self.layers = nn.ModuleList([nn.ModuleDict({op: block(op, C) for op in OPS}) for _ in range(space.cells)])
        self.classifier = nn.Linear(C, space.num_classes)

    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:
        a = self.space.validate(arch)
        x = self.stem(x)
        for layer, op in zip(self.layers, a):
            x = layer[op](x)
        return self.classifier(x.mean(dim=(2, 3)))

    def _map(self, arch: Tuple[str, ...], names: List[str]) -> Dict[str, str]:
        out = {}
        for n in names:
            parts = n.split(".")
            if parts[0] == "layers":
                n_super = ".".join(parts[:2] + [arch[int(parts[1])]] + parts[2:])
            else:
                n_super = n
            out[n] = n_super
        return out

    def path_parameters(self, arch: Any) -> List[str]:
        a = self.space.validate(arch)
        keep = {f"layers.{i}.{op}." for i, op in enumerate(a)}
        return [n for n, _ in self.named_parameters()
                if not n.startswith("layers.") or any(n.startswith(k) for k in keep)]

    def extract(self, arch: Any, *, return_map: bool = False):
        a = self.space.validate(arch)
        net = self.space.build(a).to(self.classifier.weight.device)
        source = self.state_dict()
        name_map = self._map(a, list(net.state_dict()))
        net.load_state_dict({k: source[v] for k, v in name_map.items()})
        net.train(self.training)
        if not return_map:
            return net
        params = {n for n, _ in net.named_parameters()}
        return net, {k: v for k, v in name_map.items() if k in params}

    def export_source(self, arch: Any, class_name: str = "Network") -> str:
        a = self.space.validate(arch)
        s = self.space
        return (NET_SOURCE + f"\n\nclass {class_name}(TinyNet):\n    def __init__(self):\n"
                f"        super().__init__({a!r}, {s.channels}, {s.num_classes}, {s.in_channels})\n")

    def searched_prefixes(self) -> Tuple[str, ...]:
        return ("layers.",)
