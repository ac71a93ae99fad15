"""Equivalent architectures are scored once: every searcher scores one representative per class of
``space.canonical`` (the real NAS-Bench-201 space), counts the equivalent proposals it turned away, and
keeps that count through a state dict (resume)."""

from __future__ import annotations

import json
import random
import zlib

import pytest

from fastnas.search import create_searcher, run_search
from fastnas.search.evolution import Evolution, EvolutionConfig, evolve
from fastnas.search.exhaustive import exhaustive
from fastnas.search.random_search import RandomConfig, RandomSearch, random_search
from fastnas.spaces import create_space


@pytest.fixture(scope="module")
def nb201():
    return create_space("nb201", channels=4, cells=1)


def _score(space):
    # Equivalent cells compute the same function, so a real score gives them (about) the same value.
    return lambda arch: (zlib.crc32(space.format(space.canonical(arch)).encode()) % 10007) / 10007


def _classes(space, records):
    return [space.canonical(r.arch) for r in records]


def test_evolution_scores_one_architecture_per_class(nb201):
    cfg = EvolutionConfig(population=40, topk=5, mutations=15, crossovers=15, mutate_prob=0.3, generations=5,
                          seed=1)
    result = evolve(nb201, _score(nb201), cfg)
    classes = _classes(nb201, result.history)
    assert len(classes) == len(set(classes)) == cfg.population * cfg.generations
    assert all(r.arch == nb201.canonical(r.arch) for r in result.history)  # scored as the representative
    assert len(set(_classes(nb201, result.topk))) == len(result.topk) == 5
    assert result.equivalent > 0
    assert result.to_dict()["equivalent_proposals"] == result.equivalent


def test_random_search_counts_the_equivalent_proposals_it_skips(nb201):
    n, seed = 150, 2
    result = random_search(nb201, _score(nb201), n=n, seed=seed)
    # the same draws, replayed: a proposal equivalent to (but not equal to) a seen representative counts
    rng, seen, equivalent = random.Random(seed), set(), 0
    while len(seen) < n:
        arch = nb201.sample(rng)
        rep = nb201.canonical(arch)
        if rep in seen:
            equivalent += rep != arch
        else:
            seen.add(rep)
    assert {r.arch for r in result.history} == seen
    classes = _classes(nb201, result.history)
    assert len(classes) == len(set(classes)) == n
    assert result.equivalent == equivalent > 0


def test_exhaustive_scores_each_class_once():
    space = create_space("nb201", channels=4, cells=1)
    limit = min(space.params(a) for a in space.enumerate())  # the cells without a live convolution
    result = exhaustive(space, _score(space), max_params=limit)
    members = [a for a in space.enumerate() if space.params(space.canonical(a)) <= limit]
    classes = {space.canonical(a) for a in members}
    assert {r.arch for r in result.history} == classes and len(result.history) == len(classes)
    assert result.equivalent == len(members) - len(classes) > 0


@pytest.mark.parametrize("name, stop_at", [("evolution", 23), ("evolution", 40), ("random", 17)])
def test_the_count_survives_a_resume(nb201, name, stop_at):
    from fastnas.search import SearchConfig

    cfg = SearchConfig(population=20, generations=4, topk=5, mutations=8, crossovers=8, mutate_prob=0.3, seed=5)
    score = _score(nb201)
    full = run_search(create_searcher(name, nb201, cfg), score)
    saved = {}

    def stop(event, info):
        if event == "candidate" and info["n_scored"] == stop_at:
            saved["state"] = json.dumps(info["searcher"].state_dict())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(create_searcher(name, nb201, cfg), score, callback=stop)
    state = json.loads(saved["state"])
    assert 0 < state["equivalent"] <= full.equivalent
    resumed = create_searcher(name, nb201, cfg)
    resumed.load_state_dict(state)
    again = run_search(resumed, score)
    assert again.equivalent == full.equivalent > 0
    assert [r.text for r in again.history] == [r.text for r in full.history]
    assert again.to_dict() == full.to_dict()


def test_a_state_without_the_count_loads_as_zero_and_a_bad_count_is_refused(nb201):
    searcher = RandomSearch(nb201, RandomConfig(n=5, seed=0))
    d = searcher.state_dict()
    del d["equivalent"]
    searcher.load_state_dict(d)
    assert searcher.equivalent == 0
    with pytest.raises(ValueError, match="equivalent=-1"):
        Evolution(nb201).load_state_dict({**Evolution(nb201).state_dict(), "equivalent": -1})
