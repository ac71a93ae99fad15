"""The angle score (RLNAS "ABS"): how far a candidate's weights moved from their initial values.

``angle = arccos(cos(v_0, v_T))`` between the candidate's weight vector at initialisation ``v_0`` and
after supernet training ``v_T`` (GeNAS divides by pi, giving a value in ``[0, 1]``). The vector follows the
RLNAS code (see docs REFERENCES.md):

* **NAS-Bench-201** — for each input-to-output path ``[0,3], [0,2,3], [0,1,2,3], [0,1,3]`` of every search
  cell, the weights along the path: a convolution op its conv weight, ``avg_pool_3x3`` a constant
  ``(C, 3, 3)`` tensor of 1/9, ``skip_connect`` nothing; a ``none`` edge drops the path (in every cell).
  Fixed parts: the stem, the two residual blocks, the final BatchNorm and the classifier (every
  parameter outside the search cells). If every path is dropped the angle is 0.
* **DARTS** — per cell the 30 paths from a cell input (0 or 1) to an intermediate node; an edge that the
  genotype does not have drops the path. ``sep_conv``/``dil_conv`` contribute all their parameters
  (convolutions, and BatchNorm affine pairs where the BN is affine), pooling a constant ``(C, 3, 3)``
  tensor of 1/9 plus its BatchNorm's parameters, ``skip_connect`` an identity matrix ``eye(C)`` (stride 1)
  or its FactorizedReduce parameters (stride 2). Fixed parts: the stem, the preprocessing of every
  cell, the classifier weight.
* **Other supernets** — the concatenation of ``supernet.path_parameters(arch)``.

An edge on several paths contributes once per path, as in the reference code. The vector is never
materialised: the cosine needs only ``sum(a*b)``, ``sum(a*a)`` and ``sum(b*b)`` per piece, accumulated in
float64 with each piece's multiplicity.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from fastnas._hints import did_you_mean

__all__ = ["angle", "AngleScorer", "angle_pieces", "ANGLE_CONVENTIONS"]

ANGLE_CONVENTIONS = ("auto", "rlnas", "params")

#: NB201 paths through the 4-node cell (node indices), as in the RLNAS code.
NB201_PATHS = ((0, 3), (0, 2, 3), (0, 1, 2, 3), (0, 1, 3))


def _darts_paths(steps: int) -> List[Tuple[int, ...]]:
    """Every path from a cell input (0 or 1) to an intermediate node (2 .. steps + 1); 30 for 4 steps."""
    out: List[Tuple[int, ...]] = []

    def walk(path: Tuple[int, ...]) -> None:
        for nxt in range(max(path[-1] + 1, 2), steps + 2):
            p = path + (nxt,)
            out.append(p)
            walk(p)

    for start in (0, 1):
        walk((start,))
    return out


# A piece is ("param", name) or ("const", kind, size): kind "pool" (1/9 entries) or "eye" (identity C x C).
Piece = Tuple[Any, ...]


def _nb201_pieces(supernet: nn.Module, arch: Any) -> Optional[Counter]:
    from fastnas.spaces.nb201_ops import EDGES, SuperCell
    a = supernet.space.validate(arch)
    edge_of = {(to, src): k for k, (to, src) in enumerate(EDGES)}
    pieces: Counter = Counter()
    cell_ids = [i for i, c in enumerate(supernet.cells) if isinstance(c, SuperCell)]
    kept = 0
    for path in NB201_PATHS:
        edges = [edge_of[(path[t], path[t - 1])] for t in range(1, len(path))]
        if any(a[k] == "none" for k in edges):
            continue
        kept += 1
        for i in cell_ids:
            for k in edges:
                op = a[k]
                if op in ("nor_conv_1x1", "nor_conv_3x3"):
                    pieces[("param", f"cells.{i}.edges.{k}.{op}.1.weight")] += 1
                elif op == "avg_pool_3x3":
                    c = supernet.cells[i].edges[k]["nor_conv_3x3"][1].weight.shape[0]
                    pieces[("const", "pool", c)] += 1
    if kept == 0:
        return None
    cell_prefixes = tuple(f"cells.{i}." for i in cell_ids)
    for name, _ in supernet.named_parameters():
        if not name.startswith(cell_prefixes):
            pieces[("param", name)] += 1
    return pieces


def _module_params(module: nn.Module, prefix: str) -> List[str]:
    return [f"{prefix}{n}" for n, _ in module.named_parameters()]


def _darts_pieces(supernet: nn.Module, arch: Any) -> Counter:
    from fastnas.spaces.darts_ops import FactorizedReduce
    g = supernet.space.validate(arch)
    steps = supernet.space.steps
    paths = _darts_paths(steps)
    pieces: Counter = Counter()
    for name in _module_params(supernet.stem, "stem."):
        pieces[("param", name)] += 1
    for i, cell in enumerate(supernet.cells):
        for pre in ("preprocess0", "preprocess1"):
            for name in _module_params(getattr(cell, pre), f"cells.{i}.{pre}."):
                pieces[("param", name)] += 1
        genes = g.reduce if cell.reduction else g.normal
        # (input j -> node n) -> op, nodes numbered 2.. as in DARTS
        ops = {(j, 2 + e // 2): op for e, (op, j) in enumerate(genes)}
        for path in paths:
            hops = [(path[t - 1], path[t]) for t in range(1, len(path))]
            if any(h not in ops for h in hops):
                continue
            for j, n in hops:
                op = ops[(j, n)]
                e = cell.edge_index(n - 2, j)
                module = cell.edges[e][op]
                prefix = f"cells.{i}.edges.{e}.{op}."
                if op in ("max_pool_3x3", "avg_pool_3x3"):
                    pieces[("const", "pool", cell.C)] += 1
                elif op == "skip_connect" and not isinstance(module, FactorizedReduce):
                    pieces[("const", "eye", cell.C)] += 1
                for name in _module_params(module, prefix):
                    pieces[("param", name)] += 1
    pieces[("param", "classifier.weight")] += 1
    return pieces


def _space_name(supernet: nn.Module) -> str:
    space = getattr(supernet, "space", None)
    return getattr(space, "name", "") or ""


def angle_pieces(supernet: nn.Module, arch: Any, convention: str = "auto") -> Optional[Counter]:
    """The pieces of the candidate's weight vector with their multiplicities, or ``None`` when every path
    is dropped (NB201). A piece is ``("param", name)`` or ``("const", "pool"|"eye", channels)``."""
    if convention not in ANGLE_CONVENTIONS:
        from fastnas.metrics.evaluator import check_choice
        check_choice("convention", convention, ANGLE_CONVENTIONS)
    name = _space_name(supernet)
    if convention in ("auto", "rlnas") and name == "nb201":
        return _nb201_pieces(supernet, arch)
    if convention in ("auto", "rlnas") and name == "darts":
        return _darts_pieces(supernet, arch)
    if convention == "rlnas":
        raise NotImplementedError(f"convention='rlnas' is defined for the 'nb201' and 'darts' spaces, not "
                                  f"{name!r}; use convention='params'")
    if not hasattr(supernet, "path_parameters"):
        raise ValueError(f"supernet: {type(supernet).__name__} has no path_parameters(arch); expected a Supernet")
    return Counter(("param", n) for n in supernet.path_parameters(arch))


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
        convention: ``"auto"`` (RLNAS vectors for NB201 and DARTS, else path parameters), ``"rlnas"`` or
            ``"params"`` (the concatenated ``path_parameters``).

    Returns:
        The angle; 0 when every path is dropped (an NB201 cell whose output is cut off by ``none`` edges).

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
        self._stats: Dict[str, Tuple[Tuple[int, int], Tuple[float, float, float]]] = {}
        self._params = dict(supernet.named_parameters())

    def _stat(self, name: str) -> Tuple[float, float, float]:
        p = self._params.get(name)
        if p is None:
            raise ValueError(f"the angle vector names {name!r}, which is not a parameter of the supernet")
        if name not in self.initial_state:
            hint = did_you_mean(name, list(self.initial_state), n=2)
            raise ValueError(f"initial_state has no entry {name!r} (expected the supernet's state_dict before "
                             f"training){hint}")
        key = (id(p), p._version)
        hit = self._stats.get(name)
        if self.cache and hit is not None and hit[0] == key:
            return hit[1]
        s = _param_stats(self.initial_state[name], p)
        if self.cache:
            self._stats[name] = (key, s)
        return s

    def __call__(self, arch: Any) -> float:
        pieces = angle_pieces(self.supernet, arch, self.convention)
        if pieces is None:
            return 0.0
        with torch.no_grad():
            stats = {p[1]: self._stat(p[1]) for p in pieces if p[0] == "param"}
        return _combine(pieces, stats, self.normalize)
