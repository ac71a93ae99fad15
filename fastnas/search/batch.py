"""The bookkeeping shared by searchers that propose a round of new architectures at a time.

:class:`BatchSearcher` implements ask/tell over a ``pending`` list: ``ask()`` proposes a round (all its
random draws happen there, before anything is scored) or returns what is left of the open one;
``tell()`` turns scores into records in ``history`` and closes the round when nothing is pending. A
snapshot taken in the middle of a round holds the scored records in ``history`` and the rest in
``pending``, so a restored searcher scores only the rest. Evolution, random and exhaustive search
differ only in how they propose a round and what they learn when it closes.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from fastnas.search.base import Searcher
from fastnas.search.history import Arch, Constraints, SearchRecord, canonical, make_record

__all__ = ["BatchSearcher", "rng_to_json", "rng_from_json", "check_state"]

Measured = Tuple[Optional[int], Optional[float]]


def rng_to_json(state: Tuple[Any, ...]) -> List[Any]:
    """``random.Random.getstate()`` as JSON-safe lists."""
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def rng_from_json(data: Sequence[Any]) -> Tuple[Any, ...]:
    """Inverse of :func:`rng_to_json` (an argument of ``random.Random.setstate``)."""
    version, internal, gauss_next = data
    return (int(version), tuple(int(v) for v in internal), gauss_next)


def check_state(d: Mapping[str, Any], version: int, space: Any, what: str,
                kind: Optional[str] = None) -> None:
    """``ValueError`` unless ``d`` is a ``what`` state (``d["kind"] == what``) of ``version`` for ``space``.

    ``kind``: the kind a state without a ``"kind"`` entry is taken to be (states saved before there was one).
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{what} state is a {type(d).__name__}: expected a dict from state_dict()")
    if d.get("kind", kind) != what:
        raise ValueError(f"this is a {d.get('kind', 'unknown')!r} searcher's state: expected a {what!r} state")
    if d.get("version") != version:
        raise ValueError(f"{what} state version {d.get('version')!r}: expected {version}")
    space_name = getattr(space, "name", None)
    if d.get("space") is not None and space_name is not None and d["space"] != space_name:
        raise ValueError(f"{what} state is of space {d['space']!r}, not {space_name!r}")


class BatchSearcher(Searcher):
    """A searcher that proposes rounds of new architectures and records every scored one.

    Subclasses implement :meth:`_propose` (the round's ``(arch, origin)`` pairs, never an architecture
    seen before), :meth:`_close_round` and :meth:`_nothing_new`, and the :attr:`done` property.

    Attributes:
        space: the search space.
        history: every scored record, in the order told.
        pending: ``(arch, origin)`` asked in the open round and not yet told; None when no round is open.
        measured: params/FLOPs of proposed architectures, measured once by the constraints check.
        equivalent: proposals not scored because an equivalent architecture (same ``space.canonical``)
            was scored or queued already; part of the state dict.
        admissible: an extra condition ``arch -> bool`` every proposal must meet (the
            :class:`~fastnas.search.history.Constraints` predicate; None: none). Not in the state dict:
            set it again after restoring a searcher.
    """

    def __init__(self, space: Any) -> None:
        self.space = space
        self.history: List[SearchRecord] = []
        self.pending: Optional[List[Tuple[Arch, str]]] = None
        self.measured: Dict[Arch, Measured] = {}
        self.equivalent = 0
        self.admissible: Optional[Callable[[Arch], bool]] = None

    def _constraints(self, max_params: Optional[float], max_flops: Optional[float]) -> Constraints:
        """The limits of a proposal, with :attr:`admissible` (read when a proposal is checked, so setting
        it after construction or after ``load_state_dict`` takes effect)."""
        return Constraints(max_params, max_flops, admissible=lambda arch: self.admissible is None
                           or bool(self.admissible(arch)))

    # ---- what a subclass decides

    @abc.abstractmethod
    def _propose(self) -> List[Tuple[Arch, str]]:
        """The next round's ``(arch, origin)`` pairs (empty: nothing new can be proposed)."""

    @abc.abstractmethod
    def _close_round(self) -> None:
        """Called once every architecture of the round has been told."""

    @abc.abstractmethod
    def _nothing_new(self) -> None:
        """Called when :meth:`_propose` found nothing: mark the search as finished."""

    def _generation(self) -> int:
        """The generation the records of the open round get."""
        return 0

    # ---- the protocol

    @property
    def seen(self) -> set:
        """The class representative (``space.canonical``) of every architecture scored or pending
        (derived: not stored in the state dict)."""
        space = self.space
        seen = {canonical(space, r.arch) for r in self.history}
        seen.update(canonical(space, arch) for arch, _ in self.pending or ())
        return seen

    @property
    def n_scored(self) -> int:
        return len(self.history)

    def ask(self) -> List[Arch]:
        if self.pending is None:
            if self.done:
                return []
            proposed = self._propose()
            if not proposed:
                self._nothing_new()
                return []
            self.pending = proposed
        return [arch for arch, _ in self.pending]

    def tell(self, archs: Sequence[Arch], scores: Sequence[Any]) -> List[SearchRecord]:
        archs, scores = list(archs), list(scores)
        if len(archs) != len(scores):
            raise ValueError(f"tell got {len(archs)} architectures but {len(scores)} scores")
        if not archs:
            return []
        if self.pending is None:
            raise ValueError("tell() with no open round: call ask() first")
        left = list(self.pending)
        taken: List[Tuple[Arch, str]] = []
        for arch in archs:
            # Candidates are usually told in the order asked: the match is then the first entry.
            at = next((i for i, (a, _) in enumerate(left) if a == arch), None)
            if at is None:
                raise ValueError(f"tell: architecture {self.space.format(arch)!r} was not asked in the open "
                                 f"round, or was told already")
            taken.append(left.pop(at))
        gen = self._generation()
        records = [make_record(self.space, arch, score, gen, origin, self.measured.pop(arch, None))
                   for (arch, origin), score in zip(taken, scores)]
        self.history.extend(records)
        self.pending = left
        if not left:
            self.pending = None
            self._close_round()
        return records

    # ---- pieces of the state dict

    def _pending_to_json(self) -> Optional[List[List[str]]]:
        fmt = self.space.format
        return None if self.pending is None else [[fmt(a), origin] for a, origin in self.pending]

    def _load_records(self, d: Mapping[str, Any]) -> None:
        """Restores ``history``, ``pending`` and ``equivalent`` from a state dict; clears ``measured``."""
        parse = self.space.parse
        pending = d.get("pending")
        self.pending = None if pending is None else [(parse(text), str(origin)) for text, origin in pending]
        self.history = [SearchRecord.from_dict(r, self.space) for r in d["history"]]
        self.measured = {}
        equivalent = d.get("equivalent", 0)  # states saved before the count existed: 0
        if isinstance(equivalent, bool) or not isinstance(equivalent, int) or equivalent < 0:
            raise ValueError(f"state equivalent={equivalent!r}: expected a count >= 0")
        self.equivalent = equivalent
