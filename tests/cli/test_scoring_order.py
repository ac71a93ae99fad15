"""A candidate's score does not depend on which rank scores it: not on the candidates scored before it by
the same score function (caches, the stem cache, BatchNorm recalibration batches, the noise streams),
nor on how many. Under torchrun rank r scores ``archs[r::world]`` with its own score function, so this
is what makes a distributed search's history bit-identical to one process's."""

from __future__ import annotations

import random

import pytest

from fastnas.run.pipeline import Run, prepare_from_run
from fastnas.search.history import coerce_score


def _run(path, metric):
    run = Run(prepare_from_run(str(path), {"metric": metric}, read_only=True))
    run.load_trained()
    return run


def _scores(run, archs):
    fn = run.score_fn()  # a fresh score function: what one rank builds
    return [(s.value, dict(s.parts), s.flagged) for s in (coerce_score(fn(a)) for a in archs)]


@pytest.mark.parametrize("metric", ["angle+flatness", "accuracy", "angle + 0.2*accuracy + 16/sigma1*flatness"])
def test_score_is_independent_of_the_order_and_number_scored_before(tiny_run, metric):
    run = _run(tiny_run, metric)
    rng = random.Random(3)
    archs = [run.space.sample(rng) for _ in range(7)]
    archs.append(archs[2])  # scored twice by one function: the second time from its caches
    in_order = _scores(run, archs)
    assert len({v for v, _, _ in in_order}) > 3  # the candidates do differ
    assert _scores(run, archs[::-1]) == in_order[::-1]
    for world in (2, 3):
        for rank in range(world):  # each rank's share, scored by that rank's own function
            assert _scores(run, archs[rank::world]) == in_order[rank::world]
    assert [_scores(run, [a])[0] for a in archs] == in_order  # each alone
