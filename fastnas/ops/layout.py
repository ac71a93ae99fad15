"""Stable global offsets of a model's parameters in the noise stream, and slices of parameters.

Noise for a tensor is taken at its layout offset, so perturbing any subset of a model's parameters
gives exactly the values that perturbing all of them gives on that subset (docs/noise.md). A
:class:`ParamSlice` names a sub-box of one parameter (a nested family member's ``weight[:out, :in]``);
its elements keep the noise of their index in the full tensor.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import weakref
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

from fastnas._hints import did_you_mean

__all__ = ["ParamLayout", "ParamSlice", "Segment", "Segments", "path_params", "resolve_params", "MAX_OUTER_RANK"]

NamedTensors = Union[Mapping[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]]

# The kernels walk a segment as a grid of (size0, size1) contiguous runs; a box needing more outer
# dimensions (rare: three or more partial dims that cannot be merged) is split into several segments.
MAX_OUTER_RANK = 2


@dataclass(frozen=True)
class ParamSlice:
    """A sub-box of the parameter ``name``: half-open ranges over its leading dims, the rest whole.

    Args:
        name: the parameter's name in ``named_parameters()`` (and in the :class:`ParamLayout`).
        index: ``((start, stop), ...)`` over the first ``len(index)`` dims; ``start < stop``.

    Example::

        s = ParamSlice("conv.weight", ((0, 32), (0, 16)))   # weight[0:32, 0:16] (all of dims 2, 3)
        str(s)                       # 'conv.weight[0:32, 0:16]'
        s.shape_of((64, 32, 3, 3))   # (32, 16, 3, 3)
        s.view(conv.weight)          # the view conv.weight[0:32, 0:16]
    """

    name: str
    index: Tuple[Tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"ParamSlice.name: expected a non-empty str, got {self.name!r}")
        try:
            ranges = list(self.index)
        except TypeError:
            raise TypeError(f"ParamSlice {self.name!r}: index must be a sequence of (start, stop) pairs, got "
                            f"{self.index!r}") from None
        norm = []
        for d, r in enumerate(ranges):
            try:
                start, stop = r
            except (TypeError, ValueError):
                raise TypeError(f"ParamSlice {self.name!r}: index[{d}] = {r!r}; expected a (start, stop) pair "
                                "of ints") from None
            for v in (start, stop):
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise TypeError(f"ParamSlice {self.name!r}: index[{d}] = {r!r}; expected a (start, stop) "
                                    "pair of ints")
            start, stop = int(start), int(stop)
            if start < 0 or stop <= start:
                raise ValueError(f"ParamSlice {self.name!r}: range {start}:{stop} of dim {d} is empty or "
                                 "negative; expected 0 <= start < stop")
            norm.append((start, stop))
        object.__setattr__(self, "index", tuple(norm))

    def __str__(self) -> str:
        return f"{self.name}[{', '.join(f'{a}:{b}' for a, b in self.index)}]" if self.index else f"{self.name}[:]"

    def _ranges(self, full_shape: Sequence[int]) -> list[tuple[int, int]]:
        """The box's range on every dim of ``full_shape``; ValueError when it does not fit."""
        full = [int(n) for n in full_shape]
        if len(self.index) > len(full):
            raise ValueError(f"ParamSlice {self}: {len(self.index)} ranges for a tensor of shape {tuple(full)} "
                             f"({len(full)} dims); expected at most {len(full)}")
        for d, ((start, stop), n) in enumerate(zip(self.index, full)):
            if stop > n:
                raise ValueError(f"ParamSlice {self}: range {start}:{stop} of dim {d} is out of bounds for "
                                 f"shape {tuple(full)}; expected stop <= {n}")
        return list(self.index) + [(0, n) for n in full[len(self.index):]]

    def shape_of(self, full_shape: Sequence[int]) -> tuple:
        """Shape of the box inside a tensor of shape ``full_shape``."""
        return tuple(b - a for a, b in self._ranges(full_shape))

    def numel(self, full_shape: Sequence[int]) -> int:
        """Number of elements of the box inside a tensor of shape ``full_shape``."""
        n = 1
        for s in self.shape_of(full_shape):
            n *= s
        return n

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The view ``tensor[s0:e0, s1:e1, ...]`` (shares memory with ``tensor``)."""
        self._ranges(tensor.shape)
        return tensor[tuple(slice(a, b) for a, b in self.index)]


class ParamLayout:
    """Global element offsets for a named list of tensors.

    Args:
        entries: ``(name, numel)`` pairs in layout order (offsets are running sums of ``numel``), or an
            ``nn.Module`` (the same as :meth:`from_module`).

    Example::

        layout = fastnas.ParamLayout(supernet)
        path = fastnas.ops.path_params(supernet, supernet.path_parameters(arch))
        with fastnas.perturbed(path, 0.01, layout=layout):
            ...  # same noise on the path (whole tensors or slices) as perturbing the whole supernet
    """

    def __init__(self, entries: Union[Sequence[Tuple[str, int]], nn.Module]):
        self._names: list[str] = []
        self._numels: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        self._by_id: dict[int, tuple[weakref.ref, str]] = {}
        tensors = None
        if isinstance(entries, nn.Module):
            tensors = list(entries.named_parameters())
            entries = [(n, t.numel()) for n, t in tensors]
        elif isinstance(entries, torch.Tensor):
            raise TypeError("entries: expected (name, numel) pairs or an nn.Module, got a Tensor; use "
                            "ParamLayout.from_named([(name, tensor), ...])")
        total = 0
        for k, entry in enumerate(entries):
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
                raise TypeError(f"entries[{k}]: expected a (name, numel) pair, got {type(entry).__name__}; "
                                "pass an nn.Module (or use ParamLayout.from_module) for a model's parameters")
            name, numel = entry
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
        if tensors is not None:
            self._register(tensors)

    def _register(self, pairs) -> None:
        for n, t in pairs:
            self._by_id[id(t)] = (weakref.ref(t), n)

    @classmethod
    def from_module(cls, module: nn.Module) -> "ParamLayout":
        """Layout of ``module.named_parameters()`` (shared parameters counted once)."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        return cls(module)

    @classmethod
    def from_named(cls, named: NamedTensors) -> "ParamLayout":
        """Layout of ``(name, tensor)`` pairs (or a mapping), in the given order."""
        pairs = list(named.items()) if isinstance(named, Mapping) else list(named)
        layout = cls([(n, t.numel()) for n, t in pairs])
        layout._register(pairs)
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
        if isinstance(name, ParamSlice):
            name = name.name
        return name in self._offsets

    def offset(self, name: Union[str, ParamSlice]) -> int:
        """Offset of the tensor ``name`` (of a slice: of its full tensor); ValueError with close matches."""
        if isinstance(name, ParamSlice):
            name = name.name
        try:
            return self._offsets[name]
        except (KeyError, TypeError):
            hint = did_you_mean(str(name), self._names, n=3)
            raise ValueError(f"parameter {name!r} is not in this layout ({len(self)} tensors){hint}") from None

    def numel(self, name: Union[str, ParamSlice]) -> int:
        """Elements of the tensor ``name`` (of a slice: of its full tensor)."""
        self.offset(name)
        return self._numels[name.name if isinstance(name, ParamSlice) else name]

    def name_of(self, tensor: torch.Tensor) -> str | None:
        """The name a tensor was registered under by ``from_module``/``from_named``, if any."""
        entry = self._by_id.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        return None

    def __repr__(self) -> str:
        return f"ParamLayout({len(self)} tensors, {self.total} elements)"


def path_params(model: nn.Module, entries: Iterable[Union[str, ParamSlice]]) -> list:
    """Path entries (names and :class:`ParamSlice`) as the ``params`` the perturbation kernels take.

    Args:
        model: the module owning the parameters (e.g. a supernet).
        entries: what ``Supernet.path_parameters(arch)`` returns: parameter names and slices.

    Returns:
        ``(name, tensor)`` for each name and ``(slice, full_tensor)`` for each slice, in order. Pass them
        with ``layout=ParamLayout(model)`` to get the noise that perturbing the whole model gives there.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    out = []
    for k, entry in enumerate(entries):
        if isinstance(entry, ParamSlice):
            name = entry.name
        elif isinstance(entry, str):
            name = entry
        else:
            raise TypeError(f"entries[{k}]: expected a parameter name (str) or a ParamSlice, got "
                            f"{type(entry).__name__} ({entry!r})")
        if name not in named:
            hint = did_you_mean(name, list(named), n=3)
            raise ValueError(f"entries[{k}]: {type(model).__name__} has no parameter {name!r}{hint}")
        tensor = named[name]
        if isinstance(entry, ParamSlice):
            entry._ranges(tensor.shape)
        out.append((entry, tensor))
    return out


# ---- what the kernels visit ----------------------------------------------------------------------

class Segment:
    """A part of one contiguous tensor that a kernel visits: ``size0 * size1`` runs of ``run`` elements.

    Run ``r = i0 * size1 + i1`` starts at flat element ``start + i0 * stride0 + i1 * stride1`` of
    ``tensor``; an element at flat index ``f`` of ``tensor`` gets the noise of global index
    ``offset + f``. A whole tensor is one run (``start = 0, run = numel``). ``entry`` is the index of the
    ``params`` entry the segment belongs to, ``pos`` its first element's place in that entry's packed
    (row-major, contiguous) box of shape :attr:`shape`; ``box`` is a slice's range on every dim.
    """

    # Class-level defaults describe a whole tensor, so building one (the hot path of every perturb_
    # call) sets only what differs per tensor.
    whole = True
    start = 0
    size0 = size1 = 1
    stride0 = stride1 = 0
    pos = 0
    box = None
    _shape = None

    def __init__(self, tensor: torch.Tensor, offset: int, entry: int, label: object):
        self.tensor = tensor
        self.offset = offset
        self.entry = entry
        self.label = label
        self.numel = self.run = tensor.numel()

    @classmethod
    def of_box(cls, tensor: torch.Tensor, offset: int, entry: int, label: object, shape: tuple, box: list,
               start: int, run: int, size0: int = 1, size1: int = 1, stride0: int = 0, stride1: int = 0,
               pos: int = 0) -> "Segment":
        seg = cls(tensor, offset, entry, label)
        seg.whole = False
        seg._shape, seg.box = shape, box
        seg.start, seg.run, seg.pos = start, run, pos
        seg.size0, seg.size1, seg.stride0, seg.stride1 = size0, size1, stride0, stride1
        seg.numel = run * size0 * size1
        return seg

    @property
    def shape(self) -> tuple:
        """Shape of the entry: the tensor's, or the slice's box."""
        return tuple(self.tensor.shape) if self._shape is None else self._shape

    def view(self) -> torch.Tensor:
        """The segment as a ``(size0, size1, run)`` strided view of its tensor."""
        t = self.tensor
        return t.as_strided((self.size0, self.size1, self.run), (self.stride0, self.stride1, 1),
                            t.storage_offset() + self.start)

    def flat_indices(self) -> torch.Tensor:
        """int64 ``(size0, size1, run)``: each element's flat index in its tensor."""
        dev = self.tensor.device
        i0 = torch.arange(self.size0, device=dev, dtype=torch.int64).view(-1, 1, 1) * self.stride0
        i1 = torch.arange(self.size1, device=dev, dtype=torch.int64).view(1, -1, 1) * self.stride1
        j = torch.arange(self.run, device=dev, dtype=torch.int64).view(1, 1, -1)
        return self.start + i0 + i1 + j

    def geometry(self) -> tuple:
        return (self.start, self.run, self.size0, self.size1, self.stride0, self.stride1)


@functools.lru_cache(maxsize=4096)
def _box_geometry(s: ParamSlice, full: tuple) -> tuple:
    """``(box shape, ranges, segments)`` of the box ``s`` in a contiguous tensor of shape ``full``; each
    segment ``(start, run, size0, size1, stride0, stride1, pos)``. Cached: a search asks for the same
    boxes again and again."""
    ranges = tuple(s._ranges(full))
    shape = tuple(b - a for a, b in ranges)
    strides = [1] * len(full)
    for d in range(len(full) - 2, -1, -1):
        strides[d] = strides[d + 1] * full[d + 1]
    start = sum(a * st for (a, _), st in zip(ranges, strides))
    partial = [d for d in range(len(full)) if shape[d] != full[d]]
    if not partial:
        return shape, ranges, ((0, math.prod(full), 1, 1, 0, 0, 0),)
    m = partial[-1]
    run = shape[m] * strides[m]
    outer: list[list[int]] = []  # [size, stride], merged where contiguous, size-1 dims dropped
    for d in range(m):
        if shape[d] == 1:
            continue
        if outer and outer[-1][1] == shape[d] * strides[d]:
            outer[-1] = [outer[-1][0] * shape[d], strides[d]]
        else:
            outer.append([shape[d], strides[d]])
    lead, tail = outer[:-MAX_OUTER_RANK] if len(outer) > MAX_OUTER_RANK else [], outer[-MAX_OUTER_RANK:]
    while len(tail) < MAX_OUTER_RANK:
        tail.insert(0, [1, 0])
    (size0, stride0), (size1, stride1) = tail
    per = size0 * size1 * run
    segs = []
    for k, idx in enumerate(itertools.product(*[range(n) for n, _ in lead])):
        base = start + sum(i * st for i, (_, st) in zip(idx, lead))
        segs.append((base, run, size0, size1, stride0, stride1, k * per))
    return shape, ranges, tuple(segs)


def _slice_segments(s: ParamSlice, tensor: torch.Tensor, offset: int, entry: int) -> list[Segment]:
    """The box ``s`` of ``tensor`` as segments of at most MAX_OUTER_RANK outer dims."""
    shape, ranges, parts = _box_geometry(s, tuple(tensor.shape))
    return [Segment.of_box(tensor, offset, entry, s, shape, ranges, *part) for part in parts]


class Segments(list):
    """The segments of one call; ``whole`` is True when every one is a whole tensor (no slices)."""

    whole = True


def resolve_params(params, layout: ParamLayout | None) -> Segments:
    """Turns the ``params`` argument of the perturbation API into the segments the kernels visit.

    ``params`` may be an ``nn.Module`` (all its parameters, layout from the module), a mapping or a
    sequence of ``(name, tensor)`` / ``(ParamSlice, full_tensor)`` pairs (names looked up in
    ``layout``), or a sequence of tensors (looked up in ``layout`` by identity). Without a layout,
    offsets are the running element count of the distinct (full) tensors.
    """
    if isinstance(params, torch.Tensor):
        raise TypeError("params: expected a list of tensors, an nn.Module or (name, tensor) pairs, got a single "
                        "Tensor; wrap it in a list: [tensor]")
    if isinstance(params, nn.Module):
        named = list(params.named_parameters())
        if layout is None:
            layout = ParamLayout(params)
    elif isinstance(params, Mapping):
        named = list(params.items())
    else:
        try:
            named = list(params)
        except TypeError:
            raise TypeError(f"params: expected a list of tensors, an nn.Module or (name, tensor) pairs, got "
                            f"{type(params).__name__}") from None
        if named and not isinstance(named[0], tuple):
            return _resolve_tensors(named, layout)
    segs = Segments()
    seen: dict = {}  # without a layout: one offset per distinct full tensor (slices of it share it)
    total = 0
    offsets = layout._offsets if layout is not None else None
    numels = layout._numels if layout is not None else None
    for k, item in enumerate(named):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"params[{k}]: expected a (name or ParamSlice, tensor) pair like the other entries, "
                            f"got {type(item).__name__}")
        key, t = item
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"params[{k}] ({str(key)!r}): expected a torch.Tensor, got {type(t).__name__}")
        if type(key) is str:
            name, is_slice = key, False
        elif isinstance(key, ParamSlice):
            name, is_slice = key.name, True
        elif isinstance(key, str):
            name, is_slice = key, False
        else:
            raise TypeError(f"params[{k}]: expected a name (str) or a ParamSlice as key, got {type(key).__name__}")
        if offsets is None:
            ident = (t.data_ptr(), tuple(t.shape), t.dtype, t.device) if is_slice else None
            if ident is not None and ident in seen:
                off = seen[ident]
            else:
                off = total
                total += t.numel()
                if ident is not None:
                    seen[ident] = off
        else:
            off = offsets[name] if name in offsets else layout.offset(name)
            if numels[name] != t.numel():
                raise ValueError(f"params[{k}] ({name!r}) has {t.numel()} elements but the layout has "
                                 f"{numels[name]} for that name"
                                 + ("; a ParamSlice is paired with its FULL tensor" if is_slice else ""))
        if is_slice:
            segs.extend(_slice_segments(key, t, off, k))
            segs.whole = False
        else:
            segs.append(Segment(t, off, k, name))
    return segs


def _resolve_tensors(items: list, layout: ParamLayout | None) -> Segments:
    segs, total = Segments(), 0
    for k, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"params[{k}]: expected a torch.Tensor or a (name or ParamSlice, tensor) pair, "
                            f"got {type(t).__name__}")
        if layout is None:
            segs.append(Segment(t, total, k, f"params[{k}]"))
            total += t.numel()
            continue
        name = layout.name_of(t)
        if name is None:
            raise ValueError(f"params[{k}] (shape {tuple(t.shape)}) is not a tensor of the given layout; "
                             "pass (name, tensor) pairs or build the layout with ParamLayout.from_module")
        segs.append(Segment(t, layout.offset(name), k, name))
    return segs
