from __future__ import annotations

import math

import pytest

from fastnas.metrics.combine import Score, combined, flatness_score


def test_flatness_hand_computed():
    # losses (2.0, 2.1, 2.4) at sigmas (0.01, 0.02, 0.04):
    #   slopes |2.1-2.0|/0.01 = 10, |2.4-2.1|/0.02 = 15 -> 25
    #   alpha * |L1/sigma1| = 1 * 2.0/0.01 = 200
    #   F = 1 / (25 + 200 + 1e-5) = 1 / 225.00001
    f = flatness_score([2.0, 2.1, 2.4], [0.01, 0.02, 0.04])
    assert f == pytest.approx(1 / 225.00001, rel=1e-12)
    # alpha = 0 (pure flatness): F = 1 / (25 + 1e-5)
    assert flatness_score([2.0, 2.1, 2.4], [0.01, 0.02, 0.04], alpha=0.0) == pytest.approx(1 / 25.00001, rel=1e-12)
    # alpha = 0.5, eps = 0: 1 / (25 + 100)
    assert flatness_score([2.0, 2.1, 2.4], [0.01, 0.02, 0.04], alpha=0.5, eps=0.0) == pytest.approx(1 / 125)


def test_flatness_uses_absolute_slopes_and_single_level():
    # a loss that goes down then up: |(1.0-1.5)/0.1| + |(1.2-1.0)/0.1| = 5 + 2 = 7; + |1.5/0.1| = 15
    assert flatness_score([1.5, 1.0, 1.2], [0.1, 0.2, 0.3], eps=0.0) == pytest.approx(1 / 22)
    assert flatness_score([0.5], [0.001]) == pytest.approx(1 / (500 + 1e-5))
    assert flatness_score([0.5], [0.001], alpha=0.0) == pytest.approx(1e5)
    assert flatness_score([0.0], [0.1], alpha=1.0, eps=0.0) == math.inf


def test_flatness_nonfinite_loss_gives_nan():
    assert math.isnan(flatness_score([1.0, float("nan")], [0.1, 0.2]))
    assert math.isnan(flatness_score([float("inf"), 1.0], [0.1, 0.2]))


@pytest.mark.parametrize("losses, sigmas, kw, word", [
    ([], [], {}, "losses"),
    ([1.0, 2.0], [0.1], {}, "sigmas"),
    ([1.0, 2.0], [0.2, 0.1], {}, "increasing"),
    ([1.0, 2.0], [0.1, 0.1], {}, "increasing"),
    ([1.0], [0.0], {}, "positive"),
    ([1.0], [-0.1], {}, "positive"),
    ([1.0], [0.1], {"alpha": -1.0}, "alpha"),
    ([1.0], [0.1], {"eps": -1.0}, "eps"),
    (["a"], [0.1], {}, "losses"),
])
def test_flatness_bad_inputs(losses, sigmas, kw, word):
    with pytest.raises(ValueError, match=word):
        flatness_score(losses, sigmas, **kw)


def test_combined():
    # angle 0.3, F 0.002, sigma1 1e-3, gamma 16: 0.3 + 16 * 1000 * 0.002 = 32.3
    assert combined(0.3, 0.002, 1e-3, 16) == pytest.approx(32.3)
    assert combined(0.3, 0.002, 1e-3, 0) == 0.3
    assert math.isnan(combined(0.3, float("nan"), 1e-3, 16))
    with pytest.raises(ValueError, match="sigma1"):
        combined(0.3, 0.002, 0.0, 16)
    with pytest.raises(ValueError, match="gamma"):
        combined(0.3, 0.002, 0.1, float("nan"))


def test_score_dataclass():
    s = Score(1.5, {"angle": 0.5}, flagged=False)
    assert s.to_dict() == {"value": 1.5, "parts": {"angle": 0.5}, "flagged": False}
    assert Score(2.0).parts == {} and not Score(2.0).flagged
