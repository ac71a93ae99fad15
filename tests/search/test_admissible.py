"""An extra admission rule (``searcher.admissible``, the Constraints predicate): e.g. a family's containment."""

from __future__ import annotations

import pytest

from fastnas.search import Constraints, SearchConfig, create_searcher, run_search
from fastnas.spaces import create_space

PREVIOUS = (2, 4, 2, 2, 4)


@pytest.fixture(scope="module")
def space():
    return create_space("nb201_size", channels=4, cells=1, num_classes=10, in_channels=1, resolution=8)


def _score(arch):
    return float(sum(arch)) + 0.01 * arch[0]


def _rule(space):
    return lambda arch: arch != PREVIOUS and space.contains(arch, PREVIOUS)


def test_constraints_predicate(space):
    c = Constraints(max_params=None, admissible=_rule(space))
    assert c.measure(space, space.largest())[0] is False  # the largest has no projection PREVIOUS has
    assert c.measure(space, (4, 4, 3, 3, 4))[0] is True
    assert c.measure(space, PREVIOUS)[0] is False
    assert Constraints() == Constraints(admissible=_rule(space))  # not part of the settings


@pytest.mark.parametrize("name", ["evolution", "random", "exhaustive"])
def test_every_searcher_proposes_only_admissible_architectures(space, name):
    searcher = create_searcher(name, space, SearchConfig(population=6, generations=3, topk=2, mutations=2,
                                                         crossovers=2, seed=1))
    searcher.admissible = _rule(space)
    result = run_search(searcher, _score)
    assert result.history
    assert all(space.contains(r.arch, PREVIOUS) and r.arch != PREVIOUS for r in result.history)
    free = create_searcher(name, space, SearchConfig(population=6, generations=3, topk=2, mutations=2, crossovers=2,
                                                     seed=1))
    assert not all(space.contains(r.arch, PREVIOUS) for r in run_search(free, _score).history)


def test_a_restored_searcher_with_the_rule_set_again_continues_exactly(space):
    config = SearchConfig(population=6, generations=4, topk=2, mutations=2, crossovers=2, seed=3)
    full = create_searcher("evolution", space, config)
    full.admissible = _rule(space)
    expected = [r.text for r in run_search(full, _score).history]

    first = create_searcher("evolution", space, config)
    first.admissible = _rule(space)
    snapshots = []
    run_search(first, _score, callback=lambda e, info: snapshots.append(info["searcher"].state_dict())
               if e == "candidate" and info["n_scored"] == 9 else None)
    restored = create_searcher("evolution", space, config)
    restored.load_state_dict(snapshots[0])
    restored.admissible = _rule(space)
    assert [r.text for r in run_search(restored, _score).history] == expected
