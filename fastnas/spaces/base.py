"""The search-space protocol, the supernet base class and the space registry.

A space is a small object with the methods of :class:`Space`; architectures are immutable, hashable
values (tuples) with one canonical text form. Search algorithms see only this protocol.
"""

from __future__ import annotations

import abc
import random
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List

import torch
from torch import nn

from fastnas._hints import did_you_mean

__all__ = [
    "Space", "Supernet", "register_space", "create_space", "list_spaces", "recalibrate_bn",
]

Arch = Hashable


class Space(abc.ABC):
    """A search space. Subclasses set ``name`` and implement the abstract methods.

    Conventions: ``rng`` is a :class:`random.Random`; every method that returns an architecture
    returns a canonical, validated value; bad input raises ``ValueError`` quoting the offending text.
    """

    name: str = "space"

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random valid architecture."""

    @abc.abstractmethod
    def mutate(self, arch: Arch, prob: float, rng: random.Random) -> Arch:
        """Each gene replaced by a random choice with probability ``prob``."""

    @abc.abstractmethod
    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Each gene taken from ``a`` or ``b`` with probability 1/2."""

    @abc.abstractmethod
    def parse(self, text: str) -> Arch:
        """Architecture from its canonical text form (``ValueError`` quoting ``text`` if malformed)."""

    @abc.abstractmethod
    def format(self, arch: Arch) -> str:
        """Canonical text form; ``parse(format(a)) == a``."""

    @abc.abstractmethod
    def validate(self, arch: Any) -> Arch:
        """Returns ``arch`` if it belongs to this space, else raises ``ValueError``."""

    def enumerate(self) -> Iterator[Arch]:
        """Every architecture, where the space is finite and small."""
        raise NotImplementedError(f"space {self.name!r} is too large to enumerate")

    def size(self) -> int | None:
        """Number of architectures, or None when not finite/small."""
        return None

    @abc.abstractmethod
    def params(self, arch: Arch) -> int:
        """Parameter count of the standalone network ``build(arch)``."""

    @abc.abstractmethod
    def flops(self, arch: Arch) -> float:
        """FLOPs (multiply-adds, in millions, per image) of ``build(arch)``."""

    @abc.abstractmethod
    def supernet(self, **kwargs: Any) -> "Supernet":
        """The weight-sharing supernet of this space."""

    @abc.abstractmethod
    def build(self, arch: Arch, **kwargs: Any) -> nn.Module:
        """A standalone network of ``arch`` with fresh weights."""

    def config(self) -> Dict[str, Any]:
        """Constructor arguments, so ``create_space(name, **config())`` rebuilds this space."""
        return {}


class Supernet(nn.Module):
    """Base class of weight-sharing supernets: ``forward(x, arch)`` runs only the path of ``arch``."""

    space: Space

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def path_parameters(self, arch: Arch) -> List[str]:
        """Names (as in ``named_parameters()``, in that order) of the parameters the path of ``arch`` uses."""
        raise NotImplementedError

    def extract(self, arch: Arch) -> nn.Module:
        """A standalone module with the path's weights copied in; its outputs equal ``forward(x, arch)``."""
        raise NotImplementedError

    def export_source(self, arch: Arch, class_name: str = "Network") -> str:
        """Plain PyTorch source of the standalone network of ``arch`` (does not import fastnas)."""
        raise NotImplementedError

    def recalibrate(self, arch: Arch, batches: Iterable[torch.Tensor], mode: str = "exact") -> int:
        """BatchNorm recalibration of the path of ``arch``; see :func:`recalibrate_bn`."""
        return recalibrate_bn(lambda x: self(x, arch), self, batches, mode=mode)


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def recalibrate_bn(forward: Callable[[torch.Tensor], Any], model: nn.Module, batches: Iterable[torch.Tensor],
                   mode: str = "exact") -> int:
    """Re-estimates the running statistics of the BatchNorm layers a forward pass uses.

    Each BatchNorm layer that ``forward`` runs is reset the first time it runs; then:

    * ``mode="exact"``: cumulative average over all batches (``momentum=None``), so the statistics are
      the plain mean of the per-batch statistics;
    * ``mode="momentum"``: the reference-code variant, exponential average with momentum 0.1 starting
      from the reset values (mean 0, variance 1).

    Layers the forward pass does not reach keep their statistics. The model is left in eval mode.

    Args:
        forward: maps a batch ``x`` to the output (e.g. ``lambda x: supernet(x, arch)``).
        model: the module holding the BatchNorm layers.
        batches: input tensors (or ``(x, y)`` pairs; ``y`` is ignored).
        mode: ``"exact"`` or ``"momentum"``.

    Returns:
        The number of batches used.
    """
    if mode not in ("exact", "momentum"):
        raise ValueError(f"mode={mode!r}: expected 'exact' or 'momentum'")
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    saved = {m: m.momentum for m in bns}
    seen: set = set()

    def reset_on_first_use(module, _inputs):
        if module not in seen:
            seen.add(module)
            module.reset_running_stats()

    hooks = [m.register_forward_pre_hook(reset_on_first_use) for m in bns]
    was_training = model.training
    count = 0
    try:
        for m in bns:
            m.momentum = None if mode == "exact" else 0.1
        model.train()
        with torch.no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                forward(x)
                count += 1
    finally:
        for h in hooks:
            h.remove()
        for m, mom in saved.items():
            m.momentum = mom
        model.train(was_training)
        model.eval()
    return count


_SPACES: Dict[str, Callable[..., Space]] = {}


def register_space(name: str) -> Callable[[Callable[..., Space]], Callable[..., Space]]:
    """Decorator registering a space constructor under ``name``."""

    def deco(fn: Callable[..., Space]) -> Callable[..., Space]:
        _SPACES[name] = fn
        return fn

    return deco


def list_spaces() -> List[str]:
    return sorted(_SPACES)


def create_space(name: str, **kwargs: Any) -> Space:
    """The space registered under ``name``; ``None`` keyword values keep the defaults."""
    if name not in _SPACES:
        hint = did_you_mean(name, list(_SPACES), n=3)
        raise ValueError(f"space={name!r} is not a known space; expected one of {list_spaces()}{hint}")
    return _SPACES[name](**{k: v for k, v in kwargs.items() if v is not None})
