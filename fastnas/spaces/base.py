"""The search-space protocol, the supernet base class and the space registry.

A space is a small object with the methods of :class:`Space`; architectures are immutable, hashable
values (tuples) with one canonical text form. Search algorithms, scores and runs see only this protocol:
everything specific to one space (its presets, cell graph, angle pieces, name maps, searched cells and
batched forward) is answered by the space or its supernet.
"""

from __future__ import annotations

import abc
import inspect
import keyword
import math
import random
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from fastnas._hints import did_you_mean

__all__ = [
    "Space", "Supernet", "Presets", "CellGraph", "BatchedForward", "CellwiseArch", "register_space", "create_space",
    "list_spaces", "recalibrate_bn", "size_keyword",
]

Arch = Hashable

#: GeNAS's NAS-Bench-201 sigmas: the default of a space that states none (and of ``FlatnessConfig``).
DEFAULT_SIGMAS: Tuple[float, ...] = (2e-3, 1e-2, 2e-2)


class CellwiseArch(tuple):
    """One architecture per searched cell of a supernet, in the order of its searched cells.

    An optional capability: a supernet that accepts it in ``forward(x, arch)`` and
    ``path_parameters(arch)`` lets every cell run its own cell architecture (RLNAS's per-cell
    sampling); its space draws one with :meth:`Space.sample_cellwise`. Spaces whose supernet takes
    only one architecture shared by all cells (the default) refuse it. The type is what tells a
    per-cell choice from an architecture, so ``CellwiseArch((a, a, a))`` is not ``a``; hashable and
    immutable like any architecture.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"CellwiseArch({tuple(self)!r})"


@dataclass(frozen=True)
class Presets:
    """What a space recommends for a dataset.

    Attributes:
        sigmas: the flatness noise levels (absolute standard deviations), positive, strictly increasing.
        train: ``TrainConfig`` field overrides for that dataset (may be empty), read-only.
    """

    sigmas: Tuple[float, ...] = DEFAULT_SIGMAS
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            sigmas = tuple(float(s) for s in self.sigmas)
        except (TypeError, ValueError):
            raise ValueError(f"sigmas={self.sigmas!r}: expected a sequence of numbers") from None
        if not sigmas or not all(math.isfinite(s) and s > 0 for s in sigmas) \
                or any(b <= a for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"sigmas={self.sigmas!r}: expected positive, strictly increasing noise levels")
        if not isinstance(self.train, Mapping):
            raise ValueError(f"train={self.train!r}: expected a mapping of TrainConfig fields")
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "train", types.MappingProxyType(dict(self.train)))


@dataclass(frozen=True)
class CellGraph:
    """One searched cell as a graph (what plots draw).

    Attributes:
        title: e.g. ``"normal cell"``.
        nodes: node labels in drawing order (inputs first, output last).
        edges: ``(src, dst, op)`` triples naming nodes of ``nodes``; ``op=""`` is a plain connection
            (e.g. a concatenation into the output).
        inputs: how many of the first ``nodes`` are the cell's inputs (drawn in one column).
    """

    title: str
    nodes: List[str]
    edges: List[Tuple[str, str, str]]
    inputs: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.inputs, bool) or not isinstance(self.inputs, int) or not 1 <= self.inputs <= len(self.nodes):
            raise ValueError(f"inputs={self.inputs!r}: expected an integer in [1, {len(self.nodes)}] (the leading "
                             "input nodes)")
        known = set(self.nodes)
        if len(known) != len(self.nodes):
            raise ValueError(f"nodes={self.nodes!r}: expected distinct labels")
        for e in self.edges:
            if not (isinstance(e, tuple) and len(e) == 3 and e[0] in known and e[1] in known
                    and isinstance(e[2], str)):
                raise ValueError(f"edge {e!r} of cell graph {self.title!r}: expected (src, dst, op) with src "
                                 f"and dst in {self.nodes}")


class BatchedForward:
    """The protocol of :meth:`Supernet.batched_forward`: many candidates (or weight sets) in one pass.

    ``prepare(archs, weights=None) -> plan`` folds the weights of K candidates (``weights``: K mappings
    ``parameter name -> tensor`` overriding the supernet's); ``forward(plan, x) -> (K, B, classes)``
    logits in eval mode; ``choose(x, archs) -> "batched" | "sequential"`` says which is faster on
    ``x``'s device, by measurement. Optionally ``compile(net, *, dtype, channels_last) -> (program, why)``:
    a compiled forward of one network ``extract(arch)`` returned, with ``recalibrate(batches, mode)``,
    ``refresh() -> folded`` and ``program(x) -> logits`` (eval), or ``(None, why not)``.
    """

    def compile(self, net: nn.Module, *, dtype: torch.dtype = torch.float32, channels_last: bool = True
                ) -> Tuple[Optional[Any], str]:
        """The space's compiled forward of the extracted ``net`` (default: none)."""
        return None, f"{type(self).__name__} has no compiled forward"

    def prepare(self, archs: Sequence[Arch], weights: Optional[Sequence[Mapping[str, torch.Tensor]]] = None
                ) -> Any:  # pragma: no cover - protocol
        raise NotImplementedError

    def forward(self, plan: Any, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        raise NotImplementedError

    def choose(self, x: torch.Tensor, archs: Sequence[Arch]) -> str:  # pragma: no cover - protocol
        raise NotImplementedError


def check_class_name(class_name: Any, taken: Iterable[str]) -> str:
    """``class_name`` if it can name the class of an exported source (an identifier, not a keyword, not one
    of the names ``taken`` by that source), else ValueError naming it."""
    taken = set(taken)
    if not isinstance(class_name, str) or not class_name.isidentifier() or keyword.iskeyword(class_name) \
            or class_name in taken:
        raise ValueError(f"class_name={class_name!r}: expected a Python identifier other than {sorted(taken)}")
    return class_name


def size_keyword(own: str, own_value: Any, generic: str, generic_value: Any, default: Any) -> Any:
    """The value of a size argument that a constructor takes under its own name and a generic one.

    ``None`` means "not given"; both given and different is a ``ValueError`` naming both.
    """
    if own_value is not None and generic_value is not None and own_value != generic_value:
        raise ValueError(f"{own}={own_value!r} and {generic}={generic_value!r} disagree; {generic} is another "
                         f"name of {own}: give one of them")
    if own_value is not None:
        return own_value
    return default if generic_value is None else generic_value


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
        """Parameter count of the network a search gives the user: the supernet's path of ``arch`` as a
        standalone network (``supernet().extract(arch)``, what ``fastnas export`` writes), at the space's
        sizes. Searches report it and ``--max-params`` limits it."""

    def params_benchmark(self, arch: Arch) -> Optional[int]:
        """The parameter count in the benchmark's own convention where it differs from :meth:`params`
        (e.g. NAS-Bench-201's affine cells, DARTS's 36-channel 20-cell network); default None (none)."""
        return None

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

    def canonical(self, arch: Arch) -> Arch:
        """The representative of ``arch``'s isomorphism class (default: ``arch`` itself, validated)."""
        return self.validate(arch)

    def sample_cellwise(self, rng: random.Random) -> CellwiseArch:
        """One cell architecture per searched cell of the supernet, each drawn on its own (per-cell
        supernet training). Default: ``NotImplementedError`` -- the supernet takes one architecture
        shared by all its cells."""
        raise NotImplementedError(f"space {self.name!r} has no per-cell architectures: its supernet takes one "
                                  "architecture shared by all its cells")

    def fair_paths(self, rng: random.Random) -> Tuple[Arch, ...]:
        """``K`` architectures in which every choice of every gene appears exactly once (FairNAS's strict
        fairness; ``K`` = the number of choices per gene), randomly matched. Default:
        ``NotImplementedError`` -- the space's genes do not all have the same choices."""
        raise NotImplementedError(f"space {self.name!r} has no strictly fair paths: its genes do not all take "
                                  "the same set of choices")

    def presets(self, data: Optional[str] = None) -> Presets:
        """The flatness sigmas and training overrides this space recommends for the dataset ``data``
        (a dataset name or ``None``); default: GeNAS's NAS-Bench-201 sigmas, no training overrides."""
        return Presets()

    def cell_graph(self, arch: Arch) -> List[CellGraph]:
        """The searched cells of ``arch`` as graphs, one per cell kind (default: none; plots then show
        the text form)."""
        return []


class Supernet(nn.Module):
    """Base class of weight-sharing supernets: ``forward(x, arch)`` runs only the path of ``arch``."""

    space: Space

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def path_parameters(self, arch: Arch) -> List[Any]:
        """The parameters the path of ``arch`` uses, in ``named_parameters()`` order: names (whole
        tensors) or slices of them (``fastnas.ops.ParamSlice``)."""
        raise NotImplementedError

    def extract(self, arch: Arch, *, return_map: bool = False) -> Any:
        """A standalone module with the path's weights copied in; its outputs equal ``forward(x, arch)``.

        With ``return_map=True``: ``(module, name_map)``, where ``name_map`` maps every parameter name of
        the module to the supernet parameter (a name, or a slice) it was copied from. Scores use it to
        perturb the module with the supernet's noise layout.
        """
        raise NotImplementedError

    def angle_pieces(self, arch: Arch) -> Optional[Counter]:
        """The pieces of the path's weight vector for the angle score, with multiplicities.

        A piece is ``("param", name)`` (a path parameter or slice) or ``("const", kind, channels)`` (a
        constant tensor the reference code puts into the vector: ``"pool"``, ``(channels, 3, 3)`` of 1/9;
        ``"eye"``, the identity ``(channels, channels)``). ``None`` means every path is dropped (angle 0).
        Default: every path parameter once.
        """
        return Counter(("param", p) for p in self.path_parameters(arch))

    def searched_prefixes(self) -> Tuple[str, ...]:
        """Module-name prefixes (ending in ``"."``) of the searched cells: what flatness perturbs with
        ``scope="cells"``. Default: none."""
        return ()

    def batched_forward(self) -> Optional[BatchedForward]:
        """A :class:`BatchedForward` over this supernet (many candidates or weight sets in one pass), or
        ``None`` when the space has none (default)."""
        return None

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


class SpaceArgumentError(ValueError):
    """``create_space`` got a keyword the space does not take (e.g. ``backbone=`` for NAS-Bench-201)."""


def register_space(name: str) -> Callable[[Callable[..., Space]], Callable[..., Space]]:
    """Decorator registering a space constructor under ``name``."""

    def deco(fn: Callable[..., Space]) -> Callable[..., Space]:
        _SPACES[name] = fn
        return fn

    return deco


def list_spaces() -> List[str]:
    return sorted(_SPACES)


def create_space(name: str, **kwargs: Any) -> Space:
    """The space registered under ``name``; ``None`` keyword values keep the defaults.

    Every registered space takes the generic size keywords ``channels``, ``cells``, ``num_classes``,
    ``in_channels`` and ``resolution`` and maps them onto its own arguments (NB201: ``C``, ``N``; DARTS:
    ``C``, ``layers``), so a caller need not know the space.
    """
    if name not in _SPACES:
        hint = did_you_mean(name, list(_SPACES), n=3)
        raise ValueError(f"space={name!r} is not a known space; expected one of {list_spaces()}{hint}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(_SPACES[name]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in given if k not in params)
        if unknown:
            raise SpaceArgumentError(f"space {name!r} does not take {', '.join(f'{k}=' for k in unknown)} (it takes "
                             f"{', '.join(k for k in params)})")
    return _SPACES[name](**given)
