"""Samplers of the training loop: which architecture(s) step ``s`` trains.

* :class:`UniformSampler` -- SPOS: one architecture per step, ``space.sample(rng)`` with the rng seeded
  from ``(seed, step)``;
* :class:`PerCellSampler` -- every searched cell its own architecture, each node redrawn until it has a
  non-``none`` input (RLNAS): ``space.sample_cellwise(rng)``, a :class:`~fastnas.spaces.CellwiseArch`;
* :class:`FairSampler` -- FairNAS's strict fairness: ``space.fair_paths(rng)``, ``K`` architectures in
  which every op of every edge appears exactly once (trained by :class:`~fastnas.train.steps.MultiPath`);
* :class:`FixedSampler` -- the same architecture every step (retraining one network);
* :class:`SandwichSampler` -- the sandwich rule of a nested family: ``(largest, smallest, k random
  members)`` per step (trained by :class:`~fastnas.train.steps.Sandwich`).

:func:`supernet_plan` maps a ``TrainConfig.sampler`` name to its sampler and step strategy. Each
sampler seeds a ``random.Random`` from ``derive_seed(seed, purpose, step)`` (a purpose per sampler), so
its choices are a pure function of ``(seed, step)`` and a resumed run draws what an uninterrupted one
drew.

A sampler is any object with ``sample(step) -> choice`` that depends on the step only
(:class:`fastnas.train.loop.Sampler`).
"""

from __future__ import annotations

import math
import random
from typing import Any, Dict, Optional, Tuple

from fastnas._hints import did_you_mean
from fastnas.seeds import derive_seed
from fastnas.train.config import SAMPLERS
from fastnas.train.steps import MultiPath, Sandwich, SinglePath

__all__ = ["UniformSampler", "PerCellSampler", "FairSampler", "SandwichSampler", "FixedSampler",
           "supernet_plan", "sandwich_options"]


def _space_name(space: Any) -> str:
    return getattr(space, "name", type(space).__name__)


def _capability(space: Any, method: str, sampler: str) -> None:
    """``ValueError`` unless ``space.<method>(rng)`` works (tried once on a throw-away rng)."""
    fn = getattr(space, method, None)
    if not callable(fn):
        raise ValueError(f"space: {type(space).__name__} has no {method}(rng); sampler={sampler!r} needs a Space "
                         "that has")
    try:
        fn(random.Random(0))
    except NotImplementedError as e:
        raise ValueError(f"sampler={sampler!r} is not available for space {_space_name(space)!r}: {e}; use "
                         f"sampler='uniform'") from None


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


class PerCellSampler:
    """Per-cell sampling (RLNAS): step ``s`` trains ``space.sample_cellwise(rng)``, a
    :class:`~fastnas.spaces.CellwiseArch` giving every searched cell its own architecture.

    For NAS-Bench-201 each cell is drawn as RLNAS's trainer draws it (``NB201.sample_connected``: node by
    node, the node's incoming ops redrawn until one is not ``none``, so no cell is disconnected). The rng
    is seeded with ``derive_seed(seed, "arch-cells", s)``.

    Args:
        space: a space with ``sample_cellwise(rng)`` (a ``ValueError`` names the space otherwise; DARTS has
            none: its supernet shares one normal and one reduction genotype among all cells).
        seed: the training seed.
    """

    def __init__(self, space: Any, seed: int = 0) -> None:
        _capability(space, "sample_cellwise", "per-cell")
        self.space = space
        self.seed = seed

    def sample(self, step: int) -> Any:
        return self.space.sample_cellwise(random.Random(derive_seed(self.seed, "arch-cells", step)))

    def __repr__(self) -> str:
        return f"PerCellSampler({_space_name(self.space)!r}, seed={self.seed})"


class FairSampler:
    """FairNAS strict fairness: step ``s`` trains ``space.fair_paths(rng)``, ``K`` architectures in which
    every op of every edge appears exactly once (for each edge a random permutation of its ``K`` ops).

    Pair it with :class:`~fastnas.train.steps.MultiPath` (gradients of the ``K`` paths summed, one
    optimizer step). The rng is seeded with ``derive_seed(seed, "arch-fair", s)``.

    Args:
        space: a space with ``fair_paths(rng)`` (a ``ValueError`` names the space otherwise).
        seed: the training seed.
    """

    def __init__(self, space: Any, seed: int = 0) -> None:
        _capability(space, "fair_paths", "fair")
        self.space = space
        self.seed = seed

    def sample(self, step: int) -> Tuple[Any, ...]:
        return tuple(self.space.fair_paths(random.Random(derive_seed(self.seed, "arch-fair", step))))

    def __repr__(self) -> str:
        return f"FairSampler({_space_name(self.space)!r}, seed={self.seed})"


class SandwichSampler:
    """The sandwich rule (slimmable networks, BigNAS): step ``s`` trains ``(space.largest(),
    space.smallest(), *k members drawn by space.sample(rng))``, the rng seeded with
    ``derive_seed(seed, "arch-sandwich", s)`` -- a function of ``(seed, s)`` only, so a resumed run draws
    what an uninterrupted one drew. Random members are drawn independently and may repeat the largest or
    the smallest (they are trained again, as BigNAS's sampler does).

    Pair it with :class:`~fastnas.train.steps.Sandwich` (gradients of the members accumulated, one
    optimizer step, optional in-place distillation from the largest).

    Args:
        space: a nested family space: ``largest()``, ``smallest()`` and ``sample(rng)`` (``ValueError``
            naming the space otherwise).
        k: random members per step, ``>= 0`` (BigNAS and MMRazor: 2).
        seed: the training seed.
    """

    def __init__(self, space: Any, k: int = 2, seed: int = 0) -> None:
        missing = [m for m in ("largest", "smallest", "sample") if not callable(getattr(space, m, None))]
        if missing:
            raise ValueError(f"sampler='sandwich' needs a nested family space (largest(), smallest() and "
                             f"sample(rng)); space {_space_name(space)!r} has no {', '.join(m + '()' for m in missing)}: "
                             "use another sampler (e.g. sampler='uniform') or a family space")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"sandwich_k={k!r}: expected an integer >= 0 (random members per step)")
        self.space = space
        self.k = k
        self.seed = seed
        self._ends = (space.largest(), space.smallest())

    def sample(self, step: int) -> Tuple[Any, ...]:
        rng = random.Random(derive_seed(self.seed, "arch-sandwich", step))
        return (*self._ends, *(self.space.sample(rng) for _ in range(self.k)))

    def __repr__(self) -> str:
        return f"SandwichSampler({_space_name(self.space)!r}, k={self.k}, seed={self.seed})"


def sandwich_options(sandwich_k: Any = None, distill: Any = None, temperature: Any = None) -> Dict[str, Any]:
    """The sandwich sampler's settings with the defaults filled in (``None`` keeps a default): ``k = 2``
    random members, in-place distillation on, temperature 1 (MMRazor's BigNAS). Validated."""
    opts = {"sandwich_k": 2 if sandwich_k is None else sandwich_k, "distill": True if distill is None else distill,
            "temperature": 1.0 if temperature is None else temperature}
    k = opts["sandwich_k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"sandwich_k={k!r}: expected an integer >= 0 (random members per step)")
    if not isinstance(opts["distill"], bool):
        raise ValueError(f"distill={opts['distill']!r}: expected True or False")
    t = opts["temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature={t!r}: expected a number > 0")
    opts["temperature"] = float(t)
    return opts


def supernet_plan(name: str, space: Any, seed: int = 0, *, sandwich_k: Optional[int] = None,
                  distill: Optional[bool] = None, temperature: Optional[float] = None) -> Tuple[Any, Any]:
    """``(sampler, step strategy)`` of the supernet sampler ``name`` (``TrainConfig.sampler``).

    ``uniform``: :class:`UniformSampler` + :class:`~fastnas.train.steps.SinglePath` (SPOS);
    ``per-cell``: :class:`PerCellSampler` + ``SinglePath``; ``fair``: :class:`FairSampler` +
    :class:`~fastnas.train.steps.MultiPath`; ``sandwich``: :class:`SandwichSampler` (``sandwich_k``
    random members) + :class:`~fastnas.train.steps.Sandwich` (``distill``, ``temperature``); the three
    keywords apply to ``sandwich`` only (``None``: the defaults of :func:`sandwich_options`).
    ``ValueError`` for an unknown name, a space that lacks the capability, or sandwich keywords with
    another sampler.
    """
    given = {k: v for k, v in (("sandwich_k", sandwich_k), ("distill", distill), ("temperature", temperature))
             if v is not None}
    if name == "sandwich":
        opts = sandwich_options(**given)
        return (SandwichSampler(space, opts["sandwich_k"], seed),
                Sandwich(distill=opts["distill"], temperature=opts["temperature"]))
    if given:
        raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())}: set for sampler={name!r}; these "
                         "settings apply to sampler='sandwich' only")
    if name == "uniform":
        return UniformSampler(space, seed), SinglePath()
    if name == "per-cell":
        return PerCellSampler(space, seed), SinglePath()
    if name == "fair":
        return FairSampler(space, seed), MultiPath()
    hint = did_you_mean(str(name), SAMPLERS, n=1) if isinstance(name, str) else ""
    raise ValueError(f"sampler={name!r}: expected one of {', '.join(SAMPLERS)}{hint}")


class FixedSampler:
    """The same choice every step: ``arch`` (``None`` for a built network, which needs none)."""

    def __init__(self, arch: Any = None) -> None:
        self.arch = arch

    def sample(self, step: int) -> Any:
        return self.arch

    def __repr__(self) -> str:
        return f"FixedSampler({self.arch!r})"
