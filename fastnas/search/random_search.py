"""Random search: ``n`` distinct random architectures within the constraints (one per class of
equivalent architectures, ``space.canonical``).

:class:`RandomSearch` is the ask/tell searcher (each round a batch of new samples); proposals never
depend on scores, so the batch size changes no result. :func:`random_search` runs it to the end.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from fastnas.search.base import SearchConfig, check_int, config_from_dict, run_search
from fastnas.search.batch import BatchSearcher, check_state, rng_from_json, rng_to_json
from fastnas.search.history import Callback, Constraints, Proposer, ScoreFn, SearchResult, best_of
from fastnas.search.registry import register_searcher

__all__ = ["RandomConfig", "RandomSearch", "random_search"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclass(frozen=True)
class RandomConfig:
    """Settings of :class:`RandomSearch`.

    Attributes:
        n: architectures to score (fewer if the admissible space is smaller: ``exhausted``).
        seed: seed of the ``random.Random`` drawing the samples.
        max_params, max_flops: upper limits on ``space.params`` / ``space.flops`` (None: none).
        max_tries: samples drawn per new architecture before falling back to enumerating the unseen
            admissible ones (finite spaces) or stopping.
        topk: length of ``result().topk``.
        batch: architectures per round (None: all ``n`` in one); changes no result.
    """

    n: int = 100
    seed: int = 0
    max_params: Optional[float] = None
    max_flops: Optional[float] = None
    max_tries: int = 100
    topk: int = 10
    batch: Optional[int] = None

    def __post_init__(self) -> None:
        check_int("n", self.n, 0)
        check_int("max_tries", self.max_tries, 1)
        check_int("topk", self.topk, 1)
        if self.batch is not None:
            check_int("batch", self.batch, 1)
        Constraints(self.max_params, self.max_flops)  # validates the limits

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RandomConfig":
        return config_from_dict(cls, d)

    @classmethod
    def from_search_config(cls, config: SearchConfig) -> "RandomConfig":
        """``population * generations`` samples in rounds of ``population``."""
        return cls(n=config.population * config.generations, seed=config.seed, max_params=config.max_params,
                   max_flops=config.max_flops, max_tries=config.max_tries, topk=config.topk,
                   batch=config.population)


class RandomSearch(BatchSearcher):
    """Distinct random samples as a :class:`~fastnas.search.base.Searcher`.

    Attributes:
        config: the settings.
        rng: the ``random.Random`` drawing the samples (only while proposing a round).
        exhausted: sampling (and, for a finite space, enumerating) found nothing new.
        rounds: rounds closed so far.
    """

    def __init__(self, space: Any, config: Optional[RandomConfig] = None) -> None:
        super().__init__(space)
        self.config = config if config is not None else RandomConfig()
        self.rng = random.Random(self.config.seed)
        self.exhausted = False
        self.rounds = 0
        self._proposer = self._new_proposer()

    def _new_proposer(self) -> Proposer:
        cfg = self.config
        return Proposer(self.space, self._constraints(cfg.max_params, cfg.max_flops), self.seen, cfg.max_tries)

    @property
    def done(self) -> bool:
        return self.pending is None and (self.exhausted or len(self.history) >= self.config.n)

    @property
    def rounds_done(self) -> int:
        return self.rounds

    @property
    def planned_rounds(self) -> int:
        batch = self.config.batch or max(1, self.config.n)
        return -(-self.config.n // batch)

    @property
    def total(self) -> int:
        return self.config.n

    def _propose(self) -> List[Tuple[Any, str]]:
        want = self.config.n - len(self.history)
        if self.config.batch is not None:
            want = min(want, self.config.batch)
        out: List[Tuple[Any, str]] = []
        # One proposer for the whole search: it remembers what it has proposed and, once sampling
        # fails, the admissible architectures still unseen (so the draws match one long loop).
        while len(out) < want:
            arch = self._proposer.random(self.rng)
            if arch is None:
                self.exhausted = True
                logger.info("random search: admissible space exhausted after %d architectures",
                            len(self.history) + len(out))
                break
            out.append((arch, "random"))
        self.measured.update(self._proposer.measured)
        self._proposer.measured.clear()
        self.equivalent += self._proposer.equivalent
        self._proposer.equivalent = 0
        return out

    def _nothing_new(self) -> None:
        self.exhausted = True

    def _close_round(self) -> None:
        self.rounds += 1

    def state_dict(self) -> Dict[str, Any]:
        remaining = self._proposer.remaining
        return {
            "version": _STATE_VERSION,
            "kind": "random",
            "space": getattr(self.space, "name", None),
            "config": self.config.to_dict(),
            "rng": rng_to_json(self.rng.getstate()),
            "pending": self._pending_to_json(),
            "history": [r.to_dict() for r in self.history],
            "remaining": None if remaining is None else [self.space.format(a) for a in remaining],
            "exhausted": self.exhausted,
            "rounds": self.rounds,
            "equivalent": self.equivalent,
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        check_state(d, _STATE_VERSION, self.space, "random")
        self.config = RandomConfig.from_dict(d["config"])
        self.rng = random.Random()
        self.rng.setstate(rng_from_json(d["rng"]))
        self._load_records(d)
        self.exhausted = bool(d["exhausted"])
        self.rounds = int(d["rounds"])
        self._proposer = self._new_proposer()
        remaining = d.get("remaining")
        if remaining is not None:
            self._proposer.remaining = [self.space.parse(text) for text in remaining]

    def result(self) -> SearchResult:
        config = {k: v for k, v in self.config.to_dict().items() if k != "batch"}  # batch changes no result
        return best_of(self.history, self.config.topk, self.exhausted, config, self.equivalent)


@register_searcher("random")
def _create_random(space: Any, config: Union[SearchConfig, RandomConfig, None] = None,
                   **kwargs: Any) -> RandomSearch:
    if config is None or isinstance(config, RandomConfig):
        cfg = config
    else:
        cfg = RandomConfig.from_search_config(config)
    if kwargs:
        cfg = dataclasses.replace(cfg or RandomConfig(), **kwargs)
    return RandomSearch(space, cfg)


def random_search(space: Any, score_fn: ScoreFn, n: int, seed: int = 0, *,
                  max_params: Optional[float] = None, max_flops: Optional[float] = None,
                  max_tries: int = 100, topk: int = 10,
                  callback: Optional[Callback] = None) -> SearchResult:
    """Scores ``n`` distinct random architectures within the constraints (runs a :class:`RandomSearch`).

    Args:
        space: a :class:`fastnas.spaces.Space`.
        score_fn: ``arch -> float`` or ``arch -> Score`` (higher is better).
        n: number of architectures to score (fewer if the admissible space is smaller: ``exhausted``).
        seed: seed of the ``random.Random`` drawing the samples.
        max_params, max_flops: upper limits on ``space.params`` / ``space.flops`` (None: none).
        max_tries: samples drawn per new architecture before falling back to enumerating the unseen
            admissible ones (finite spaces) or stopping.
        topk: length of ``result.topk``.
        callback: ``callback("candidate", {"record", "index", "count"})`` after each scored architecture.
    """
    searcher = RandomSearch(space, RandomConfig(n=n, seed=seed, max_params=max_params, max_flops=max_flops,
                                                max_tries=max_tries, topk=topk))

    def adapter(event: str, info: Dict[str, Any]) -> None:
        if event == "candidate":
            callback("candidate", {"record": info["record"], "index": info["n_scored"] - 1, "count": n})

    return run_search(searcher, score_fn, callback=adapter if callback is not None else None)
