"""fastnas.search: searchers of one ask/tell protocol; they see only the space protocol and scores.

A searcher (:class:`Searcher`) proposes architectures with ``ask()`` and learns from their scores with
``tell(archs, scores)``; it never scores anything itself, so one loop (:func:`run_search`) serves every
searcher, on one process or sharded. A score function maps an architecture to a number or a
:class:`~fastnas.metrics.combine.Score` (higher is better). Searchers are registered by name::

    searcher = create_searcher("evolution", space, SearchConfig(population=20, generations=10))
    result = run_search(searcher, score_fn)

The functions :func:`evolve`, :func:`random_search` and :func:`exhaustive` run one searcher to the end.
"""

from __future__ import annotations

from fastnas.metrics.combine import Score
from fastnas.search.base import SearchConfig, Searcher, run_search
from fastnas.search.batch import BatchSearcher
from fastnas.search.enas import ENASConfig, ENASController, ENASSearcher
from fastnas.search.evolution import Evolution, EvolutionConfig, EvolutionState, evolve
from fastnas.search.exhaustive import ExhaustiveConfig, ExhaustiveSearch, exhaustive
from fastnas.search.history import Constraints, SearchRecord, SearchResult
from fastnas.search.random_search import RandomConfig, RandomSearch, random_search
from fastnas.search.registry import (check_searcher_config, check_searcher_space, create_searcher, get_searcher,
                                     list_searchers, register_searcher)

__all__ = [
    "Score", "Searcher", "BatchSearcher", "SearchConfig", "run_search",
    "Evolution", "EvolutionConfig", "EvolutionState", "evolve",
    "RandomSearch", "RandomConfig", "random_search",
    "ExhaustiveSearch", "ExhaustiveConfig", "exhaustive",
    "ENASSearcher", "ENASConfig", "ENASController",
    "Constraints", "SearchRecord", "SearchResult",
    "register_searcher", "create_searcher", "get_searcher", "list_searchers", "check_searcher_config",
    "check_searcher_space",
]
