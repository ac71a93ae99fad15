"""What every searcher records: one ``SearchRecord`` per scored architecture, and the ``SearchResult``.

Also the pieces the searchers share: turning a score function's answer into a ``Score``, the ranking
order, the params/FLOPs constraints and JSON-safe floats. Pure Python; no tensors.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Tuple, Union

from fastnas.metrics.combine import Score

__all__ = ["SearchRecord", "SearchResult", "Constraints", "Proposer", "ScoreFn", "Callback", "ORIGINS",
           "best_of", "canonical", "coerce_score", "make_record", "score_arch", "top_indices"]

Arch = Hashable
ScoreFn = Callable[[Arch], Union[float, Score]]
Callback = Callable[[str, Dict[str, Any]], None]

ORIGINS = ("random", "mutation", "crossover", "exhaustive")


def encode_float(value: Any) -> Any:
    """JSON-safe form of a number: NumPy/torch scalars become Python numbers and non-finite floats the
    strings 'nan', 'inf', '-inf'; anything else is returned unchanged."""
    if not isinstance(value, (bool, int, float, str)) and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def decode_float(value: Any) -> Any:
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def coerce_score(result: Any) -> Score:
    """A ``Score`` from what a score function returned (a number or an object with ``.value``).

    A non-finite value is always flagged.
    """
    if isinstance(result, Score):
        score = result
    elif hasattr(result, "value"):
        score = Score(value=float(result.value), parts=dict(getattr(result, "parts", {}) or {}),
                      flagged=bool(getattr(result, "flagged", False)))
    else:
        try:
            score = Score(value=float(result))
        except (TypeError, ValueError):
            raise ValueError(f"score function returned {result!r}: expected a number or a Score") from None
    value = float(score.value)
    flagged = bool(score.flagged) or not math.isfinite(value)
    if value is not score.value or flagged != score.flagged:
        score = Score(value=value, parts=dict(score.parts), flagged=flagged)
    return score


@dataclass(frozen=True)
class SearchRecord:
    """One scored architecture.

    Attributes:
        generation: the generation it was scored in (0 for random and exhaustive search).
        arch: the architecture value.
        text: its canonical text form (``space.format(arch)``).
        score: the ranking value (higher is better; may be NaN/inf, then ``flagged`` is True).
        parts: named score components.
        flagged: the score is suspect; flagged records rank below every unflagged one.
        params: ``space.params(arch)``, or None where the space cannot tell.
        flops: ``space.flops(arch)`` (millions), or None where the space cannot tell.
        origin: how it was proposed: 'random', 'mutation', 'crossover' or 'exhaustive'.
    """

    generation: int
    arch: Arch
    text: str
    score: float
    parts: Mapping[str, Any] = field(default_factory=dict)
    flagged: bool = False
    params: Optional[int] = None
    flops: Optional[float] = None
    origin: str = "random"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict (the architecture as its text)."""
        return {
            "generation": self.generation, "text": self.text, "score": encode_float(self.score),
            "parts": {k: encode_float(v) for k, v in self.parts.items()}, "flagged": self.flagged,
            "params": encode_float(self.params), "flops": encode_float(self.flops), "origin": self.origin,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], space: Any) -> "SearchRecord":
        text = d["text"]
        return cls(generation=int(d["generation"]), arch=space.parse(text), text=text,
                   score=float(decode_float(d["score"])),
                   parts={k: decode_float(v) for k, v in dict(d.get("parts") or {}).items()},
                   flagged=bool(d.get("flagged", False)), params=d.get("params"),
                   flops=decode_float(d.get("flops")), origin=str(d.get("origin", "random")))


def rank_key(record: SearchRecord, index: int) -> Tuple[bool, float, int]:
    """Sort key, best first: unflagged before flagged, then higher score, then first seen."""
    bad = record.flagged or not math.isfinite(record.score)
    return (bad, -record.score if not bad else 0.0, index)


def top_indices(history: List[SearchRecord], candidates: Iterable[int], k: int) -> List[int]:
    """The indices (into ``history``) of the best ``k`` of ``candidates``, best first."""
    return sorted(set(candidates), key=lambda i: rank_key(history[i], i))[:k]


@dataclass
class SearchResult:
    """The outcome of a search.

    Attributes:
        history: every scored architecture, in scoring order (no architecture twice, and no two of one
            class of equivalent architectures: each is its class's ``space.canonical`` representative).
        topk: the best records, best first (the final top-k of evolution; the best ``k`` otherwise).
        generations: generations completed (1 for random and exhaustive search).
        exhausted: the search stopped early because no new admissible architecture could be found.
        config: the searcher's settings.
        equivalent: proposals not scored because they are equivalent to (``space.canonical`` maps them
            to) an architecture already scored or queued; see :class:`Proposer`.
    """

    history: List[SearchRecord]
    topk: List[SearchRecord]
    generations: int = 0
    exhausted: bool = False
    config: Dict[str, Any] = field(default_factory=dict)
    equivalent: int = 0

    @property
    def best(self) -> Optional[SearchRecord]:
        return self.topk[0] if self.topk else None

    def scores(self) -> Dict[str, float]:
        """``{text: score}`` of every scored architecture (input of ``fastnas.metrics.rank.correlate``)."""
        return {r.text: r.score for r in self.history}

    def to_dict(self) -> Dict[str, Any]:
        best = self.best
        return {
            "best": best.to_dict() if best is not None else None,
            "topk": [r.to_dict() for r in self.topk],
            "generations": self.generations, "exhausted": self.exhausted,
            "n_scored": len(self.history), "equivalent_proposals": self.equivalent, "config": dict(self.config),
            "history": [r.to_dict() for r in self.history],
        }


def best_of(history: List[SearchRecord], topk: int, exhausted: bool, config: Dict[str, Any],
            equivalent: int = 0) -> SearchResult:
    """The result of a search whose top-k is simply the best ``topk`` of everything scored."""
    best = top_indices(history, range(len(history)), topk)
    return SearchResult(history=list(history), topk=[history[i] for i in best], generations=1,
                        exhausted=exhausted, config=config, equivalent=equivalent)


def _measure(fn: Callable[[Arch], Any], arch: Arch) -> Any:
    try:
        return fn(arch)
    except NotImplementedError:
        return None


@dataclass(frozen=True)
class Constraints:
    """Upper limits on ``space.params`` and ``space.flops`` (None: no limit), and an optional predicate.

    ``admissible(arch) -> bool`` is a further condition a caller imposes (pure Python, no tensors): e.g.
    a model family's containment, ``space.contains(arch, previous_member)``. It is not part of a
    searcher's saved settings: whoever restores a searcher sets it again (``searcher.admissible``).
    """

    max_params: Optional[float] = None
    max_flops: Optional[float] = None
    admissible: Optional[Callable[[Arch], bool]] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_params", "max_flops"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name}={value!r}: expected a positive number or None")

    def measure(self, space: Any, arch: Arch) -> Tuple[bool, Optional[int], Optional[float]]:
        """``(admissible, params, flops)``; a limit on a quantity the space cannot measure is an error."""
        params = _measure(space.params, arch)
        flops = _measure(space.flops, arch)
        if self.max_params is not None:
            if params is None:
                raise NotImplementedError(f"max_params={self.max_params!r} but space "
                                          f"{getattr(space, 'name', space)!r} cannot count parameters")
            if params > self.max_params:
                return False, params, flops
        if self.max_flops is not None:
            if flops is None:
                raise NotImplementedError(f"max_flops={self.max_flops!r} but space "
                                          f"{getattr(space, 'name', space)!r} cannot count FLOPs")
            if flops > self.max_flops:
                return False, params, flops
        if self.admissible is not None and not self.admissible(arch):
            return False, params, flops
        return True, params, flops


def canonical(space: Any, arch: Arch) -> Arch:
    """``space.canonical(arch)``: the representative of ``arch``'s class of equivalent architectures
    (``space.validate(arch)`` for a space without the method)."""
    fn = getattr(space, "canonical", None)
    return fn(arch) if fn is not None else space.validate(arch)


class Proposer:
    """Proposes new admissible architectures: valid, within the constraints, of a class never seen before.

    Architectures are proposed as their class representatives (``space.canonical``): two equivalent
    cells (NAS-Bench-201's pass-through variants, dead edges) are one candidate, scored once. ``seen``
    holds the representatives already scored or queued; ``measured`` caches params/FLOPs of the
    accepted ones so they are computed once; ``equivalent`` counts the proposals turned away because
    they differ from an already-seen representative only by the space's equivalence (proposing a seen
    representative again is a plain repeat and not counted); ``remaining`` (None until sampling first
    fails in a finite space) lists the admissible representatives still unseen then, which
    :meth:`random` draws from.
    """

    def __init__(self, space: Any, constraints: Constraints, seen: set, max_tries: int) -> None:
        self.space = space
        self.constraints = constraints
        self.seen = seen
        self.max_tries = max_tries
        self.measured: Dict[Arch, Tuple[Optional[int], Optional[float]]] = {}
        self.remaining: Optional[List[Arch]] = None
        self.equivalent = 0

    def admit(self, arch: Arch) -> Optional[Arch]:
        """The representative of ``arch``'s class if the class is new and admissible (then marked seen),
        else None."""
        try:
            arch = self.space.validate(arch)
        except ValueError:
            return None
        rep = canonical(self.space, arch)
        if rep in self.seen:
            if rep != arch:
                self.equivalent += 1
            return None
        ok, params, flops = self.constraints.measure(self.space, rep)
        if not ok:
            return None
        self.seen.add(rep)
        self.measured[rep] = (params, flops)
        return rep

    def propose(self, make: Callable[[], Arch]) -> Optional[Arch]:
        for _ in range(self.max_tries):
            arch = self.admit(make())
            if arch is not None:
                return arch
        return None

    def random(self, rng: random.Random) -> Optional[Arch]:
        """A new random architecture; when ``max_tries`` samples fail and the space is finite, one drawn
        from the admissible representatives not yet seen (None when there are none: the space is
        exhausted)."""
        arch = self.propose(lambda: self.space.sample(rng))
        if arch is not None:
            return arch
        if self.remaining is None:
            self.remaining = self._unseen_admissible()
            if self.remaining is None:
                return None
        while self.remaining:
            pick = self.remaining.pop(rng.randrange(len(self.remaining)))
            arch = self.admit(pick)
            if arch is not None:
                return arch
        return None

    def _unseen_admissible(self) -> Optional[List[Arch]]:
        """The admissible class representatives not yet seen, in ``space.enumerate()`` order of their
        first member (None for a space too large to enumerate)."""
        if self.space.size() is None:
            return None
        try:
            every = list(self.space.enumerate())
        except NotImplementedError:
            return None
        reps = dict.fromkeys(canonical(self.space, a) for a in every)
        return [a for a in reps if a not in self.seen and self.constraints.measure(self.space, a)[0]]


def make_record(space: Any, arch: Arch, score: Any, generation: int, origin: str,
                measured: Optional[Tuple[Optional[int], Optional[float]]] = None) -> SearchRecord:
    """The record of ``arch`` scored ``score`` (a number or a ``Score``; params/FLOPs measured if not given)."""
    if measured is None:
        measured = (_measure(space.params, arch), _measure(space.flops, arch))
    score = coerce_score(score)
    return SearchRecord(generation=generation, arch=arch, text=space.format(arch), score=score.value,
                        parts=dict(score.parts), flagged=score.flagged, params=measured[0],
                        flops=measured[1], origin=origin)


def score_arch(space: Any, score_fn: ScoreFn, arch: Arch, generation: int, origin: str,
               measured: Optional[Tuple[Optional[int], Optional[float]]] = None) -> SearchRecord:
    """Scores ``arch`` and returns its record."""
    return make_record(space, arch, score_fn(arch), generation, origin, measured)
