"""Exhaustive search: every architecture of ``space.enumerate()`` within the constraints, in that order,
one per class of equivalent architectures (the class's ``space.canonical`` representative, when its first
member comes up; the other members are counted in ``equivalent``, not scored).

:class:`ExhaustiveSearch` is the ask/tell searcher (each round the next batch of the enumeration; its
state keeps how far the enumeration has got); :func:`exhaustive` runs it to the end.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from fastnas.search.base import SearchConfig, check_int, config_from_dict, run_search
from fastnas.search.batch import BatchSearcher, check_state
from fastnas.search.history import Callback, Constraints, ScoreFn, SearchResult, best_of, canonical
from fastnas.search.registry import register_searcher

__all__ = ["ExhaustiveConfig", "ExhaustiveSearch", "exhaustive"]

_STATE_VERSION = 1


@dataclass(frozen=True)
class ExhaustiveConfig:
    """Settings of :class:`ExhaustiveSearch`.

    Attributes:
        max_params, max_flops: upper limits on ``space.params`` / ``space.flops`` (None: none).
        topk: length of ``result().topk``.
        batch: architectures per round (None: the whole enumeration in one); changes no result.
    """

    max_params: Optional[float] = None
    max_flops: Optional[float] = None
    topk: int = 10
    batch: Optional[int] = None

    def __post_init__(self) -> None:
        check_int("topk", self.topk, 1)
        if self.batch is not None:
            check_int("batch", self.batch, 1)
        Constraints(self.max_params, self.max_flops)  # validates the limits

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExhaustiveConfig":
        return config_from_dict(cls, d)

    @classmethod
    def from_search_config(cls, config: SearchConfig) -> "ExhaustiveConfig":
        """The constraints and ``topk``, in rounds of ``population``."""
        return cls(max_params=config.max_params, max_flops=config.max_flops, topk=config.topk,
                   batch=config.population)


class ExhaustiveSearch(BatchSearcher):
    """Every admissible class of equivalent architectures once, in enumeration order, as a
    :class:`~fastnas.search.base.Searcher`.

    Attributes:
        config: the settings.
        cursor: architectures of ``space.enumerate()`` consumed so far.
        finished: the enumeration has ended.
        rounds: rounds closed so far.
    """

    def __init__(self, space: Any, config: Optional[ExhaustiveConfig] = None) -> None:
        super().__init__(space)
        self.config = config if config is not None else ExhaustiveConfig()
        self.cursor = 0
        self.finished = False
        self.rounds = 0
        self._iter: Optional[Iterator[Any]] = None
        self._seen: Optional[set] = None

    @property
    def done(self) -> bool:
        return self.pending is None and self.finished

    @property
    def rounds_done(self) -> int:
        return self.rounds

    @property
    def planned_rounds(self) -> Optional[int]:
        size = self.total
        if size is None:
            return None
        batch = self.config.batch or max(1, size)
        return -(-size // batch)

    @property
    def total(self) -> Optional[int]:
        return self.space.size()

    def _propose(self) -> List[Tuple[Any, str]]:
        if self._iter is None:  # a fresh search, or one restored from a state: skip what was consumed
            self._iter = itertools.islice(self.space.enumerate(), self.cursor, None)
            self._seen = self.seen
        constraints = self._constraints(self.config.max_params, self.config.max_flops)
        batch = self.config.batch
        out: List[Tuple[Any, str]] = []
        while batch is None or len(out) < batch:
            arch = next(self._iter, _END)
            if arch is _END:
                self.finished = True
                break
            self.cursor += 1
            rep = canonical(self.space, arch)
            if rep in self._seen:
                if rep != arch:
                    self.equivalent += 1
                continue
            ok, params, flops = constraints.measure(self.space, rep)
            if ok:  # only admitted classes are remembered (as a restored state remembers them)
                self._seen.add(rep)
                out.append((rep, "exhaustive"))
                self.measured[rep] = (params, flops)
        return out

    def _nothing_new(self) -> None:
        self.finished = True

    def _close_round(self) -> None:
        self.rounds += 1

    def state_dict(self) -> Dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "kind": "exhaustive",
            "space": getattr(self.space, "name", None),
            "config": self.config.to_dict(),
            "cursor": self.cursor,
            "finished": self.finished,
            "pending": self._pending_to_json(),
            "history": [r.to_dict() for r in self.history],
            "rounds": self.rounds,
            "equivalent": self.equivalent,
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        check_state(d, _STATE_VERSION, self.space, "exhaustive")
        self.config = ExhaustiveConfig.from_dict(d["config"])
        self.cursor = int(d["cursor"])
        self.finished = bool(d["finished"])
        self._load_records(d)
        self.rounds = int(d["rounds"])
        self._iter = None
        self._seen = None

    def result(self) -> SearchResult:
        config = {k: v for k, v in self.config.to_dict().items() if k != "batch"}  # batch changes no result
        return best_of(self.history, self.config.topk, self.finished, config, self.equivalent)


_END = object()


@register_searcher("exhaustive")
def _create_exhaustive(space: Any, config: Union[SearchConfig, ExhaustiveConfig, None] = None,
                       **kwargs: Any) -> ExhaustiveSearch:
    if config is None or isinstance(config, ExhaustiveConfig):
        cfg = config
    else:
        cfg = ExhaustiveConfig.from_search_config(config)
    if kwargs:
        cfg = dataclasses.replace(cfg or ExhaustiveConfig(), **kwargs)
    return ExhaustiveSearch(space, cfg)


def exhaustive(space: Any, score_fn: ScoreFn, progress: Optional[Callback] = None, *,
               max_params: Optional[float] = None, max_flops: Optional[float] = None,
               topk: int = 10) -> SearchResult:
    """Scores every architecture of ``space.enumerate()`` within the constraints, in that order.

    Args:
        space: a finite :class:`fastnas.spaces.Space`.
        score_fn: ``arch -> float`` or ``arch -> Score`` (higher is better).
        progress: ``progress("candidate", {"record", "index", "count"})`` after each scored architecture
            (``count`` is ``space.size()``, or None); the same hook shape as the other searchers.
        max_params, max_flops: upper limits on ``space.params`` / ``space.flops`` (None: none).
        topk: length of ``result.topk``.
    """
    searcher = ExhaustiveSearch(space, ExhaustiveConfig(max_params=max_params, max_flops=max_flops, topk=topk))
    count = space.size()

    def adapter(event: str, info: Dict[str, Any]) -> None:
        if event == "candidate":
            progress("candidate", {"record": info["record"], "index": info["n_scored"] - 1, "count": count})

    return run_search(searcher, score_fn, callback=adapter if progress is not None else None)
