from __future__ import annotations

import pytest
from _toy_space import separable

from fastnas.search import (
    RandomConfig, RandomSearch, SearchConfig, create_searcher, exhaustive, get_searcher, list_searchers,
    random_search, register_searcher, run_search,
)


def test_random_search_unique_deterministic_constrained(toy_space):
    calls = []
    a = random_search(toy_space, lambda x: calls.append(x) or separable(x), 200, seed=5, max_params=220)
    b = random_search(toy_space, separable, 200, seed=5, max_params=220)
    c = random_search(toy_space, separable, 200, seed=6, max_params=220)
    assert len(calls) == len(set(calls)) == 200 == len(a.history)
    assert [r.text for r in a.history] == [r.text for r in b.history] != [r.text for r in c.history]
    assert all(r.params <= 220 and r.origin == "random" for r in a.history)
    assert a.best.score == max(r.score for r in a.history) and not a.exhausted


def test_random_search_exhausts_tiny_space(tiny_space):
    result = random_search(tiny_space, lambda x: float(sum(x)), 10, seed=0, max_tries=3)
    assert sorted(r.arch for r in result.history) == sorted(tiny_space.enumerate())
    assert result.exhausted and result.best.arch == (1, 1)


def test_exhaustive_scores_every_admissible_arch_once(toy_space):
    events = []
    result = exhaustive(toy_space, separable, lambda ev, p: events.append(p["index"]), max_flops=10.0, topk=3)
    admissible = [a for a in toy_space.enumerate() if toy_space.flops(a) <= 10.0]
    assert [r.arch for r in result.history] == admissible
    assert events == list(range(len(admissible)))
    assert len(result.topk) == 3 and result.best.score == max(separable(a) for a in admissible)
    assert result.scores()[result.best.text] == result.best.score


def test_exhaustive_finds_global_optimum(toy_space):
    result = exhaustive(toy_space, separable)
    assert len(result.history) == toy_space.size() == 15625
    assert result.best.arch == (4, 0, 4, 0, 4, 0)


def test_registry(monkeypatch):
    from fastnas.search import registry

    monkeypatch.setattr(registry, "_SEARCHERS", dict(registry._SEARCHERS))  # the registration below is undone
    assert {"evolution", "random", "exhaustive"} <= set(list_searchers())
    with pytest.raises(ValueError, match="did you mean 'evolution'"):
        get_searcher("evolutoin")

    @register_searcher("_test_first")
    def first(space, config=None, **kw):
        return RandomSearch(space, RandomConfig(n=1))

    assert get_searcher("_test_first") is first and "_test_first" in list_searchers()
    assert isinstance(create_searcher("_test_first", None), RandomSearch)


@pytest.mark.parametrize("name", ["evolution", "random", "exhaustive"])
def test_every_searcher_runs_on_tiny_space(tiny_space, name):
    config = SearchConfig(population=2, topk=1, mutations=1, crossovers=0, generations=3)
    searcher = create_searcher(name, tiny_space, config)
    result = run_search(searcher, lambda a: float(sum(a)))
    assert result.best.arch == (1, 1) and searcher.done and searcher.ask() == []
    assert result.to_dict()["best"]["text"] == "1-1"
