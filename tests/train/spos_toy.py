"""A toy two-layer choice supernet and its space, for the trainer tests (imported by them)."""

from __future__ import annotations

import random
from typing import Any, List, Tuple

import torch
from torch import nn

from fastnas.spaces.base import Space, Supernet

Arch = Tuple[int, int]


class ToySupernet(Supernet):
    """Layer 1: one of 3 convs (one with BatchNorm); pool; layer 2: one of 3 linears; shared head."""

    def __init__(self, in_channels: int = 2, width: int = 4, hidden: int = 8, num_classes: int = 3,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.layer1 = nn.ModuleList([
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.Conv2d(in_channels, width, 1),
            nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)),
        ])
        self.layer2 = nn.ModuleList([nn.Linear(width, hidden) for _ in range(3)])
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        i, j = arch
        h = torch.relu(self.layer1[i](x)).mean(dim=(2, 3))  # (B, width)
        h = torch.relu(self.layer2[j](h))  # (B, hidden)
        return self.head(self.drop(h))  # (B, classes)

    def path_parameters(self, arch: Arch) -> List[str]:
        i, j = arch
        prefixes = (f"layer1.{i}.", f"layer2.{j}.", "head.")
        return [n for n, _ in self.named_parameters() if n.startswith(prefixes)]


class ToySpace(Space):
    name = "toy"

    def __init__(self, choices: int = 3) -> None:
        self.choices = choices  # sample() uses only ops [0, choices)

    def sample(self, rng: random.Random) -> Arch:
        return (rng.randrange(self.choices), rng.randrange(self.choices))

    def mutate(self, arch: Arch, prob: float, rng: random.Random) -> Arch:
        return tuple(rng.randrange(self.choices) if rng.random() < prob else g for g in arch)  # type: ignore

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))  # type: ignore

    def parse(self, text: str) -> Arch:
        return self.validate(tuple(int(t) for t in text.split(",")))

    def format(self, arch: Arch) -> str:
        return ",".join(map(str, arch))

    def validate(self, arch: Any) -> Arch:
        if not (isinstance(arch, tuple) and len(arch) == 2 and all(a in range(3) for a in arch)):
            raise ValueError(f"not a toy architecture: {arch!r}")
        return arch

    def params(self, arch: Arch) -> int:
        return 0

    def flops(self, arch: Arch) -> float:
        return 0.0

    def supernet(self, **kwargs: Any) -> ToySupernet:
        return ToySupernet(**kwargs)

    def build(self, arch: Arch, **kwargs: Any) -> nn.Module:
        raise NotImplementedError

    def config(self):
        return {"choices": self.choices}


def make_toy(init_seed: int = 0, choices: int = 3):
    torch.manual_seed(init_seed)
    space = ToySpace(choices)
    return space.supernet(), space


def make_data(n: int = 64, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 5, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y
