"""The angle score (RLNAS "ABS"): how far a candidate's weights moved from their initial values.

``angle = arccos(cos(v_0, v_T))`` between the candidate's weight vector at initialisation ``v_0`` and
after supernet training ``v_T`` (GeNAS divides by pi, giving a value in ``[0, 1]``). Which weights form the
vector is the space's knowledge: :meth:`~fastnas.spaces.base.Supernet.angle_pieces` lists its pieces
(e.g. the NB201 and DARTS supernets follow the RLNAS code, where an edge on several cell paths counts once
per path and pooling/identity ops contribute constant tensors); a supernet that defines none uses its
path parameters.

The vector is never materialised: the cosine needs only ``sum(a*b)``, ``sum(a*a)`` and ``sum(b*b)`` per
piece, accumulated in float64 with each piece's multiplicity.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from fastnas._hints import did_you_mean
from fastnas.spaces.base import Supernet

__all__ = ["angle", "AngleScorer", "angle_pieces", "ANGLE_CONVENTIONS"]

#: ``"auto"``: the space's vector (``supernet.angle_pieces``); ``"rlnas"``: the same, but an error for a
#: supernet that does not define its own; ``"params"``: the concatenated path parameters.
ANGLE_CONVENTIONS = ("auto", "rlnas", "params")

# A piece is ("param", name) or ("const", kind, size): kind "pool" (1/9 entries) or "eye" (identity C x C).
Piece = Tuple[Any, ...]


def _path_pieces(supernet: nn.Module, arch: Any) -> Counter:
    if not hasattr(supernet, "path_parameters"):
        raise ValueError(f"supernet: {type(supernet).__name__} has no path_parameters(arch); expected a Supernet")
    return Counter(("param", n) for n in supernet.path_parameters(arch))


def _own_pieces(supernet: nn.Module) -> bool:
    """Whether the supernet defines its own angle vector (not the base class's path parameters)."""
    method = getattr(type(supernet), "angle_pieces", None)
    return method is not None and method is not Supernet.angle_pieces


def angle_pieces(supernet: nn.Module, arch: Any, convention: str = "auto") -> Optional[Counter]:
    """The pieces of the candidate's weight vector with their multiplicities, or ``None`` when every path
    is dropped. A piece is ``("param", name)`` or ``("const", "pool"|"eye", channels)``; see
    :data:`ANGLE_CONVENTIONS`."""
    if convention not in ANGLE_CONVENTIONS:
        from fastnas.metrics.evaluator import check_choice
        check_choice("convention", convention, ANGLE_CONVENTIONS)
    if convention == "params":
        return _path_pieces(supernet, arch)
    if _own_pieces(supernet):
        return supernet.angle_pieces(arch)
    if convention == "rlnas":
        name = getattr(getattr(supernet, "space", None), "name", type(supernet).__name__)
        raise NotImplementedError(f"convention='rlnas': the supernet of space {name!r} defines no angle vector "
                                  f"of its own (angle_pieces); use convention='params'")
    return _path_pieces(supernet, arch)


def _const_stats(kind: str, c: int) -> float:
    """``sum(v * v)`` of a constant piece (the same vector at init and after training)."""
    if kind == "pool":
        return c * 9 / 81.0
    if kind == "eye":
        return float(c)
    raise ValueError(f"unknown constant piece {kind!r}")


def _param_stats(init: torch.Tensor, now: torch.Tensor) -> Tuple[float, float, float]:
    a = init.detach().to(device=now.device, dtype=torch.float64).reshape(-1)
    b = now.detach().to(torch.float64).reshape(-1)
    if a.numel() != b.numel():
        raise ValueError(f"initial_state has {a.numel()} elements where the supernet has {b.numel()}")
    s = torch.stack([torch.dot(a, b), torch.dot(a, a), torch.dot(b, b)])
    return tuple(s.tolist())  # type: ignore[return-value]


def _combine(pieces: Counter, stats: Mapping[str, Tuple[float, float, float]], normalize: bool) -> float:
    dot = na = nb = 0.0
    for piece, count in pieces.items():
        if piece[0] == "param":
            d, x, y = stats[piece[1]]
        else:
            d = x = y = _const_stats(piece[1], piece[2])
        dot += count * d
        na += count * x
        nb += count * y
    if na == 0.0 or nb == 0.0:
        cos = 1.0  # a zero vector: no direction to have moved (as cosine_similarity with its eps, ~0)
    else:
        cos = dot / math.sqrt(na * nb)
    if not math.isfinite(cos):
        return float("nan")
    theta = math.acos(min(1.0, max(-1.0, cos)))
    return theta / math.pi if normalize else theta


def _check_state(initial_state: Any) -> Mapping[str, torch.Tensor]:
    if not isinstance(initial_state, Mapping):
        raise ValueError(f"initial_state: expected a state_dict (name -> tensor) of the supernet before "
                         f"training, got {type(initial_state).__name__}")
    return initial_state


def angle(supernet: nn.Module, arch: Any, initial_state: Mapping[str, torch.Tensor], *, normalize: bool = True,
          convention: str = "auto") -> float:
    """The angle between the candidate's initial and current weights.

    Args:
        supernet: the trained supernet.
        arch: the candidate.
        initial_state: the supernet's ``state_dict`` before training (e.g. ``TrainResult.initial_state``).
        normalize: divide by pi (GeNAS), giving ``[0, 1]``; else radians (RLNAS).
        convention: ``"auto"`` (the space's vector, ``supernet.angle_pieces``, where it defines one; else
            the path parameters), ``"rlnas"`` or ``"params"`` (the concatenated ``path_parameters``).

    Returns:
        The angle; 0 when every path is dropped (e.g. an NB201 cell whose output is cut off by ``none``
        edges).

    Equivalent plain PyTorch (``v0``, ``vT``: the concatenated pieces)::

        torch.acos(torch.nn.functional.cosine_similarity(v0, vT, dim=0)) / math.pi
    """
    return AngleScorer(supernet, initial_state, normalize=normalize, convention=convention, cache=False)(arch)


class AngleScorer:
    """Angles of many candidates of one supernet, with the per-parameter sums cached.

    The cache is keyed by each parameter's identity and version counter, so it is recomputed after any
    in-place change of the weights (training, a perturbation).
    """

    def __init__(self, supernet: nn.Module, initial_state: Mapping[str, torch.Tensor], *, normalize: bool = True,
                 convention: str = "auto", cache: bool = True) -> None:
        self.supernet = supernet
        self.initial_state = _check_state(initial_state)
        self.normalize = bool(normalize)
        self.convention = convention
        self.cache = bool(cache)
        self._stats: Dict[Any, Tuple[Tuple[int, int], Tuple[float, float, float]]] = {}
        self._params = dict(supernet.named_parameters())

    def _stat(self, entry: Any) -> Tuple[float, float, float]:
        """The sums of a path entry: a parameter name, or a slice of one (``.name``, ``.view(tensor)``)."""
        name = entry if isinstance(entry, str) else getattr(entry, "name", None)
        p = self._params.get(name) if isinstance(name, str) else None
        if p is None:
            raise ValueError(f"the angle vector names {entry!r}, which is not a parameter of the supernet")
        if name not in self.initial_state:
            hint = did_you_mean(name, list(self.initial_state), n=2)
            raise ValueError(f"initial_state has no entry {name!r} (expected the supernet's state_dict before "
                             f"training){hint}")
        key = (id(p), p._version)
        hit = self._stats.get(entry)
        if self.cache and hit is not None and hit[0] == key:
            return hit[1]
        init = self.initial_state[name]
        if isinstance(entry, str):
            s = _param_stats(init, p)
        else:
            s = _param_stats(entry.view(init), entry.view(p))
        if self.cache:
            self._stats[entry] = (key, s)
        return s

    def __call__(self, arch: Any) -> float:
        pieces = angle_pieces(self.supernet, arch, self.convention)
        if pieces is None:
            return 0.0
        with torch.no_grad():
            stats = {p[1]: self._stat(p[1]) for p in pieces if p[0] == "param"}
        return _combine(pieces, stats, self.normalize)
