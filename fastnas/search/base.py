"""The searcher protocol (ask/tell), the settings a run gives any searcher, and the one search loop.

A searcher proposes architectures and learns from their scores; it never scores anything itself::

    searcher = create_searcher("evolution", space, SearchConfig(population=20, generations=10))
    while not searcher.done:
        archs = searcher.ask()                      # one round: a generation, a batch, a controller sample
        scores = [coerce_score(score_fn(a)) for a in archs]   # anywhere: this process, rank r of many
        searcher.tell(archs, scores)                # may be told in pieces, e.g. one candidate at a time
    result = searcher.result()

:func:`run_search` is that loop with a callback after each candidate and each round, where a caller
saves ``searcher.state_dict()``: a searcher restored from a snapshot taken at any callback (even in the
middle of a round: "asked these, told the first k") continues exactly as the uninterrupted one would.
Keeping scoring out of the protocol is what lets sharded scoring (``run_search(..., world=...)``: rank r
scores ``archs[r::world]``, the scores are gathered and every rank tells all of them) and an RL
controller (ask samples from a policy, tell updates it) use the same loop.
"""

from __future__ import annotations

import abc
import math
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from fastnas._hints import did_you_mean
from fastnas.search.history import Arch, Callback, Constraints, ScoreFn, SearchRecord, SearchResult, coerce_score

__all__ = ["Searcher", "SearchConfig", "run_search"]


class Searcher(abc.ABC):
    """What every searcher implements (see the module docstring for the loop).

    ``ask()`` returns the architectures still to be scored in the current round, proposing a new round
    when none is open (so asking twice without telling returns the same list: every rank of a
    distributed run asks the same architectures). It returns an empty list only when the search is
    done. ``tell(archs, scores)`` reports scores of asked architectures, in any grouping and order; the
    round closes (and the searcher learns from it) when every asked architecture has been told.
    """

    @abc.abstractmethod
    def ask(self) -> List[Arch]:
        """The architectures to score next (empty only when :attr:`done`)."""

    @abc.abstractmethod
    def tell(self, archs: Sequence[Arch], scores: Sequence[Any]) -> List[SearchRecord]:
        """Reports ``scores`` (:class:`~fastnas.metrics.combine.Score` or numbers) of asked ``archs``.

        Returns:
            The records of the told architectures, in the order given.

        Raises:
            ValueError: an architecture was not asked in the open round, or was told already.
        """

    @property
    @abc.abstractmethod
    def done(self) -> bool:
        """Whether the search has finished (its budget is spent or nothing new is left to propose)."""

    @abc.abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable snapshot of everything the search needs to continue (settings included)."""

    @abc.abstractmethod
    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restores a snapshot taken by :meth:`state_dict` (settings included, as torch optimizers do)."""

    @abc.abstractmethod
    def result(self) -> SearchResult:
        """The search so far: every scored record and the current top-k."""

    # Informational (progress bars, logs); a searcher may leave the defaults.

    @property
    def n_scored(self) -> int:
        """Architectures told so far (over every session of a resumed search)."""
        return len(self.result().history)

    @property
    def rounds_done(self) -> int:
        """Rounds closed so far (for evolution: generations)."""
        return 0

    @property
    def planned_rounds(self) -> Optional[int]:
        """Rounds the search will run at most (None: unknown)."""
        return None

    @property
    def total(self) -> Optional[int]:
        """Architectures the search will score at most (None: unknown)."""
        return None


def check_int(name: str, value: Any, minimum: int) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")


def check_float(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False,
                 high_open: bool = False) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a finite number (not a bool) in the interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name}={value!r}: expected a finite number in {lo}{low}, {high}{hi}")


def config_from_dict(cls: Any, d: Mapping[str, Any]) -> Any:
    """``cls(**d)`` of a config dataclass; ``None`` values keep the defaults; an unknown key is a
    ``ValueError`` naming close matches."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        hint = did_you_mean(unknown[0], names, n=3)
        raise ValueError(f"unknown {cls.__name__} key {unknown[0]!r}; expected one of {names}{hint}")
    return cls(**{k: v for k, v in d.items() if v is not None})


@dataclass(frozen=True)
class SearchConfig:
    """The settings a run gives whichever searcher it uses; each searcher reads the ones it needs.

    Attributes:
        population: architectures per round (evolution: per generation; random and exhaustive search:
            per batch, which changes no result).
        generations: rounds (evolution: scored generations; random search scores
            ``population * generations`` architectures; exhaustive search ignores it).
        topk: evolution's parents; the length of every searcher's ``result().topk``.
        mutations, crossovers, mutate_prob: evolution's children per generation and gene mutation rate.
        seed: seed of the searcher's ``random.Random``.
        max_params, max_flops: upper limits on ``space.params`` / ``space.flops`` (None: none).
        max_tries: attempts to produce each new architecture before giving up on it.
    """

    population: int = 50
    generations: int = 20
    topk: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutate_prob: float = 0.1
    seed: int = 0
    max_params: Optional[float] = None
    max_flops: Optional[float] = None
    max_tries: int = 100

    def __post_init__(self) -> None:
        for name in ("population", "generations", "topk", "max_tries"):
            check_int(name, getattr(self, name), 1)
        for name in ("mutations", "crossovers", "seed"):
            check_int(name, getattr(self, name), 0)
        if not (isinstance(self.mutate_prob, (int, float)) and 0.0 <= self.mutate_prob <= 1.0):
            raise ValueError(f"mutate_prob={self.mutate_prob!r}: expected a probability in [0, 1]")
        Constraints(self.max_params, self.max_flops)  # validates the limits

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; ``None`` values keep the defaults, unknown keys are an error."""
        return config_from_dict(cls, d)


def run_search(searcher: Searcher, score_fn: ScoreFn, *, callback: Optional[Callback] = None,
               world: Any = None) -> SearchResult:
    """Asks, scores each architecture with ``score_fn``, tells; until the searcher is done.

    With a ``world`` of several processes (every rank runs this loop with an identical searcher), rank
    ``r`` of ``size`` scores ``archs[r::size]`` of each round, the scores are gathered
    (``world.all_gather_object``) and every rank tells all of them in the order asked, so every rank's
    searcher -- and the history -- is that of one process scoring them all. A candidate's score must
    not depend on which rank scores it or on what that rank scored before (fastnas's scores do not:
    their noise is keyed by the parameter index, their recalibration batches by the run's seed).

    Args:
        searcher: a :class:`Searcher`, new or restored with ``load_state_dict``.
        score_fn: ``arch -> float`` or ``arch -> Score``; higher is better; NaN/inf are flagged.
        callback: ``callback(event, info)``, with ``"candidate"`` after each told architecture (info:
            ``record``, ``generation`` (the record's), ``n_scored``, ``searcher``) and ``"generation"`` after
            each closed round (info: ``generation`` (the round's index),
            ``best``, ``topk``, ``n_scored``, ``searcher``). ``info["searcher"].state_dict()`` at either
            event is a valid checkpoint; an exception from the callback stops the search. It is called
            on rank 0 only (where a run records progress and saves state), after the round's gather.
        world: ``rank``, ``size`` and ``all_gather_object(obj) -> [obj of each rank]``
            (:class:`fastnas.distributed.World`); ``None``: this process alone. One process scores and
            tells one candidate at a time (a checkpoint after each); several exchange scores once a round.

    Returns:
        ``searcher.result()``.
    """
    rank, size = (0, 1) if world is None else (int(world.rank), int(world.size))
    if callback is not None and rank != 0:
        callback = None
    n_scored = searcher.n_scored
    while not searcher.done:
        archs = searcher.ask()
        if not archs:
            break
        if size == 1:  # lazily: each candidate is told (and checkpointed) before the next is scored
            scored: Any = ((arch, coerce_score(score_fn(arch))) for arch in archs)
        else:
            mine = [coerce_score(score_fn(arch)) for arch in archs[rank::size]]
            shards = world.all_gather_object(mine)
            scored = [(arch, shards[i % size][i // size]) for i, arch in enumerate(archs)]
        for arch, score in scored:
            (record,) = searcher.tell([arch], [score])
            n_scored += 1
            if callback is not None:
                callback("candidate", {"record": record, "generation": record.generation, "n_scored": n_scored,
                                       "searcher": searcher})
        if callback is not None:
            result = searcher.result()
            callback("generation", {"generation": searcher.rounds_done - 1, "best": result.best,
                                    "topk": result.topk, "n_scored": n_scored, "searcher": searcher})
    return searcher.result()
