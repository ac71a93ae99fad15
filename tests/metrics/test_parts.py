"""Score parts and metrics: the registry, the formula language, and the presets' values against the
formulas of the metric names they replace (recorded evaluations and hand-computed cases)."""

from __future__ import annotations

import math
import random

import pytest

from fastnas.metrics import parts as parts_mod
from fastnas.metrics.combine import combined
from fastnas.metrics.evaluator import EvalResult
from fastnas.metrics.flatness import FlatnessConfig, result_from_eval
from fastnas.metrics.metric import DEFAULT_GAMMA, METRIC_PRESETS, METRICS, Metric, Term
from fastnas.metrics.parts import (
    NEEDS, PartContext, get_score_part, list_score_parts, register_score_part,
)
from fastnas.metrics.scores import ScoreFunction, default_flatness_config


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, restored after the test."""
    monkeypatch.setattr(parts_mod, "_REGISTRY", dict(parts_mod._REGISTRY))


# ---- the registry ----------------------------------------------------------------------------------

def test_builtin_parts_and_their_needs():
    assert list_score_parts() == ["accuracy", "angle", "flatness", "loss", "loss@<sigma>", "nfr"]
    assert list_score_parts("loss*") == ["loss", "loss@<sigma>"]
    assert get_score_part("accuracy").needs == {"clean"}
    assert get_score_part("angle").needs == {"initial_state"}
    assert get_score_part("flatness").needs == {"perturbed"}
    assert get_score_part("nfr").needs == {"clean", "reference"}
    p = get_score_part("loss@1e-2")
    assert p.name == "loss@0.01" and p.needs == {"perturbed"}
    assert all(get_score_part(n.replace("<sigma>", "0.5")).needs <= set(NEEDS) for n in list_score_parts())


def test_unknown_part_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown score part 'top5'; registered parts: \['accuracy'"):
        get_score_part("top5")
    with pytest.raises(ValueError, match="did you mean 'flatness'"):
        get_score_part("flatnes")
    with pytest.raises(ValueError, match="family 'los@<...>'; did you mean 'loss'"):
        get_score_part("los@0.01")
    with pytest.raises(ValueError, match="bad sigma '-1'|expected a part name"):
        get_score_part("loss@-1")
    with pytest.raises(ValueError, match="bad sigma '0'"):
        get_score_part("loss@0")


def test_register_validates(registry):
    with pytest.raises(ValueError, match="unknown need 'clen'; did you mean 'clean'"):
        register_score_part("x", needs=("clen",), fn=lambda ctx: 0.0)
    with pytest.raises(ValueError, match="already registered"):
        register_score_part("angle", needs=(), fn=lambda ctx: 0.0)
    with pytest.raises(ValueError, match="name='2x'"):
        register_score_part("2x", fn=lambda ctx: 0.0)
    with pytest.raises(ValueError, match="canonical"):
        register_score_part("y", canonical=str, fn=lambda ctx: 0.0)


def test_a_registered_part_is_usable_in_a_metric(registry):
    @register_score_part("error", needs=("clean",))
    def error(ctx):
        """Top-1 error."""
        return 1.0 - ctx.result.clean_accuracy

    assert "error" in list_score_parts() and get_score_part("error").description == "Top-1 error."
    m = Metric.parse("accuracy - 2*error")
    assert m.needs == {"clean"} and m.parts == ("accuracy", "error")
    r = EvalResult((), (), (), 10, clean_loss=0.7, clean_accuracy=0.8)
    ctx = PartContext(arch=None, result=r)
    values = {**get_score_part("accuracy")(ctx), **get_score_part("error")(ctx)}
    assert values == {"accuracy": 0.8, "loss": 0.7, "error": pytest.approx(0.2)}
    assert m.value(values) == pytest.approx(0.8 - 2 * 0.2)


def test_a_part_returning_a_mapping_must_hold_its_name(registry):
    register_score_part("bad", fn=lambda ctx: {"other": 1.0})
    with pytest.raises(TypeError, match="expected its own name 'bad'"):
        get_score_part("bad")(PartContext(arch=None))


# ---- the formula language --------------------------------------------------------------------------

@pytest.mark.parametrize("text, terms", [
    ("angle + 16/sigma1*flatness", [(1.0, "angle", None), (16.0, "flatness", "per_sigma1")]),
    ("1*accuracy - 0.5*loss", [(1.0, "accuracy", None), (-0.5, "loss", None)]),
    ("-angle+2e-3 * accuracy", [(-1.0, "angle", None), (0.002, "accuracy", None)]),
    ("  .5/sigma_1*flatness  ", [(0.5, "flatness", "per_sigma1")]),
    ("loss@1e-2 - loss@0.002", [(1.0, "loss@0.01", None), (-1.0, "loss@0.002", None)]),
])
def test_parse_formulas(text, terms):
    m = Metric.parse(text)
    assert [(t.weight, t.part, t.scale) for t in m.terms] == terms
    assert m.gamma is None and m.name is None
    assert Metric.parse(m.formula) == m  # the formula reads back
    assert Metric.parse(m) is m


def test_preset_names_win_and_keep_their_gamma():
    for name in METRICS:
        assert Metric.parse(name) is METRIC_PRESETS[name] and str(METRIC_PRESETS[name]) == name
    assert Metric.parse(" angle + flatness ") is METRIC_PRESETS["angle+flatness"]
    assert METRIC_PRESETS["angle+flatness"].formula == "angle + 16/sigma1*flatness"
    assert METRIC_PRESETS["angle+accuracy"].formula == "angle + accuracy"
    assert DEFAULT_GAMMA == {"angle+flatness": 16.0, "accuracy+flatness": 16.0, "angle+accuracy": 1.0}
    assert METRIC_PRESETS["angle+flatness"].with_gamma(4).terms[1].weight == 4.0
    assert METRIC_PRESETS["angle"].with_gamma(4) is METRIC_PRESETS["angle"]


@pytest.mark.parametrize("text, message", [
    ("1*accuracy - 1*top5", r"metric='1\*accuracy - 1\*top5': unknown score part 'top5'; registered parts: \["),
    ("angel", "did you mean 'angle'"),
    ("angle flatness", "expected '\\+' or '-' between terms, got 'flatness' at position 6"),
    ("16flatness", "expected '\\*' between a weight and its part"),
    ("angle + 3/sigma2*flatness", "expected 'sigma1' after '/'"),
    ("angle +", "expected a score part, got the end"),
    ("angle ^ 2", "unexpected '\\^' at position 6"),
    ("", "empty formula"),
    ("2*sigma1", "expected a score part"),
])
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        Metric.parse(text)


def test_metric_and_term_validation():
    with pytest.raises(ValueError, match="expected a preset name"):
        Metric.parse(3)
    with pytest.raises(ValueError, match="weight=nan"):
        Term(math.nan, "angle")
    with pytest.raises(ValueError, match="scale='sigma2'"):
        Term(1.0, "angle", "sigma2")
    with pytest.raises(ValueError, match="non-empty"):
        Metric(())
    with pytest.raises(ValueError, match="at most one"):
        Metric((Term(1.0, "angle", mixing=True), Term(1.0, "accuracy", mixing=True)))
    with pytest.raises(ValueError, match="has no mixing weight"):
        Metric.parse("angle + 2*accuracy").with_gamma(3.0)
    with pytest.raises(ValueError, match="gamma=inf"):
        METRIC_PRESETS["angle+flatness"].with_gamma(math.inf)
    with pytest.raises(ValueError, match="needs score settings"):
        Metric.parse("angle + 1/sigma1*flatness").value({"angle": 1.0, "flatness": 1.0})


def test_value_hand_computed():
    cfg = FlatnessConfig(sigmas=(0.002, 0.01, 0.02))
    m = Metric.parse("angle + 16/sigma1*flatness - 0.5*loss")
    # 0.25 + 16 / 0.002 * 1e-3 - 0.5 * 2 = 0.25 + 8 - 1
    assert m.value({"angle": 0.25, "flatness": 1e-3, "loss": 2.0}, cfg) == pytest.approx(7.25)


# ---- presets against the formulas of the old metric names ------------------------------------------

def _old_score(metric, gamma, angle, r, cfg):
    """The score of the metric names before parts (fastnas 0.1 ScoreFunction._score), the reference."""
    names = metric.split("+")
    parts = {}
    if "angle" in names:
        parts["angle"] = angle
    if "accuracy" in names:
        parts["accuracy"], parts["loss"] = r.clean_accuracy, r.clean_loss
    if "flatness" in names:
        parts.update(result_from_eval(r, cfg.alpha, cfg.eps).parts())
    values = [parts[p] for p in names]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in parts.values()):
        return float("-inf"), parts, True
    if len(names) == 1:
        value = float(values[0])
    elif names[1] == "flatness":
        value = combined(values[0], values[1], cfg.sigmas[0], gamma)
    else:
        value = float(values[0]) + gamma * float(values[1])
    if not math.isfinite(value):
        return float("-inf"), parts, True
    return value, parts, False


class _RecordedEvaluator:
    """Replays a recorded EvalResult, keeping what was asked for."""

    def __init__(self, result):
        self.result, self.calls = result, []

    def evaluate(self, arch, *, clean=False, perturbed=True):
        self.calls.append((clean, perturbed))
        r = self.result
        return EvalResult(r.sigmas if perturbed else (), r.losses if perturbed else (),
                          r.accuracies if perturbed else (), r.n, r.clean_loss if clean else None,
                          r.clean_accuracy if clean else None)

    def report(self):
        return {}


def _recorded(rng, sigmas, samples, bad=None):
    losses = tuple(tuple(rng.uniform(0.1, 3.0) for _ in range(samples)) for _ in sigmas)
    accs = tuple(tuple(rng.random() for _ in range(samples)) for _ in sigmas)
    clean_loss, clean_acc = rng.uniform(0.1, 3.0), rng.random()
    if bad == "perturbed":
        losses = (losses[0],) + ((float("nan"),) * samples,) + losses[2:]
    elif bad == "clean":
        clean_loss = float("inf")
    return EvalResult(tuple(sigmas), losses, accs, 100, clean_loss, clean_acc)


_CASES = [
    # (sigmas, samples, alpha, eps, bad)
    ((2e-3, 1e-2, 2e-2), 1, 1.0, 1e-5, None),
    ((1e-5, 5e-5, 1e-4), 2, 1.0, 1e-5, None),
    ((1e-3, 3e-3, 6e-3), 3, 0.0, 0.0, None),
    ((0.05,), 1, 0.5, 1e-5, None),
    ((2e-3, 1e-2, 2e-2), 1, 1.0, 1e-5, "perturbed"),
    ((2e-3, 1e-2, 2e-2), 2, 1.0, 1e-5, "clean"),
]


#: The presets that existed before parts (the REG-NAS rewards R0-R2 came later: tests/metrics/test_nfr_part.py).
_OLD_PRESETS = [m for m in METRICS if m not in ("R0", "R1", "R2")]


@pytest.mark.parametrize("metric", _OLD_PRESETS)
@pytest.mark.parametrize("gamma", [None, 3.5])
@pytest.mark.parametrize("case", range(len(_CASES)))
def test_presets_equal_the_old_formulas(metric, gamma, case):
    sigmas, samples, alpha, eps, bad = _CASES[case]
    rng = random.Random(case * 101 + len(metric))
    cfg = FlatnessConfig(sigmas=sigmas, alpha=alpha, eps=eps, samples=samples)
    for angle in (rng.random(), float("nan") if bad else 0.0):
        r = _recorded(rng, sigmas, samples, bad)
        ev = _RecordedEvaluator(r)
        fn = ScoreFunction(Metric.parse(metric).with_gamma(gamma), None, lambda arch, a=angle: a, ev, cfg, False)
        s = fn("arch")
        old_gamma = (DEFAULT_GAMMA[metric] if gamma is None else gamma) if "+" in metric else None
        value, parts, flagged = _old_score(metric, old_gamma, angle, r, cfg)
        assert list(s.parts.items()) == list(parts.items()) or (
            flagged and list(s.parts) == list(parts)
            and all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(s.parts.values(), parts.values())))
        assert s.value == value and s.flagged == flagged  # exact, not approximate
        names = metric.split("+")
        want = ("accuracy" in names, "flatness" in names)
        assert ev.calls == ([want] if any(want) else [])  # one evaluation with exactly the needs


def test_preset_values_hand_computed():
    # losses (0.5, 0.6, 0.8) at sigmas (0.002, 0.01, 0.02), alpha 1, eps 1e-5:
    #   F = 1 / (0.1/0.008 + 0.2/0.01 + 0.5/0.002 + 1e-5) = 1 / 282.50001
    cfg = FlatnessConfig(sigmas=(0.002, 0.01, 0.02))
    r = EvalResult(cfg.sigmas, ((0.5,), (0.6,), (0.8,)), ((0.9,), (0.8,), (0.7,)), 10, 0.4, 0.75)
    F = 1 / 282.50001

    def score(metric, gamma=None):
        return ScoreFunction(Metric.parse(metric).with_gamma(gamma), None, lambda a: 0.25,
                             _RecordedEvaluator(r), cfg, False)("a")

    s = score("angle+flatness")
    assert s.value == pytest.approx(0.25 + 16 / 0.002 * F, rel=1e-12)
    assert s.parts == {"angle": 0.25, "flatness": pytest.approx(F, rel=1e-12), "loss@0.002": 0.5, "loss@0.01": 0.6,
                       "loss@0.02": 0.8}
    assert score("accuracy+flatness", 2.0).value == pytest.approx(0.75 + 2 / 0.002 * F, rel=1e-12)
    assert score("angle+accuracy").value == 0.25 + 0.75
    assert score("accuracy").parts == {"accuracy": 0.75, "loss": 0.4}
    assert score("loss@0.01 - 2*loss@0.002").value == pytest.approx(0.6 - 1.0)
    assert score("-loss").value == -0.4


# ---- default settings ------------------------------------------------------------------------------

class _Presets:
    sigmas = (1e-3, 3e-3, 6e-3)


class _SpaceWithPresets:
    def __init__(self):
        self.asked = []

    def presets(self, data=None):
        self.asked.append(data)
        return _Presets()


def test_default_flatness_config_uses_the_space_presets():
    space = _SpaceWithPresets()
    assert default_flatness_config(space).sigmas == (1e-3, 3e-3, 6e-3) and space.asked == [None]
    assert default_flatness_config(space, "cifar100").sigmas == (1e-3, 3e-3, 6e-3) and space.asked[-1] == "cifar100"
    assert default_flatness_config(object()) == FlatnessConfig()
    assert default_flatness_config(None) == FlatnessConfig()
