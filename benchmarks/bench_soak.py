"""Soak: many consecutive scorings by the search's score function; memory growth and time per scoring.

Run: ``python -m pytest benchmarks/bench_soak.py --benchmark-only -s`` (not part of the test suite; the
test ``tests/metrics/test_scoring_soak.py`` checks the same property on a smaller run).

One score function, as a run builds it (:func:`fastnas.run.scoring.build_score_fn`, score cache on),
scores ``FASTNAS_SOAK_N`` distinct NB201 candidates (default 500; C=8, N=2, 16x16, 128 validation images,
2 recalibration batches of 64, 3 sigmas) with a metric that has every kind of part (angle, accuracy,
flatness), after a warm-up of 50. The baseline is the median time per scoring of the first quarter, the
compared entry that of the last quarter, both from this run: a ratio near 1 means scoring does not slow
down over a long run. ``extra_info`` and the printed line give the resident set size (``/proc/self/statm``)
of both quarters (medians), its growth per candidate and, on a GPU, ``torch.cuda.memory_allocated``.
"""

from __future__ import annotations

import os
import random
import statistics
import time

import pytest
import torch

from fastnas.run.config import RunConfig
from fastnas.run.scoring import build_score_fn
from fastnas.spaces.nb201 import NB201

METRIC = "angle + 0.2*accuracy + 16/sigma1*flatness"
WARMUP = 50
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: no RSS column
        return 0


def _setup(device: str):
    torch.manual_seed(0)
    space = NB201(C=8, N=2, resolution=16)
    sn = space.supernet().to(device)
    init = {k: v.detach().clone() for k, v in sn.state_dict().items()}
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    vx, vy = torch.randn(128, 3, 16, 16, generator=g), torch.randint(0, 10, (128,), generator=g)
    cx = torch.randn(512, 3, 16, 16, generator=g)
    config = RunConfig(metric=METRIC, sigmas=(2e-3, 1e-2, 2e-2), recal_batches=2, recal_batch_size=64, seed=0)
    fn = build_score_fn(config, sn, space, valid=(vx, vy), calib_x=cx, initial_state=init,
                        device=torch.device(device))
    return space, fn


def _archs(space, n: int):
    rng, seen = random.Random(0), {}
    while len(seen) < n:
        seen.setdefault(space.sample(rng))
    return list(seen)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_soak_scoring(benchmark, record_result, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    n = int(os.environ.get("FASTNAS_SOAK_N", "500"))
    if n < 8:
        pytest.skip(f"FASTNAS_SOAK_N={n}: expected at least 8 scorings")
    space, fn = _setup(device)
    archs = _archs(space, WARMUP + n)
    cuda = device == "cuda"
    seconds, rss, dev = [], [], []

    def soak():
        for a in archs[:WARMUP]:
            fn(a)
        for a in archs[WARMUP:]:
            t = time.perf_counter()
            fn(a)  # ends in the evaluator's one host sync per candidate
            seconds.append(time.perf_counter() - t)
            rss.append(_rss())
            if cuda:
                dev.append(torch.cuda.memory_allocated())

    benchmark.pedantic(soak, rounds=1, iterations=1)
    k = n // 4
    early, late = statistics.median(seconds[:k]), statistics.median(seconds[-k:])
    rss_early, rss_late = statistics.median(rss[:k]), statistics.median(rss[-k:])
    per = (rss_late - rss_early) / (n - k)
    group = f"soak: {n} scorings, NB201 C=8 N=2 16x16, angle+accuracy+flatness [{device}]"
    record_result(group, f"scorings 1-{k} (baseline)", early, role="baseline")
    record_result(group, f"scorings {n - k + 1}-{n}", late)
    info = {"n": n, "s_per_scoring_early": early, "s_per_scoring_late": late, "slowdown": late / early,
            "rss_early_mib": rss_early / 2**20, "rss_late_mib": rss_late / 2**20,
            "rss_growth_ratio": rss_late / rss_early if rss_early else None, "rss_bytes_per_scoring": per}
    line = (f"\nsoak [{device}]: {n} scorings, {early * 1e3:.2f} -> {late * 1e3:.2f} ms each "
            f"({late / early:.3f}x), RSS {rss_early / 2**20:.1f} -> {rss_late / 2**20:.1f} MiB ({per:+.0f} B/scoring)")
    if cuda:
        d_early, d_late = statistics.median(dev[:k]), statistics.median(dev[-k:])
        info.update({"cuda_allocated_early": d_early, "cuda_allocated_late": d_late, "cuda_allocated_max": max(dev)})
        line += f", device {d_early / 2**20:.1f} -> {d_late / 2**20:.1f} MiB (max {max(dev) / 2**20:.1f})"
    benchmark.extra_info.update(info)
    print(line)
