"""Long runs of the search's score function: memory stays flat and the supernet is left exactly as it was.

The probe scores distinct candidates one after another with the score function a run builds (angle,
accuracy after BatchNorm recalibration, flatness: every kind of part), records the resident set size
after each, and compares the median of the last quarter with the median of the first quarter after a
warm-up (medians: single samples move with glibc's heap trimming). The score cache of the search keeps
one small ``Score`` per candidate, which is the only growth allowed.

Two bounds: the brief's 2% of the process (about 6 MiB here), and a growth rate below 4 KiB per candidate,
which catches a leak of any per-candidate object (the extracted network of one candidate alone is
about 20 KiB; a leaked one per candidate fails both bounds, see the report of issue 10).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from _scoring_setup import distinct_archs, modes, rss_bytes, search_score_fn, state_bytes, tiny_setup

WARMUP = 50
MAX_RATIO = 1.02
MAX_BYTES_PER_CANDIDATE = 4096


def _quarters(samples):
    k = len(samples) // 4
    return statistics.median(samples[:k]), statistics.median(samples[-k:]), len(samples) - k


def _probe(device: str, n: int) -> None:
    space, sn, init, data = tiny_setup(device)
    before, flags = state_bytes(sn), modes(sn)
    fn = search_score_fn(space, sn, init, data, device)
    archs = distinct_archs(space, WARMUP + n)
    cuda = device == "cuda"
    for a in archs[:WARMUP]:
        fn(a)
    rss, dev = [], []
    for a in archs[WARMUP:]:
        score = fn(a)
        rss.append(rss_bytes())
        if cuda:
            torch.cuda.synchronize()
            dev.append(torch.cuda.memory_allocated())
    assert fn.calls == WARMUP + n and fn.fn.evaluations == WARMUP + n  # every candidate really scored
    assert score.parts.keys() >= {"angle", "accuracy", "flatness"}

    early, late, span = _quarters(rss)
    assert late <= early * MAX_RATIO, f"RSS grew from {early / 2**20:.1f} to {late / 2**20:.1f} MiB over {n} scorings"
    per = (late - early) / span
    assert per < MAX_BYTES_PER_CANDIDATE, f"RSS grows by {per:.0f} bytes per scored candidate"
    if cuda:
        early, late, _ = _quarters(dev)
        assert late <= early * MAX_RATIO and max(dev) <= max(dev[:len(dev) // 4]) * MAX_RATIO, \
            f"device memory grew from {early} to {late} bytes"

    assert state_bytes(sn) == before, "a parameter or buffer of the supernet changed"
    assert modes(sn) == flags


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_300_scorings_keep_memory_flat_and_the_supernet_intact(device):
    _probe(device, 300)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_1000_scorings_keep_memory_flat_and_the_supernet_intact(device):
    _probe(device, 1000)
