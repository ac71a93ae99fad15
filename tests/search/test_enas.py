"""The ENAS controller searcher: it learns, its REINFORCE step is the textbook one, it resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _toy_space import GeneSpace

from fastnas.search import SearchConfig, create_searcher, run_search
from fastnas.search.enas import ENASConfig, ENASController, ENASSearcher, reinforce_step


def twos(arch) -> float:
    """Best (1.0) with option 2 at every site."""
    return sum(g == 2 for g in arch) / len(arch)


def _rows(result):
    return [(r.generation, r.text, r.score, r.origin) for r in result.history]


def test_controller_learns_the_best_arch_of_a_toy_reward():
    space = GeneSpace(4, 3)
    cfg = ENASConfig(updates=150, samples_per_update=10, hidden=16, lr=0.03, seed=1)
    s = ENASSearcher(space, cfg)
    before = math.exp(s.arch_log_prob((2, 2, 2, 2)))
    result = run_search(s, twos)
    after = math.exp(s.arch_log_prob((2, 2, 2, 2)))
    assert before < 0.05 and after > 0.5, (before, after)
    assert result.best.arch == (2, 2, 2, 2)
    policy = s.policy()
    assert policy["greedy"] == (2, 2, 2, 2)
    assert all(max(p) == p[2] and abs(sum(p) - 1) < 1e-5 for p in policy["probs"])
    assert len(policy["trace"]) == 150 and policy["trace"][-1]["entropy"] < policy["trace"][0]["entropy"]
    # repeated samples reuse their score: far fewer scored than sampled, none twice
    texts = [r.text for r in result.history]
    assert len(texts) == len(set(texts)) <= space.size() < 150 * 10


def test_reinforce_step_matches_the_hand_computed_gradient():
    torch.manual_seed(0)
    T, C = 5.0, 2.5
    ctl = ENASController((3,), hidden=4, temperature=T, tanh_constant=C)
    with torch.no_grad():
        ctl.heads[0].weight.mul_(20.0)  # logits far from 0, so the tanh matters
        h, _ = ctl.lstm(ctl.start, (torch.zeros(1, 4), torch.zeros(1, 4)))
        z = (ctl.heads[0](h) / T)[0].double()
    p = torch.softmax(C * torch.tanh(z), 0)
    entropy = float(-(p * p.log()).sum())
    archs, scores = [(0,), (2,), (2,)], [1.0, 0.0, 3.0]
    w, decay, b0 = 0.1, 0.9, 0.5
    rewards = [s + w * entropy for s in scores]
    baseline = decay * b0 + (1 - decay) * sum(rewards) / 3
    # d(-adv * log p_a)/d bias = -adv * (onehot(a) - p) * C * (1 - tanh(z)^2) / T
    dz = C * (1 - torch.tanh(z) ** 2) / T
    grad = sum(-(r - baseline) * (torch.eye(3, dtype=torch.float64)[a[0]] - p) * dz for a, r in zip(archs, rewards))
    bias = ctl.heads[0].bias.detach().clone()
    stats = reinforce_step(ctl, torch.optim.SGD(ctl.parameters(), lr=0.0), archs, scores, baseline=b0,
                           entropy_weight=w, baseline_decay=decay)
    assert stats["baseline"] == pytest.approx(baseline, rel=1e-6)
    assert stats["entropy"] == pytest.approx(entropy, rel=1e-5)
    torch.testing.assert_close(ctl.heads[0].bias.grad.double(), grad, rtol=1e-4, atol=1e-6)
    assert torch.equal(ctl.heads[0].bias.detach(), bias)  # lr 0: the step changed nothing
    # the first update's baseline is its mean reward (baseline=None)
    stats = reinforce_step(ctl, torch.optim.SGD(ctl.parameters(), lr=0.0), archs, scores, baseline=None,
                           entropy_weight=w, baseline_decay=decay)
    assert stats["baseline"] == pytest.approx(sum(rewards) / 3, rel=1e-6)


def test_sampling_follows_the_policy():
    import random

    ctl = ENASController((3, 2), hidden=8)
    with torch.no_grad():
        archs, log_prob, _ = ctl.sample(4000, random.Random(0))
        again, _ = ctl(archs)
    assert torch.equal(log_prob, again)
    _, probs = ctl.greedy()
    freq0 = [sum(a[0] == k for a in archs) / len(archs) for k in range(3)]
    assert freq0 == pytest.approx(probs[0], abs=0.03)


def _resume_config():
    return ENASConfig(updates=6, samples_per_update=5, hidden=8, lr=0.05, seed=3, max_flops=12.0, topk=3)


def test_resume_from_any_snapshot_is_bit_identical():
    space = GeneSpace(4, 3)
    full = ENASSearcher(space, _resume_config())
    snaps = []
    run_search(full, twos, callback=lambda e, i: snaps.append(json.dumps(i["searcher"].state_dict(), allow_nan=False)))
    assert any(json.loads(sn)["samples"] and json.loads(sn)["pending"] for sn in snaps)  # some taken mid-round
    assert json.loads(snaps[-1])["optimizer"]  # Adam's moments are in the state
    ref = full.state_dict()
    for sn in snaps:
        restored = ENASSearcher(space, ENASConfig())  # the settings come from the state
        restored.load_state_dict(json.loads(sn))
        got = run_search(restored, twos)
        assert _rows(got) == _rows(full.result())
        for k, v in full.controller.state_dict().items():
            assert torch.equal(restored.controller.state_dict()[k], v), k
        assert restored.state_dict() == ref
    assert all(space.flops(r.arch) <= 12.0 for r in full.result().history)


def test_state_of_other_choices_or_kind_is_refused():
    s = ENASSearcher(GeneSpace(4, 3), _resume_config())
    with pytest.raises(ValueError, match="choices"):
        ENASSearcher(GeneSpace(4, 2), _resume_config()).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="expected a 'enas' state"):
        s.load_state_dict({**s.state_dict(), "kind": "random"})


@pytest.mark.parametrize("bad", [
    {"updates": 0}, {"samples_per_update": 0}, {"hidden": 0}, {"hidden": 2.5}, {"temperature": 0.0},
    {"tanh_constant": -1.0}, {"entropy_weight": -1e-4}, {"baseline_decay": 1.0}, {"baseline_decay": -0.1},
    {"lr": 0.0}, {"lr": float("nan")}, {"seed": -1}, {"topk": 0}, {"max_flops": -1.0},
    {"infeasible_reward": float("inf")}, {"baseline_init": "high"},
])
def test_bad_settings_name_the_field(bad):
    (name,) = bad
    with pytest.raises(ValueError, match=name):
        ENASConfig(**bad)


def test_config_from_search_config_and_dict():
    cfg = ENASConfig.from_search_config(SearchConfig(population=12, generations=30, seed=4, topk=2, max_params=500))
    assert (cfg.samples_per_update, cfg.updates, cfg.seed, cfg.topk, cfg.max_params) == (12, 30, 4, 2, 500)
    assert ENASConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="did you mean 'hidden'"):
        ENASConfig.from_dict({"hiden": 3})


def test_space_without_choices_is_refused_and_registration():
    from fastnas.search import check_searcher_space

    s = create_searcher("enas", GeneSpace(3, 4), SearchConfig(population=6, generations=2), hidden=8)
    assert isinstance(s, ENASSearcher) and (s.config.samples_per_update, s.config.hidden) == (6, 8)

    class NoSites(GeneSpace):
        choices = None

    with pytest.raises(ValueError, match=r"--searcher enas.*choices\(\)"):
        create_searcher("enas", NoSites(), None)
    with pytest.raises(ValueError, match=r"--searcher enas.*choices\(\)"):  # what a run checks before training
        check_searcher_space("enas", NoSites())
    check_searcher_space("enas", GeneSpace(3, 4))
    check_searcher_space("evolution", NoSites())  # the others search any space
