"""Samplers of the training loop: which architecture(s) step ``s`` trains.

* :class:`UniformSampler` -- SPOS: one architecture per step, ``space.sample(rng)`` with the rng seeded
  from ``(seed, step)``;
* :class:`FixedSampler` -- the same architecture every step (retraining one network).

A sampler is any object with ``sample(step) -> choice`` that depends on the step only
(:class:`fastnas.train.loop.Sampler`). The sandwich rule's sampler, for a family space with
``largest()`` and ``smallest()``, is one more class::

    class SandwichSampler:
        def __init__(self, space, k: int = 2, seed: int = 0):
            self.space, self.k, self.seed = space, k, seed

        def sample(self, step):
            rng = random.Random(derive_seed(self.seed, "sandwich", step))
            return (self.space.largest(), self.space.smallest(),
                    *(self.space.sample(rng) for _ in range(self.k)))
"""

from __future__ import annotations

import random
from typing import Any

from fastnas.seeds import derive_seed

__all__ = ["UniformSampler", "FixedSampler"]


class UniformSampler:
    """One architecture per step, drawn by ``space.sample`` (uniform for the registered spaces): SPOS.

    Step ``s`` trains ``space.sample(random.Random(derive_seed(seed, "arch", s)))``, a function of
    ``(seed, s)`` only, so a resumed run draws the architectures an uninterrupted one drew.

    Args:
        space: the space whose ``sample(rng)`` draws the architecture.
        seed: the training seed.
    """

    def __init__(self, space: Any, seed: int = 0) -> None:
        if not callable(getattr(space, "sample", None)):
            raise ValueError(f"space: {type(space).__name__} has no sample(rng); expected a Space")
        self.space = space
        self.seed = seed

    def sample(self, step: int) -> Any:
        return self.space.sample(random.Random(derive_seed(self.seed, "arch", step)))

    def __repr__(self) -> str:
        return f"UniformSampler({getattr(self.space, 'name', type(self.space).__name__)!r}, seed={self.seed})"


class FixedSampler:
    """The same choice every step: ``arch`` (``None`` for a built network, which needs none)."""

    def __init__(self, arch: Any = None) -> None:
        self.arch = arch

    def sample(self, step: int) -> Any:
        return self.arch

    def __repr__(self) -> str:
        return f"FixedSampler({self.arch!r})"
