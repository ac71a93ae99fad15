from __future__ import annotations

import math

import pytest
import torch

from fastnas.metrics import FlatnessConfig, Score, make_score_fn
from fastnas.metrics.combine import combined
from fastnas.search import EvolutionConfig, evolve
from fastnas.spaces.nb201 import NB201

ARCH = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "none", "nor_conv_3x3")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    space = NB201(C=4, N=1, resolution=8)
    sn = space.supernet()
    init = {k: v.clone() for k, v in sn.state_dict().items()}
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    return space, sn, init, x, y


def _fn(setup, metric, **kw):
    space, sn, init, x, y = setup
    cfg = kw.pop("flatness_config", FlatnessConfig(bn_batches=2, bn_batch_size=16))
    return make_score_fn(metric, sn, space, valid=(x, y), calib_x=x, initial_state=init, flatness_config=cfg, **kw)


def test_combined_metrics_are_sums_of_their_parts(setup):
    parts = {m: _fn(setup, m)(ARCH) for m in ("accuracy", "angle", "flatness")}
    af = _fn(setup, "angle+flatness")(ARCH)
    assert af.parts["angle"] == parts["angle"].value and af.parts["flatness"] == parts["flatness"].value
    assert af.value == pytest.approx(combined(parts["angle"].value, parts["flatness"].value, 2e-3, 16.0))
    assert set(af.parts) == {"angle", "flatness", "loss@0.002", "loss@0.01", "loss@0.02"}
    cf = _fn(setup, "accuracy+flatness", gamma=4.0)(ARCH)
    assert cf.value == pytest.approx(parts["accuracy"].value + 4.0 / 2e-3 * parts["flatness"].value)
    aa = _fn(setup, "angle+accuracy")(ARCH)
    assert aa.value == pytest.approx(parts["angle"].value + parts["accuracy"].value)
    assert all(isinstance(s, Score) and not s.flagged for s in (af, cf, aa))


def test_cache_and_counts(setup):
    fn = _fn(setup, "flatness")
    s1 = fn(ARCH)
    s2 = fn(list(ARCH))  # validated to the same tuple
    assert s1 is s2 and fn.evaluations == 1 and fn.calls == 2
    nocache = _fn(setup, "flatness", cache=False)
    assert nocache(ARCH).value == s1.value and nocache(ARCH).value == s1.value and nocache.evaluations == 2
    assert fn.stats()["evaluator"]["path"] == "extracted"


def test_nan_is_flagged_worst_and_search_goes_on(setup):
    space = setup[0]
    fn = _fn(setup, "angle+flatness", flatness_config=FlatnessConfig(sigmas=(1e-3, 1e35), bn_batches=0))
    s = fn(ARCH)
    assert s.flagged and s.value == -math.inf and math.isfinite(s.parts["angle"])
    res = evolve(space, fn, EvolutionConfig(population=4, topk=2, mutations=1, crossovers=1, generations=2, seed=0))
    assert len(res.history) >= 4


def test_bad_arguments(setup):
    space, sn, init, x, y = setup
    with pytest.raises(ValueError, match="metric=.*did you mean 'angle'"):
        make_score_fn("angel", sn)
    with pytest.raises(ValueError, match="initial_state"):
        make_score_fn("angle", sn)
    with pytest.raises(ValueError, match="valid"):
        make_score_fn("flatness", sn)
    with pytest.raises(ValueError, match="supernet"):
        make_score_fn("flatness", torch.nn.Linear(2, 2), valid=(x, y))


def test_search_split_input(setup):
    from fastnas.data import SearchSplit
    space, sn, init, x, y = setup
    split = SearchSplit(supernet_train=(x, y), search_valid=(x, y), test=(x, y))
    a = make_score_fn("accuracy", sn, split=split, bn_batches=2, bn_batch_size=16)(ARCH)
    b = _fn(setup, "accuracy")(ARCH)
    assert a.value == b.value
