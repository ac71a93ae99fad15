"""Evolutionary search as in SPOS and GeNAS: top-k selection, mutation, crossover, random fill.

One generation:

1. propose the candidates (generation 0: ``population`` random architectures; later: ``mutations``
   children of random top-k parents, ``crossovers`` children of random top-k pairs, then random fill up
   to ``population``). Every candidate is valid, within ``max_params``/``max_flops`` and of a class of
   equivalent architectures never seen before (it is proposed as the class's ``space.canonical``
   representative; equivalent proposals are counted, not scored); each child gets ``max_tries`` attempts. When nothing new can be proposed the space is
   exhausted and the search stops early;
2. score every candidate (no architecture is ever scored twice);
3. top-k := the best ``topk`` of the old top-k and the new candidates (so: of everything scored).
   Order: unflagged before flagged (NaN/inf scores are flagged), higher score first, then first seen.

``generations`` counts scored generations, so at most ``population * generations`` architectures are
scored. :class:`Evolution` is the ask/tell searcher (``ask()`` returns a generation, ``tell`` takes its
scores); it is its own state (generation, random-number state, queued candidates, top-k, history), with
a JSON-safe :meth:`Evolution.state_dict`: a search resumed from any checkpoint the callback took
produces exactly the history of an uninterrupted one. Candidates are proposed (all random draws of a
generation) before any is scored, so the random stream never depends on scoring. :func:`evolve` is
:func:`~fastnas.search.base.run_search` of an :class:`Evolution`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from fastnas.metrics.combine import Score
from fastnas.search.base import SearchConfig, run_search
from fastnas.search.batch import BatchSearcher, check_state, rng_from_json, rng_to_json
from fastnas.search.history import Callback, Proposer, ScoreFn, SearchResult, top_indices
from fastnas.search.registry import register_searcher

__all__ = ["EvolutionConfig", "Evolution", "EvolutionState", "evolve", "Score"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


@dataclass(frozen=True)
class EvolutionConfig(SearchConfig):
    """Settings of :class:`Evolution` and :func:`evolve` (defaults: SPOS / GeNAS DARTS): the fields of
    :class:`~fastnas.search.base.SearchConfig`, read as evolution reads them, with its own checks.

    Attributes:
        population: candidates per generation.
        topk: parents kept ("select" in SPOS), at most ``population``.
        mutations, crossovers: mutated and crossed-over children per generation (together at most
            ``population``); each gene of a mutated child is resampled with ``mutate_prob``.
        generations: scored generations, including the random generation 0.
        max_flops: upper limit on ``space.flops(arch)``, millions (None: none; SPOS ImageNet uses 330).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.topk > self.population:
            raise ValueError(f"topk={self.topk!r}: expected at most population={self.population}")
        if self.mutations + self.crossovers > self.population:
            raise ValueError(f"mutations={self.mutations} + crossovers={self.crossovers} exceeds "
                             f"population={self.population}")

    @classmethod
    def rlnas(cls, **overrides: Any) -> "EvolutionConfig":
        """RLNAS's NAS-Bench-201 settings: population 100, top 30, 50 mutations, 50 crossovers."""
        base = dict(population=100, topk=30, mutations=50, crossovers=50, mutate_prob=0.1, generations=20)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @classmethod
    def from_search_config(cls, config: SearchConfig) -> "EvolutionConfig":
        """The evolution settings of a run's :class:`~fastnas.search.base.SearchConfig`."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(SearchConfig)})


class Evolution(BatchSearcher):
    """Evolutionary search as a :class:`~fastnas.search.base.Searcher`: one round is one generation.

    Attributes:
        config: the settings.
        generation: index of the generation in progress (or next to start).
        rng: the search's ``random.Random`` (drawn from only while proposing a generation).
        pending: ``(arch, origin)`` of the current generation not yet scored, or None when the
            generation's candidates are still to be proposed.
        topk: indices into ``history`` of the current top-k, best first.
        history: every scored record, in order.
        exhausted: the last attempt to propose candidates found nothing new.
    """

    def __init__(self, space: Any, config: Optional[EvolutionConfig] = None) -> None:
        super().__init__(space)
        self.config = config if config is not None else EvolutionConfig()
        self.generation = 0
        self.rng = random.Random(self.config.seed)
        self.topk: List[int] = []
        self.exhausted = False

    @property
    def done(self) -> bool:
        return self.pending is None and (self.exhausted or self.generation >= self.config.generations)

    @property
    def rounds_done(self) -> int:
        return self.generation

    @property
    def planned_rounds(self) -> int:
        return self.config.generations

    @property
    def total(self) -> int:
        return self.config.population * self.config.generations

    def _generation(self) -> int:
        return self.generation

    def _propose(self) -> List[Tuple[Any, str]]:
        """The candidates of the current generation (all random draws happen here)."""
        cfg, rng, space = self.config, self.rng, self.space
        proposer = Proposer(space, self._constraints(cfg.max_params, cfg.max_flops), self.seen, cfg.max_tries)
        out: List[Tuple[Any, str]] = []
        parents = [self.history[i].arch for i in self.topk]
        if parents:
            for _ in range(cfg.mutations):
                child = proposer.propose(lambda: space.mutate(rng.choice(parents), cfg.mutate_prob, rng))
                if child is not None:
                    out.append((child, "mutation"))
            if len(parents) >= 2:
                for _ in range(cfg.crossovers):
                    child = proposer.propose(lambda: space.crossover(*rng.sample(parents, 2), rng))
                    if child is not None:
                        out.append((child, "crossover"))
        while len(out) < cfg.population:
            child = proposer.random(rng)
            if child is None:
                break
            out.append((child, "random"))
        self.measured.update(proposer.measured)
        self.equivalent += proposer.equivalent
        if out:
            self.exhausted = False
        return out

    def _nothing_new(self) -> None:
        self.exhausted = True
        logger.info("evolution: no new admissible architecture at generation %d; stopping", self.generation)

    def _close_round(self) -> None:
        gen = self.generation
        new = [i for i in range(len(self.history)) if self.history[i].generation == gen]
        self.topk = top_indices(self.history, list(self.topk) + new, self.config.topk)
        self.generation += 1
        best = self.history[self.topk[0]]
        logger.debug("evolution: generation %d/%d scored %d, best %.6g %s", gen + 1, self.config.generations,
                    len(new), best.score, best.text)

    def state_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable snapshot (architectures as their text forms)."""
        return {
            "version": _STATE_VERSION,
            "kind": "evolution",
            "space": getattr(self.space, "name", None),
            "config": self.config.to_dict(),
            "generation": self.generation,
            "rng": rng_to_json(self.rng.getstate()),
            "pending": self._pending_to_json(),
            "topk": list(self.topk),
            "history": [r.to_dict() for r in self.history],
            "exhausted": self.exhausted,
            "equivalent": self.equivalent,
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restores a snapshot taken by :meth:`state_dict` (of a state of the same space)."""
        check_state(d, _STATE_VERSION, self.space, "evolution", kind="evolution")
        self.config = EvolutionConfig.from_dict(d["config"])
        self.generation = int(d["generation"])
        self.rng = random.Random()
        self.rng.setstate(rng_from_json(d["rng"]))
        self._load_records(d)
        self.topk = [int(i) for i in d["topk"]]
        if any(not 0 <= i < len(self.history) for i in self.topk):
            raise ValueError(f"state topk={self.topk} refers past the history ({len(self.history)} records)")
        self.exhausted = bool(d.get("exhausted", False))
        if self.pending == []:  # saved by an older fastnas after the last candidate, before the close
            self.pending = None
            self._close_round()

    @classmethod
    def from_state_dict(cls, space: Any, d: Mapping[str, Any]) -> "Evolution":
        state = cls(space, EvolutionConfig.from_dict(d["config"]))
        state.load_state_dict(d)
        return state

    def result(self) -> SearchResult:
        return SearchResult(history=list(self.history), topk=[self.history[i] for i in self.topk],
                            generations=self.generation, exhausted=self.exhausted,
                            config=self.config.to_dict(), equivalent=self.equivalent)


EvolutionState = Evolution
"""The former name of :class:`Evolution` (the searcher is its own state)."""


@register_searcher("evolution", check=lambda config: EvolutionConfig.from_search_config(config))
def _create_evolution(space: Any, config: Union[SearchConfig, EvolutionConfig, None] = None,
                      **kwargs: Any) -> Evolution:
    if config is None or isinstance(config, EvolutionConfig):
        cfg = config
    else:
        cfg = EvolutionConfig.from_search_config(config)
    if kwargs:
        cfg = dataclasses.replace(cfg or EvolutionConfig(), **kwargs)
    return Evolution(space, cfg)


def _check_resume(config: EvolutionConfig, saved: EvolutionConfig) -> EvolutionConfig:
    """The config to continue with: only ``generations`` may differ from the saved one."""
    differ = [f.name for f in dataclasses.fields(config)
              if f.name != "generations" and getattr(config, f.name) != getattr(saved, f.name)]
    if differ:
        raise ValueError(f"cannot resume with different settings {differ} (saved "
                         f"{ {k: getattr(saved, k) for k in differ} }); only generations may change")
    return config


def evolve(space: Any, score_fn: ScoreFn, config: Optional[EvolutionConfig] = None, *,
           state: Optional[Evolution] = None, callback: Optional[Callback] = None) -> SearchResult:
    """Evolutionary search over ``space`` maximising ``score_fn`` (:func:`run_search` of an :class:`Evolution`).

    Args:
        space: a :class:`fastnas.spaces.Space` (only ``sample``, ``mutate``, ``crossover``, ``validate``,
            ``format``, ``params``, ``flops`` and, for tiny spaces, ``size``/``enumerate`` are used).
        score_fn: ``arch -> float`` or ``arch -> Score``; higher is better; NaN/inf are flagged.
        config: settings (default :class:`EvolutionConfig`); when resuming, None means the state's.
        state: an :class:`Evolution` to continue (e.g. ``Evolution.from_state_dict(space, d)``);
            it is updated in place. None starts afresh.
        callback: ``callback(event, payload)``, called with ``"candidate"`` after each scored
            architecture (payload: ``generation``, ``record``, ``index`` and ``count`` within the
            generation, ``state``) and ``"generation"`` after each generation (payload: ``generation``,
            ``topk`` records, ``best`` record, ``n_scored``, ``state``). ``payload["state"].state_dict()``
            at either event is a valid checkpoint; an exception from the callback stops the search.

    Returns:
        A :class:`SearchResult`; ``topk`` is the final top-k, best first.
    """
    if state is None:
        state = Evolution(space, config)
    else:
        state.space = space
        if config is not None:
            if config.generations != state.config.generations:
                state.exhausted = False  # a longer search tries to propose again
            state.config = _check_resume(config, state.config)

    def adapter(event: str, info: Dict[str, Any]) -> None:
        if event == "candidate":
            gen = info["generation"]
            left = len(state.pending or ())
            count = left + sum(1 for r in state.history if r.generation == gen)
            callback("candidate", {"generation": gen, "record": info["record"], "index": count - left - 1,
                                   "count": count, "state": state})
        else:
            callback("generation", {"generation": info["generation"], "topk": info["topk"], "best": info["best"],
                                    "n_scored": info["n_scored"], "state": state})

    return run_search(state, score_fn, callback=adapter if callback is not None else None)
