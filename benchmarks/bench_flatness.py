"""Flatness of one NB201 candidate: fastnas against the procedure of the GeNAS code, in one run.

Run: ``python -m pytest benchmarks/bench_flatness.py --benchmark-only -s`` (not part of the test suite).

Reference (what the GeNAS code does per candidate): deep copy of the supernet, ``torch.normal`` added to
every parameter of the whole supernet on the CPU (cumulative increments), a DataLoader pass per sigma at
batch 64 with ``.item()`` per batch. fastnas: :class:`MultiSigmaEvaluator` (validation data staged once,
path-only fused perturbation with exact restore, BN folded into convolutions, channels-last, one host
sync per candidate), fp32 and bf16. Neither side recalibrates BatchNorm here (the same train-mode
passes on both sides); the timings are interleaved round by round and the minimum of each is kept, since
the machine is shared. Ratios are printed at the end of the run (``benchmarks/conftest.py``).
"""

from __future__ import annotations

import copy
import random
import time

import pytest
import torch
import torch.nn.functional as F

from fastnas.metrics import MultiSigmaEvaluator, flatness_score, make_score_fn
from fastnas.metrics.flatness import FlatnessConfig
from fastnas.spaces.nb201 import NB201

SIGMAS = (2e-3, 1e-2, 2e-2)
ARCH = ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_1x1", "nor_conv_3x3")


def _data(n: int, res: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, res, res, generator=g), torch.randint(0, 10, (n,), generator=g)


def reference_flatness(supernet, arch, loader, sigmas) -> float:
    """The GeNAS procedure (deep copy, per-parameter torch.normal on the CPU, DataLoader, .item() per batch)."""
    model = copy.deepcopy(supernet)
    model.eval()
    device = next(model.parameters()).device
    losses, prev = [], 0.0
    for s in sigmas:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.normal(0.0, s - prev, size=p.shape).to(device))
        prev = s
        total, batches = 0.0, 0
        with torch.no_grad():
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                total += F.cross_entropy(model(xb, arch), yb).item()
                batches += 1
        losses.append(total / batches)
    del model
    return flatness_score(losses, sigmas)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_flatness_one_candidate(benchmark, record_result, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    space = NB201(C=16, N=5)
    sn = space.supernet().to(device).eval()
    x, y = _data(512, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=False)
    evs = {p: MultiSigmaEvaluator(sn, x, y, sigmas=SIGMAS, precision=p) for p in ("fp32", "bf16")}
    for ev in evs.values():  # warm up (oneDNN primitive caches)
        ev.evaluate(ARCH)
    reference_flatness(sn, ARCH, loader, SIGMAS[:1])
    times = {"reference": [], "fp32": [], "bf16": []}

    def interleaved():
        for _ in range(3):
            t = time.perf_counter()
            reference_flatness(sn, ARCH, loader, SIGMAS)
            times["reference"].append(time.perf_counter() - t)
            for p, ev in evs.items():
                t = time.perf_counter()
                ev.evaluate(ARCH)  # ends in one host sync: the timing includes all device work
                times[p].append(time.perf_counter() - t)

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    best = {k: min(v) for k, v in times.items()}
    group = f"flatness: one NB201 candidate (C=16, N=5, 512 images, 3 sigmas) [{device}]"
    record_result(group, "reference (GeNAS procedure)", best["reference"], role="baseline")
    record_result(group, "fastnas fp32", best["fp32"])
    record_result(group, "fastnas bf16", best["bf16"])
    ratios = {p: best["reference"] / best[p] for p in ("fp32", "bf16")}
    benchmark.extra_info.update({"seconds": best, "ratio_fp32": ratios["fp32"], "ratio_bf16": ratios["bf16"],
                                 "report_fp32": evs["fp32"].report(), "report_bf16": evs["bf16"].report()})
    print(f"\nflatness one candidate [{device}]: reference {best['reference']:.3f} s, fp32 {best['fp32']:.3f} s "
          f"({ratios['fp32']:.2f}x), bf16 {best['bf16']:.3f} s ({ratios['bf16']:.2f}x); "
          f"path: {evs['fp32'].report()}")


@pytest.mark.parametrize("metric", ["accuracy", "angle", "flatness"])
def test_population_throughput(benchmark, record_result, metric):
    """Candidates per minute on a small NB201 supernet (C=8, N=2, 16x16, 256 images, 2 BN batches of 64)."""
    torch.manual_seed(0)
    space = NB201(C=8, N=2, resolution=16)
    sn = space.supernet()
    init = {k: v.clone() for k, v in sn.state_dict().items()}
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, y = _data(256, 16)
    cx, _ = _data(512, 16, seed=1)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(12)]
    cfg = FlatnessConfig(sigmas=SIGMAS, bn_batches=2, bn_batch_size=64)

    def run():
        fn = make_score_fn(metric, sn, space, valid=(x, y), calib_x=cx, initial_state=init,
                           flatness_config=cfg, cache=False)
        t = time.perf_counter()
        for a in archs:
            fn(a)
        return time.perf_counter() - t

    run()
    totals: list = []
    benchmark.pedantic(lambda: totals.extend(run() for _ in range(2)), rounds=1, iterations=1)
    per = min(totals) / len(archs)
    record_result("population throughput (NB201 C=8, N=2, 16x16)", f"{metric} per candidate", per)
    benchmark.extra_info["candidates_per_minute"] = 60.0 / per
    print(f"\n{metric}: {60.0 / per:.0f} candidates/minute ({per * 1e3:.1f} ms each)")
