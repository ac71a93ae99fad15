"""The ask/tell protocol, for every registered searcher: asking, telling, snapshots, the one loop."""

from __future__ import annotations

import json

import pytest
from _toy_space import GeneSpace, separable

from fastnas.metrics.combine import Score
from fastnas.search import (
    Evolution, EvolutionConfig, ExhaustiveConfig, ExhaustiveSearch, RandomConfig, RandomSearch, SearchConfig,
    Searcher, create_searcher, evolve, exhaustive, list_searchers, random_search, register_searcher, run_search,
)
from fastnas.search.history import coerce_score

CONFIG = SearchConfig(population=7, generations=4, topk=3, mutations=3, crossovers=3, mutate_prob=0.3, seed=5,
                      max_flops=9.0)
SEARCHERS = ["evolution", "random", "exhaustive", "enas"]
# the ENAS controller samples with replacement: a limit most uniform samples meet (GeneSpace(6, 5)'s FLOPs
# average 22), since infeasible samples are not scored
LIMIT = {"enas": 30.0}


def _config(name):
    return SearchConfig(**{**CONFIG.to_dict(), "max_flops": LIMIT.get(name, CONFIG.max_flops)})


def distinct(arch) -> float:
    """A score with no ties (so the top-k does not depend on the order candidates are told in)."""
    return float(sum(g * 7 ** i for i, g in enumerate(arch)))


def _space(name):
    return GeneSpace(3, 4) if name == "exhaustive" else GeneSpace(6, 5)  # exhaustive: 64 archs


def _rows(result):
    return [(r.generation, r.text, r.score, r.origin, r.flagged, r.params, r.flops) for r in result.history]


def _full(name, score=separable):
    return run_search(create_searcher(name, _space(name), _config(name)), score)


def test_registry_holds_the_three_and_builds_searchers():
    assert set(SEARCHERS) <= set(list_searchers())
    for name in SEARCHERS:
        assert isinstance(create_searcher(name, _space(name), _config(name)), Searcher)
    with pytest.raises(ValueError, match="did you mean 'random'"):
        create_searcher("randm", _space("random"))


def test_search_config_maps_onto_each_searcher():
    cfg = SearchConfig(population=6, generations=3, topk=2, mutations=2, crossovers=1, seed=4, max_params=300)
    assert SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    ev = create_searcher("evolution", GeneSpace(), cfg).config
    assert (ev.population, ev.generations, ev.topk, ev.mutations, ev.crossovers, ev.seed, ev.max_params) == \
        (6, 3, 2, 2, 1, 4, 300)
    assert create_searcher("random", GeneSpace(), cfg).config == RandomConfig(n=18, seed=4, max_params=300, topk=2,
                                                                              batch=6)
    assert create_searcher("exhaustive", GeneSpace(), cfg).config == ExhaustiveConfig(max_params=300, topk=2, batch=6)
    # a searcher's own config, and keyword overrides, are taken as they are
    assert create_searcher("random", GeneSpace(), RandomConfig(n=3)).config.n == 3
    assert create_searcher("random", GeneSpace(), cfg, batch=2).config.batch == 2
    for bad, word in [({"population": 0}, "population"), ({"mutate_prob": 2.0}, "mutate_prob"),
                      ({"max_flops": -1.0}, "max_flops"), ({"seed": -1}, "seed")]:
        with pytest.raises(ValueError, match=word):
            SearchConfig(**bad)
    with pytest.raises(ValueError, match="did you mean 'population'"):
        SearchConfig.from_dict({"popultion": 3})


@pytest.mark.parametrize("name", SEARCHERS)
def test_ask_is_idempotent_and_tell_checks_what_it_gets(name):
    s = create_searcher(name, _space(name), _config(name))
    with pytest.raises(ValueError, match="ask"):
        s.tell([(0,) * 3], [1.0])
    archs = s.ask()
    assert archs and archs == s.ask()  # every rank asks the same architectures
    assert len(set(archs)) == len(archs) == min(CONFIG.population, len(archs))
    with pytest.raises(ValueError, match="2 architectures but 1 scores"):
        s.tell(archs[:2], [1.0])
    s.tell(archs[:1], [Score(1.0)])
    with pytest.raises(ValueError, match="told already"):
        s.tell(archs[:1], [1.0])
    with pytest.raises(ValueError, match="expected a number or a Score"):
        s.tell(archs[1:2], ["high"])
    assert s.ask() == archs[1:]  # a failed tell changes nothing
    assert s.n_scored == 1


@pytest.mark.parametrize("name", SEARCHERS)
def test_loop_ends_done_and_scores_nothing_twice(name):
    calls, events = [], []
    s = create_searcher(name, _space(name), _config(name))
    result = run_search(s, lambda a: calls.append(a) or separable(a), callback=lambda e, i: events.append((e, i)))
    assert s.done and s.ask() == []
    assert len(calls) == len(set(calls)) == len(result.history) == s.n_scored
    assert all(_space(name).flops(a) <= LIMIT.get(name, 9.0) for a in calls)
    candidates = [i for e, i in events if e == "candidate"]
    rounds = [i for e, i in events if e == "generation"]
    assert [i["n_scored"] for i in candidates] == list(range(1, len(calls) + 1))
    assert [i["record"].arch for i in candidates] == calls
    assert [i["generation"] for i in rounds] == list(range(s.rounds_done)) and rounds
    assert rounds[-1]["best"] == result.best and rounds[-1]["topk"] == result.topk
    if name == "enas":  # repeated and infeasible samples are not scored
        assert 0 < len(calls) <= CONFIG.population * CONFIG.generations == s.total
        assert s.rounds_done == CONFIG.generations == s.planned_rounds
    elif name != "exhaustive":
        assert len(calls) == CONFIG.population * CONFIG.generations == s.total
        assert s.rounds_done == CONFIG.generations == s.planned_rounds
    else:
        assert len(calls) == sum(1 for a in _space(name).enumerate() if _space(name).flops(a) <= 9.0)


@pytest.mark.parametrize("name", SEARCHERS)
def test_restored_from_any_snapshot_ends_identical_and_scores_only_the_rest(name):
    full = _full(name)
    snapshots = []
    s = create_searcher(name, _space(name), _config(name))
    run_search(s, separable, callback=lambda e, i: snapshots.append(json.dumps(i["searcher"].state_dict(),
                                                                               allow_nan=False)))
    assert _rows(s.result()) == _rows(full)
    n = len(full.history)
    for k, snap in enumerate(snapshots):
        if k % 3 and k != len(snapshots) - 1:
            continue  # every third snapshot keeps the test quick; the mid-round ones are among them
        restored = create_searcher(name, _space(name), _config(name))
        restored.load_state_dict(json.loads(snap))
        calls = []
        result = run_search(restored, lambda a: calls.append(a) or separable(a))
        assert _rows(result) == _rows(full), k
        assert [r.text for r in result.topk] == [r.text for r in full.topk]
        assert len(calls) == n - json.loads(snap)["history"].__len__()
        assert (result.generations, result.exhausted, result.config) == \
            (full.generations, full.exhausted, full.config)


@pytest.mark.parametrize("name", SEARCHERS)
def test_whole_round_and_sharded_tells_give_the_same_search(name):
    full = _full(name, distinct)
    for shards in (1, 3):
        s = create_searcher(name, _space(name), _config(name))
        while not s.done:
            archs = s.ask()
            if not archs:
                break
            for r in range(shards):  # rank r scores archs[r::shards]; rank 0 tells them all
                part = archs[r::shards]
                s.tell(part, [coerce_score(distinct(a)) for a in part])
        result = s.result()
        if shards == 1:
            assert _rows(result) == _rows(full)
        else:  # the order within a round follows the tells; the rounds and the top-k do not change
            assert sorted(_rows(result)) == sorted(_rows(full))
            assert [r.text for r in result.topk] == [r.text for r in full.topk]


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_random_batches_change_nothing_even_when_the_space_runs_out(seed):
    # 9 architectures; max_tries=1 soon falls back to drawing from the unseen ones (the proposer's
    # ``remaining``, which holds stale entries once a later sample succeeds: the state must keep it)
    space = GeneSpace(2, 3)
    ref = random_search(space, separable, 12, seed=seed, max_tries=1)
    assert ref.exhausted and len(ref.history) == 9
    for batch in (1, 2, 4, 5):
        cfg = RandomConfig(n=12, seed=seed, max_tries=1, batch=batch)
        snaps = []
        got = run_search(RandomSearch(space, cfg), separable,
                         callback=lambda e, i: snaps.append(json.dumps(i["searcher"].state_dict())))
        assert _rows(got) == _rows(ref) and got.exhausted and got.config == ref.config
        if batch <= 2:  # (larger rounds draw the whole fall-back list while proposing)
            assert any(json.loads(sn)["remaining"] for sn in snaps)  # the fall-back list is in the state
        for sn in snaps:
            restored = RandomSearch(space)
            restored.load_state_dict(json.loads(sn))
            assert _rows(run_search(restored, separable)) == _rows(ref)


def test_exhaustive_batches_change_nothing_and_restore_anywhere():
    space = GeneSpace(3, 4)
    ref = exhaustive(space, separable, max_params=150, topk=4)
    for batch in (1, 5, 64, 100):
        snaps = []
        got = run_search(ExhaustiveSearch(space, ExhaustiveConfig(max_params=150, topk=4, batch=batch)), separable,
                         callback=lambda e, i: snaps.append(json.dumps(i["searcher"].state_dict())))
        assert _rows(got) == _rows(ref) and got.config == ref.config and got.exhausted
        for sn in snaps[::4]:
            restored = ExhaustiveSearch(space)
            restored.load_state_dict(json.loads(sn))
            assert _rows(run_search(restored, separable)) == _rows(ref)


def test_state_of_another_searcher_or_space_is_refused():
    evo = Evolution(GeneSpace(), EvolutionConfig(population=4, topk=2, mutations=1, crossovers=1, generations=1))
    run_search(evo, separable)
    with pytest.raises(ValueError, match="'evolution' searcher's state: expected a 'random' state"):
        RandomSearch(GeneSpace()).load_state_dict(evo.state_dict())
    rnd = RandomSearch(GeneSpace(), RandomConfig(n=3))
    run_search(rnd, separable)
    other = type("Other", (GeneSpace,), {"name": "other"})()
    with pytest.raises(ValueError, match="space 'toy'"):
        RandomSearch(other).load_state_dict(rnd.state_dict())


def test_evolution_reads_a_state_saved_between_last_candidate_and_close(toy_space):
    # Before the ask/tell protocol, the state saved after a generation's last candidate had pending == []
    # and the generation not yet closed; loading it closes the generation.
    cfg = EvolutionConfig(population=5, topk=2, mutations=2, crossovers=2, generations=3, seed=1)
    full = evolve(toy_space, separable, cfg)
    snaps = {}
    evolve(toy_space, separable, cfg, callback=lambda e, p: snaps.setdefault((e, p["generation"]),
                                                                               p["state"].state_dict()))
    old = dict(snaps[("candidate", 1)])  # first candidate of generation 1: pending has the other 4
    old["history"] = old["history"] + [r.to_dict() for r in full.history[len(old["history"]):10]]
    old["pending"] = []
    state = Evolution.from_state_dict(toy_space, old)
    assert state.generation == 2 and state.pending is None
    assert [state.history[i].text for i in state.topk] == \
        [full.history[i].text for i in snaps[("generation", 1)]["topk"]]
    assert _rows(evolve(toy_space, separable, state=state)) == _rows(full)


def test_exhausted_evolution_is_done_and_a_longer_one_tries_again(tiny_space):
    cfg = EvolutionConfig(population=3, topk=2, mutations=1, crossovers=1, generations=10, max_tries=5)
    state = Evolution(tiny_space, cfg)
    evolve(tiny_space, lambda a: float(sum(a)), state=state)
    assert state.exhausted and state.done and state.ask() == []
    longer = EvolutionConfig(**{**cfg.to_dict(), "generations": 12})
    result = evolve(tiny_space, lambda a: float(sum(a)), longer, state=state)
    assert result.exhausted and len(result.history) == 4


def test_a_new_searcher_is_one_class_and_its_registration(monkeypatch):
    from fastnas.search import registry

    monkeypatch.setattr(registry, "_SEARCHERS", dict(registry._SEARCHERS))

    class Countdown(Searcher):
        """Asks one architecture at a time from a fixed list; the smallest shape of the protocol."""

        def __init__(self, space, config=None):
            self.space, self.todo, self.records = space, sorted(space.enumerate())[:5], []

        def ask(self):
            return self.todo[:1]

        def tell(self, archs, scores):
            from fastnas.search.history import make_record
            recs = [make_record(self.space, a, s, 0, "random") for a, s in zip(archs, scores)]
            self.todo = [a for a in self.todo if a not in archs]
            self.records += recs
            return recs

        @property
        def done(self):
            return not self.todo

        def state_dict(self):
            return {"todo": [self.space.format(a) for a in self.todo]}

        def load_state_dict(self, d):
            self.todo = [self.space.parse(t) for t in d["todo"]]

        def result(self):
            from fastnas.search.history import best_of
            return best_of(self.records, 2, True, {})

    register_searcher("countdown")(Countdown)
    result = run_search(create_searcher("countdown", GeneSpace(2, 3)), separable)
    assert [r.text for r in result.history] == ["0-0", "0-1", "0-2", "1-0", "1-1"]
    assert result.best.text == "1-0"  # separable peaks at (4, 0)
    register_searcher("broken")(lambda space, config=None: object())
    with pytest.raises(TypeError, match="expected a Searcher"):
        create_searcher("broken", GeneSpace())
