"""fastnas.search: search algorithms that see only the space protocol and a score function.

A score function maps an architecture to a number or a :class:`~fastnas.metrics.combine.Score`
(higher is better). Searchers are registered by name: ``get_searcher("evolution")``.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from fastnas.metrics.combine import Score
from fastnas.search.evolution import EvolutionConfig, EvolutionState, evolve
from fastnas.search.history import Constraints, SearchRecord, SearchResult
from fastnas.search.random_search import exhaustive, random_search
from fastnas._hints import did_you_mean

__all__ = [
    "Score", "EvolutionConfig", "EvolutionState", "evolve", "random_search", "exhaustive",
    "Constraints", "SearchRecord", "SearchResult",
    "register_searcher", "get_searcher", "list_searchers",
]

_SEARCHERS: Dict[str, Callable[..., SearchResult]] = {}


def register_searcher(name: str) -> Callable[[Callable[..., SearchResult]], Callable[..., SearchResult]]:
    """Decorator registering ``fn(space, score_fn, ...) -> SearchResult`` under ``name``."""

    def deco(fn: Callable[..., SearchResult]) -> Callable[..., SearchResult]:
        _SEARCHERS[name] = fn
        return fn

    return deco


def list_searchers() -> List[str]:
    return sorted(_SEARCHERS)


def get_searcher(name: str) -> Callable[..., SearchResult]:
    """The searcher registered under ``name`` (``ValueError`` with close matches if unknown)."""
    if name not in _SEARCHERS:
        hint = did_you_mean(name, list(_SEARCHERS), n=3)
        raise ValueError(f"searcher={name!r} is not a known searcher; expected one of "
                         f"{list_searchers()}{hint}")
    return _SEARCHERS[name]


register_searcher("evolution")(evolve)
register_searcher("random")(random_search)
register_searcher("exhaustive")(exhaustive)
