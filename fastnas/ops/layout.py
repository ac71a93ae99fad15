"""Stable global offsets of a model's parameters in the noise stream.

Noise for a tensor is taken at its layout offset, so perturbing any subset of a model's parameters
gives exactly the values that perturbing all of them gives on that subset (docs/noise.md).
"""

from __future__ import annotations

import weakref
from typing import Iterable, Iterator, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from fastnas._hints import did_you_mean

__all__ = ["ParamLayout", "resolve_params"]

NamedTensors = Union[Mapping[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]]


class ParamLayout:
    """Global element offsets for a named list of tensors.

    Args:
        entries: ``(name, numel)`` pairs in layout order; offsets are running sums of ``numel``.

    Example::

        layout = fastnas.ParamLayout.from_module(supernet)
        path = [(n, dict(supernet.named_parameters())[n]) for n in supernet.path_parameters(arch)]
        with fastnas.perturbed(path, 0.01, layout=layout):
            ...  # same noise on the path as perturbing the whole supernet
    """

    def __init__(self, entries: Sequence[Tuple[str, int]]):
        self._names: list[str] = []
        self._numels: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        self._by_id: dict[int, tuple[weakref.ref, str]] = {}
        total = 0
        for name, numel in entries:
            if not isinstance(name, str):
                raise TypeError(f"entries: names must be str, got {type(name).__name__} ({name!r})")
            if name in self._offsets:
                raise ValueError(f"entries: duplicate name {name!r}")
            numel = int(numel)
            if numel < 0:
                raise ValueError(f"entries: numel of {name!r} is {numel}; expected >= 0")
            self._names.append(name)
            self._numels[name] = numel
            self._offsets[name] = total
            total += numel
        self.total = total

    @classmethod
    def from_module(cls, module: nn.Module) -> "ParamLayout":
        """Layout of ``module.named_parameters()`` (shared parameters counted once)."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        return cls.from_named(module.named_parameters())

    @classmethod
    def from_named(cls, named: NamedTensors) -> "ParamLayout":
        """Layout of ``(name, tensor)`` pairs (or a mapping), in the given order."""
        pairs = list(named.items()) if isinstance(named, Mapping) else list(named)
        layout = cls([(n, t.numel()) for n, t in pairs])
        for n, t in pairs:
            layout._by_id[id(t)] = (weakref.ref(t), n)
        return layout

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[Tuple[str, int, int]]:
        """Yields ``(name, offset, numel)``."""
        for n in self._names:
            yield n, self._offsets[n], self._numels[n]

    def __contains__(self, name: object) -> bool:
        return name in self._offsets

    def offset(self, name: str) -> int:
        """Offset of ``name``; ``ValueError`` with close matches if it is not in the layout."""
        try:
            return self._offsets[name]
        except KeyError:
            hint = did_you_mean(str(name), self._names, n=3)
            raise ValueError(f"parameter {name!r} is not in this layout ({len(self)} tensors){hint}") from None

    def numel(self, name: str) -> int:
        self.offset(name)
        return self._numels[name]

    def name_of(self, tensor: torch.Tensor) -> str | None:
        """The name a tensor was registered under by ``from_module``/``from_named``, if any."""
        entry = self._by_id.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        return None

    def __repr__(self) -> str:
        return f"ParamLayout({len(self)} tensors, {self.total} elements)"


def resolve_params(params, layout: ParamLayout | None) -> tuple[list[torch.Tensor], list[int], ParamLayout | None]:
    """Turns the ``params`` argument of the perturbation API into tensors and layout offsets.

    ``params`` may be an ``nn.Module`` (all its parameters, layout from the module), a mapping or a
    sequence of ``(name, tensor)`` pairs (names looked up in ``layout``), or a sequence of tensors
    (looked up in ``layout`` by identity). Without a layout, offsets are the running element count.
    """
    if isinstance(params, torch.Tensor):
        raise TypeError("params: expected a list of tensors, an nn.Module or (name, tensor) pairs, got a single "
                        "Tensor; wrap it in a list: [tensor]")
    if isinstance(params, nn.Module):
        named = list(params.named_parameters())
        if layout is None:
            layout = ParamLayout.from_named(named)
    elif isinstance(params, Mapping):
        named = list(params.items())
    else:
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"params: expected a list of tensors, an nn.Module or (name, tensor) pairs, got "
                            f"{type(params).__name__}") from None
        if items and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in items):
            named = items
        else:
            for k, t in enumerate(items):
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"params[{k}]: expected a torch.Tensor, got {type(t).__name__}")
            if layout is None:
                offs, total = [], 0
                for t in items:
                    offs.append(total)
                    total += t.numel()
                return items, offs, None
            offs = []
            for k, t in enumerate(items):
                name = layout.name_of(t)
                if name is None:
                    raise ValueError(f"params[{k}] (shape {tuple(t.shape)}) is not a tensor of the given layout; "
                                     "pass (name, tensor) pairs or build the layout with ParamLayout.from_module")
                offs.append(layout.offset(name))
            return items, offs, layout
    tensors, offs, total = [], [], 0
    for k, (name, t) in enumerate(named):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"params[{k}] ({name!r}): expected a torch.Tensor, got {type(t).__name__}")
        tensors.append(t)
        if layout is None:
            offs.append(total)
            total += t.numel()
        else:
            if layout.numel(name) != t.numel():
                raise ValueError(f"params[{k}] ({name!r}) has {t.numel()} elements but the layout has "
                                 f"{layout.numel(name)} for that name")
            offs.append(layout.offset(name))
    return tensors, offs, layout
