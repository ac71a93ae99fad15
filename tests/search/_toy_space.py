"""Toy spaces for the search tests: tuples of genes, with params/FLOPs formulas and text forms."""

from __future__ import annotations

import itertools
import random

from fastnas.spaces.base import Space


class GeneSpace(Space):
    """``genes`` genes, each in ``range(values)``; text form like ``"0-3-1-4-2-0"``."""

    name = "toy"

    def __init__(self, genes: int = 6, values: int = 5) -> None:
        self.genes = genes
        self.values = values

    def sample(self, rng: random.Random):
        return tuple(rng.randrange(self.values) for _ in range(self.genes))

    def choices(self):
        """The options of each site (what the ENAS controller samples from)."""
        return (self.values,) * self.genes

    def mutate(self, arch, prob, rng):
        return tuple(rng.randrange(self.values) if rng.random() < prob else g for g in arch)

    def crossover(self, a, b, rng):
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    def parse(self, text):
        try:
            return self.validate(tuple(int(t) for t in text.split("-")))
        except ValueError:
            raise ValueError(f"malformed architecture {text!r}") from None

    def format(self, arch):
        return "-".join(map(str, arch))

    def validate(self, arch):
        if not (isinstance(arch, tuple) and len(arch) == self.genes
                and all(isinstance(g, int) and 0 <= g < self.values for g in arch)):
            raise ValueError(f"not an architecture of the toy space: {arch!r}")
        return arch

    def enumerate(self):
        return iter(itertools.product(range(self.values), repeat=self.genes))

    def size(self):
        return self.values ** self.genes

    def params(self, arch):
        return 100 + sum(10 * g for g in arch)

    def flops(self, arch):
        return 1.0 + sum(0.5 * g * (i + 1) for i, g in enumerate(arch))

    def supernet(self, **kwargs):
        raise NotImplementedError

    def build(self, arch, **kwargs):
        raise NotImplementedError


def separable(arch) -> float:
    """Maximised (value 0) at genes (4, 0, 4, 0, 4, 0); every gene independent."""
    target = (4, 0, 4, 0, 4, 0)
    return -float(sum((g - t) ** 2 for g, t in zip(arch, target)))
