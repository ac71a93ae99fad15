"""Negative flips: published anchors, hand-computed cases, the input forms and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastnas
from fastnas.metrics.flips import flip_report, negative_flip_rate, relative_nfr


def _pair(n: int, ref_wrong: int, new_wrong: int, flips: int, classes: int = 10, seed: int = 0):
    """Targets and two label vectors with exactly these counts (shuffled): ``flips`` samples the reference
    gets right and the candidate wrong, ``new_wrong - flips`` both wrong, the rest of the reference's
    errors fixed by the candidate."""
    both = new_wrong - flips
    pos = ref_wrong - both
    assert both >= 0 and pos >= 0 and flips + both + pos <= n
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    wrong = (y + 1) % classes
    ref, new = y.clone(), y.clone()
    kinds = torch.zeros(n, dtype=torch.long)
    kinds[:flips] = 1                 # ref right, new wrong
    kinds[flips:flips + both] = 2     # both wrong
    kinds[flips + both:flips + both + pos] = 3  # ref wrong, new right
    kinds = kinds[torch.randperm(n, generator=g)]
    new[(kinds == 1) | (kinds == 2)] = wrong[(kinds == 1) | (kinds == 2)]
    ref[(kinds == 2) | (kinds == 3)] = wrong[(kinds == 2) | (kinds == 3)]
    return ref, new, y


# Positive-congruent training (CVPR 2021), old error / new error / NFR / relative NFR in %.
ANCHORS = [
    ("CIFAR-10 ResNet-18", 10_000, 4.90, 4.85, 1.83, 39.68),
    ("CIFAR-100 ResNet-18", 10_000, 22.45, 22.50, 5.92, 33.93),
    ("ImageNet ResNet-18 -> ResNet-18", 50_000, 30.24, 30.29, 6.44, 30.48),
]


@pytest.mark.parametrize("name,n,old_er,new_er,nfr,rel", ANCHORS, ids=[a[0] for a in ANCHORS])
def test_published_anchors(name, n, old_er, new_er, nfr, rel):
    ref, new, y = _pair(n, round(old_er * n / 100), round(new_er * n / 100), round(nfr * n / 100))
    r = flip_report(ref, new, y)
    assert r.ref_error == pytest.approx(old_er / 100, abs=1e-12)
    assert r.new_error == pytest.approx(new_er / 100, abs=1e-12)
    assert r.nfr == pytest.approx(nfr / 100, abs=1e-12)
    assert round(100 * r.rel_nfr, 2) == rel
    assert negative_flip_rate(ref, new, y) == r.nfr
    assert relative_nfr(ref, new, y) == r.rel_nfr


def test_hand_computed_case():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ref = torch.tensor([0, 1, 2, 1, 1, 0, 0, 1])   # wrong at 3, 5
    new = torch.tensor([0, 2, 2, 0, 1, 0, 1, 1])   # wrong at 1, 5, 6
    r = flip_report(ref, new, y)
    # negative flips: 1 and 6 (ref right, new wrong); positive flips: 3; both wrong: 5
    assert (r.negative_flips, r.positive_flips) == (2, 1)
    assert r.nfr == 2 / 8 and r.pfr == 1 / 8
    assert r.ref_error == 2 / 8 and r.new_error == 3 / 8
    assert r.nfi == 2 / 3
    assert r.rel_nfr == pytest.approx((2 / 8) / ((6 / 8) * (3 / 8)))
    assert r.per_class == {
        0: {"n": 3, "negative_flips": 1, "nfr": 1 / 3, "pfr": 1 / 3},
        1: {"n": 3, "negative_flips": 1, "nfr": 1 / 3, "pfr": 0.0},
        2: {"n": 2, "negative_flips": 0, "nfr": 0.0, "pfr": 0.0},
    }
    assert r.to_dict()["per_class"]["0"]["n"] == 3


def test_logits_equal_labels_and_other_input_forms():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (200,), generator=g)
    ref_logits = torch.randn(200, 5, generator=g)
    new_logits = torch.randn(200, 5, generator=g).double()
    from_labels = flip_report(ref_logits.argmax(1), new_logits.argmax(1), y)
    assert flip_report(ref_logits, new_logits, y) == from_labels
    assert flip_report(ref_logits.argmax(1).numpy(), new_logits.argmax(1).tolist(), y.numpy()) == from_labels
    assert flip_report(ref_logits.argmax(1).float(), new_logits, y.int()) == from_labels


def test_identical_models_never_flip_and_undefined_ratios_are_nan():
    y = torch.tensor([0, 1, 1, 0])
    r = flip_report(y, y, y)
    assert r.nfr == 0.0 and r.pfr == 0.0
    assert math.isnan(r.rel_nfr) and math.isnan(r.nfi)  # the candidate makes no error
    ref = torch.tensor([0, 1, 0, 1])
    assert negative_flip_rate(ref, ref, y) == 0.0
    assert relative_nfr(ref, ref, y) == 0.0


def test_exported_at_top_level():
    assert fastnas.negative_flip_rate is negative_flip_rate
    assert fastnas.relative_nfr is relative_nfr
    assert fastnas.flip_report is flip_report


@pytest.mark.parametrize("ref,new,y,match", [
    (torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
     "reference: 3 predictions, but targets has 4"),
    (torch.zeros(4, dtype=torch.long), torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long),
     r"candidate: expected labels \(N,\) or logits \(N, C\), got shape \(4, 3, 2\)"),
    (torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.zeros(4, 2),
     r"targets: expected labels of shape \(N,\)"),
    (torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), torch.tensor([0, -1, 0, 0]),
     "targets: labels must be >= 0, found -1"),
    (torch.tensor([0.5, 0, 0, 0]), torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
     "reference: a 1-D float tensor must hold whole-number labels"),
    (torch.zeros(4, dtype=torch.long), torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long),
     "candidate: logits hold NaN"),
    (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
     "targets: no samples"),
    (torch.zeros(4, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long),
     "candidate: a 2-D input is read as logits"),
    ("abc", torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), "reference: expected"),
])
def test_bad_input_names_the_argument(ref, new, y, match):
    with pytest.raises(ValueError, match=match):
        flip_report(ref, new, y)


def test_counts_match_a_numpy_loop():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 7, 1000)
    ref = np.where(rng.random(1000) < 0.8, y, rng.integers(0, 7, 1000))
    new = np.where(rng.random(1000) < 0.85, y, rng.integers(0, 7, 1000))
    neg = sum(1 for a, b, t in zip(ref, new, y) if a == t and b != t)
    r = flip_report(torch.as_tensor(ref), torch.as_tensor(new), torch.as_tensor(y))
    assert r.negative_flips == neg and r.nfr == neg / 1000
