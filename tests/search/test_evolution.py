from __future__ import annotations

import json
import math

import pytest
from _toy_space import GeneSpace, separable

from fastnas.metrics.combine import Score
from fastnas.search.evolution import EvolutionConfig, EvolutionState, evolve


def _history(result):
    return [(r.generation, r.text, r.score, r.origin, r.flagged) for r in result.history]


SMALL = EvolutionConfig(population=20, topk=5, mutations=8, crossovers=8, mutate_prob=0.2, generations=8, seed=3)


def test_config_defaults_presets_and_round_trip():
    cfg = EvolutionConfig()
    assert (cfg.population, cfg.topk, cfg.mutations, cfg.crossovers, cfg.mutate_prob, cfg.generations) == \
        (50, 10, 25, 25, 0.1, 20)
    rl = EvolutionConfig.rlnas()
    assert (rl.population, rl.topk, rl.mutations, rl.crossovers, rl.mutate_prob, rl.generations) == \
        (100, 30, 50, 50, 0.1, 20)
    assert EvolutionConfig.from_dict(json.loads(json.dumps(SMALL.to_dict()))) == SMALL
    assert EvolutionConfig.from_dict({"seed": 4, "max_flops": None}).seed == 4


@pytest.mark.parametrize("kw, word", [
    ({"population": 0}, "population"), ({"topk": 60}, "topk"), ({"mutations": 40}, "mutations"),
    ({"mutate_prob": 1.5}, "mutate_prob"), ({"max_params": -1}, "max_params"), ({"generations": 0}, "generations"),
])
def test_config_rejects_bad_values(kw, word):
    with pytest.raises(ValueError, match=word):
        EvolutionConfig(**kw)


def test_config_from_dict_unknown_key_suggests():
    with pytest.raises(ValueError, match="did you mean 'population'"):
        EvolutionConfig.from_dict({"populaton": 3})


def test_deterministic_under_seed(toy_space):
    a = evolve(toy_space, separable, SMALL)
    b = evolve(toy_space, separable, SMALL)
    c = evolve(toy_space, separable, EvolutionConfig(**{**SMALL.to_dict(), "seed": 4}))
    assert _history(a) == _history(b)
    assert _history(a) != _history(c)


def test_never_scores_twice_and_sizes(toy_space):
    calls = []

    def score(arch):
        calls.append(arch)
        return separable(arch)

    gens = []
    result = evolve(toy_space, score, SMALL, callback=lambda ev, p: ev == "generation" and gens.append(p))
    assert len(calls) == len(set(calls)) == len(result.history)
    assert len(result.history) == SMALL.population * SMALL.generations
    assert result.generations == SMALL.generations and not result.exhausted
    for g in range(SMALL.generations):
        recs = [r for r in result.history if r.generation == g]
        assert len(recs) == SMALL.population
        origins = [r.origin for r in recs]
        if g == 0:
            assert set(origins) == {"random"}
        else:
            assert origins.count("mutation") <= SMALL.mutations
            assert origins.count("crossover") <= SMALL.crossovers
    assert len(gens) == SMALL.generations
    assert all(len(p["topk"]) == SMALL.topk for p in gens)
    # the top-k is the best k of everything scored so far, best first
    everything = sorted(result.history, key=lambda r: -r.score)
    assert [r.score for r in result.topk] == [r.score for r in everything[:SMALL.topk]]


def test_finds_optimum_of_separable_score(toy_space):
    result = evolve(toy_space, separable, EvolutionConfig(population=30, topk=8, mutations=12, crossovers=12,
                                                          mutate_prob=0.2, generations=15, seed=0))
    assert result.best.arch == (4, 0, 4, 0, 4, 0)
    assert result.best.score == 0.0
    assert len(result.history) < toy_space.size() / 20  # found without scoring much of the space


def test_constraints_respected(toy_space):
    cfg = EvolutionConfig(population=20, topk=5, mutations=8, crossovers=8, generations=6,
                          max_params=200, max_flops=12.0, seed=1)
    result = evolve(toy_space, separable, cfg)
    assert result.history
    for r in result.history:
        assert toy_space.params(r.arch) <= 200 and r.params == toy_space.params(r.arch)
        assert toy_space.flops(r.arch) <= 12.0 and r.flops == toy_space.flops(r.arch)


def test_nan_scores_flagged_never_selected_over_finite(toy_space):
    def score(arch):
        if arch[0] == 4:  # would be the best part of the space if NaN counted as large
            return float("nan")
        if arch[0] == 3:
            return Score(value=float("inf"), parts={"why": "diverged"})
        return Score(value=separable(arch), parts={"sep": separable(arch)})

    result = evolve(toy_space, score, SMALL)
    flagged = [r for r in result.history if r.flagged]
    assert flagged and all(r.arch[0] in (3, 4) for r in flagged)
    assert all(not r.flagged and math.isfinite(r.score) for r in result.topk)
    assert all(r.arch[0] not in (3, 4) for r in result.topk)
    assert result.topk[0].parts == {"sep": result.topk[0].score}


def test_flagged_rank_last_even_if_all_flagged(tiny_space):
    result = evolve(tiny_space, lambda a: float("nan"), EvolutionConfig(population=4, topk=2, mutations=1,
                                                                        crossovers=1, generations=3))
    assert len(result.topk) == 2 and all(r.flagged for r in result.topk)


def test_tiny_space_exhausts_and_stops(tiny_space):
    calls = []
    cfg = EvolutionConfig(population=3, topk=2, mutations=1, crossovers=1, generations=10, max_tries=5)
    result = evolve(tiny_space, lambda a: calls.append(a) or float(sum(a)), cfg)
    assert sorted(calls) == sorted(tiny_space.enumerate())  # all 4, each once
    assert result.exhausted and result.generations < 10
    assert result.best.arch == (1, 1)


def test_tiny_space_exhaustion_with_constraint(tiny_space):
    # params = 100 + 10 * sum: (1, 1) is excluded
    cfg = EvolutionConfig(population=3, topk=2, mutations=1, crossovers=1, generations=10, max_params=115)
    result = evolve(tiny_space, lambda a: float(sum(a)), cfg)
    assert sorted(r.arch for r in result.history) == [(0, 0), (0, 1), (1, 0)]
    assert result.exhausted


def _stop_after(event_name, k, saved):
    def callback(event, payload):
        if event == event_name:
            saved["n"] = saved.get("n", 0) + 1
            saved["state"] = json.dumps(payload["state"].state_dict())  # through real JSON
            if saved["n"] == k:
                raise KeyboardInterrupt
    return callback


@pytest.mark.parametrize("event_name, k", [("generation", 3), ("candidate", 47), ("generation", 1)])
def test_resume_equals_uninterrupted(toy_space, event_name, k):
    full = evolve(toy_space, separable, SMALL)
    saved = {}
    with pytest.raises(KeyboardInterrupt):
        evolve(toy_space, separable, SMALL, callback=_stop_after(event_name, k, saved))
    state = EvolutionState.from_state_dict(toy_space, json.loads(saved["state"]))
    resumed = evolve(toy_space, separable, state=state)
    assert _history(resumed) == _history(full)
    assert [r.text for r in resumed.topk] == [r.text for r in full.topk]
    assert [(r.params, r.flops) for r in resumed.history] == [(r.params, r.flops) for r in full.history]


def test_resume_scores_nothing_twice(toy_space):
    saved, calls = {}, []
    with pytest.raises(KeyboardInterrupt):
        evolve(toy_space, lambda a: calls.append(a) or separable(a), SMALL,
               callback=_stop_after("candidate", 30, saved))
    state = EvolutionState.from_state_dict(toy_space, json.loads(saved["state"]))
    evolve(toy_space, lambda a: calls.append(a) or separable(a), state=state)
    assert len(calls) == len(set(calls)) == SMALL.population * SMALL.generations


def test_resume_extends_generations_but_rejects_other_changes(toy_space):
    state = EvolutionState(toy_space, SMALL)
    evolve(toy_space, separable, state=state)
    longer = EvolutionConfig(**{**SMALL.to_dict(), "generations": SMALL.generations + 2})
    result = evolve(toy_space, separable, longer, state=state)
    assert result.generations == SMALL.generations + 2
    assert _history(result) == _history(evolve(toy_space, separable, longer))
    with pytest.raises(ValueError, match="seed"):
        evolve(toy_space, separable, EvolutionConfig(**{**longer.to_dict(), "seed": 9}), state=state)


def test_state_dict_is_json_with_nonfinite_scores(toy_space):
    state = EvolutionState(toy_space, EvolutionConfig(population=6, topk=2, mutations=2, crossovers=2, generations=2))
    evolve(toy_space, lambda a: float("nan") if a[0] == 0 else float(a[0]), state=state)
    text = json.dumps(state.state_dict(), allow_nan=False)
    back = EvolutionState.from_state_dict(toy_space, json.loads(text))
    assert [r.text for r in back.history] == [r.text for r in state.history]
    assert [r.flagged for r in back.history] == [r.flagged for r in state.history]
    with pytest.raises(ValueError, match="space"):
        EvolutionState.from_state_dict(type("Other", (GeneSpace,), {"name": "other"})(), json.loads(text))


def test_score_fn_returning_garbage_is_an_error(toy_space):
    with pytest.raises(ValueError, match="expected a number or a Score"):
        evolve(toy_space, lambda a: "high", SMALL)


def test_numpy_parts_serialise(toy_space):
    np = pytest.importorskip("numpy")
    state = EvolutionState(toy_space, EvolutionConfig(population=4, topk=2, mutations=1, crossovers=1, generations=1))
    evolve(toy_space, lambda a: Score(np.float32(a[0]), {"x": np.float64("nan"), "n": np.int64(3)}), state=state)
    d = json.loads(json.dumps(state.state_dict(), allow_nan=False))
    assert d["history"][0]["parts"]["n"] == 3 and d["history"][0]["parts"]["x"] == "nan"
