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


def test_metric_objects_and_formulas_score_like_the_presets(setup):
    from fastnas.metrics import METRIC_PRESETS, Metric

    preset = _fn(setup, "angle+flatness")(ARCH)
    as_object = _fn(setup, METRIC_PRESETS["angle+flatness"])(ARCH)
    as_text = _fn(setup, "angle + 16/sigma1*flatness")(ARCH)
    assert preset == as_object == as_text
    assert list(as_text.parts) == ["angle", "flatness", "loss@0.002", "loss@0.01", "loss@0.02"]
    eight = _fn(setup, Metric.parse("angle + 8/sigma1*flatness"))(ARCH)
    assert eight.value == _fn(setup, "angle+flatness", gamma=8.0)(ARCH).value
    assert _fn(setup, "angle+flatness").stats()["metric"] == "angle+flatness"
    assert _fn(setup, "angle + 2*accuracy").stats()["metric"] == "angle + 2*accuracy"


def test_each_need_is_evaluated_once_per_candidate(setup, monkeypatch):
    from fastnas.metrics import parts as parts_mod
    from fastnas.metrics.parts import register_score_part

    monkeypatch.setattr(parts_mod, "_REGISTRY", dict(parts_mod._REGISTRY))
    register_score_part("error", needs=("clean",), fn=lambda ctx: 1.0 - ctx.result.clean_accuracy)
    fn = _fn(setup, "accuracy - 2*error + 1*loss@0.01 + 1/sigma1*flatness")
    s = fn(ARCH)
    assert fn.evaluator.evaluations == 1 and fn.needs == {"clean", "perturbed"}
    acc = _fn(setup, "accuracy")(ARCH)
    flat = _fn(setup, "flatness")(ARCH)
    assert s.parts["accuracy"] == acc.value and s.parts["error"] == 1.0 - acc.value
    assert s.parts["loss@0.01"] == flat.parts["loss@0.01"]
    want = acc.value + -2.0 * (1.0 - acc.value) + flat.parts["loss@0.01"] + 1.0 * (1.0 / 2e-3) * flat.value
    assert s.value == pytest.approx(want, rel=1e-12)


def test_part_checks_and_gamma_errors(setup):
    with pytest.raises(ValueError, match=r"loss@0.5'.*not one of the noise levels"):
        _fn(setup, "loss@0.5")
    with pytest.raises(ValueError, match="has no mixing weight"):
        _fn(setup, "angle + 2*accuracy", gamma=3.0)
    with pytest.raises(ValueError, match="unknown score part 'top5'; registered parts"):
        _fn(setup, "1*accuracy - 1*top5")
    assert _fn(setup, "angle", gamma=3.0)(ARCH).value == _fn(setup, "angle")(ARCH).value  # nothing to mix


def test_default_sigmas_come_from_the_space_presets(setup):
    space, sn, init, x, y = setup

    class Presets:
        sigmas = (1e-3, 3e-3)

    class WithPresets:
        def __init__(self, inner):
            self.inner = inner

        def validate(self, arch):
            return self.inner.validate(arch)

        def presets(self, data=None):
            return Presets()

    fn = make_score_fn("flatness", sn, WithPresets(space), valid=(x, y), calib_x=x, bn_batches=2, bn_batch_size=16)
    assert fn.flatness_config.sigmas == (1e-3, 3e-3) and set(fn(ARCH).parts) == {"flatness", "loss@0.001",
                                                                                   "loss@0.003"}
    class NoPresets:
        def validate(self, arch):
            return space.validate(arch)

    assert make_score_fn("flatness", sn, NoPresets(), valid=(x, y), calib_x=x).flatness_config == FlatnessConfig()
