"""Scoring a population of NB201 candidates by flatness: fastnas against the GeNAS code's own procedure.

Run: ``python -m pytest benchmarks/bench_genas_procedure.py --benchmark-only -s`` (not part of the tests).

The baseline is what the GeNAS code does per candidate (REFERENCES.md): a deep copy of the whole
supernet, every BatchNorm reset and re-estimated in train mode over 14 batches of 64 (momentum 0.1),
then per sigma cumulative noise of std ``sigma_i - sigma_(i-1)`` on every parameter of the copy and a
DataLoader pass over the validation images (eval mode, ``.item()`` per batch). Its noise values are
fastnas's stream (``fastnas.noise`` at each parameter's offset in the supernet's layout, stream = level),
generated per parameter as ``torch.normal`` would be, so that both sides see the same noise and their
scores can be compared: the Kendall tau between the baseline's scores and fastnas's is in
``extra_info`` (~1 in fp32; bf16 rounds the activations). fastnas is ``make_score_fn("flatness")``
with the same settings (``noise="cumulative"``, ``bn_mode="momentum"``, the same calibration batches),
fp32 and bf16, one score function for the population as a search uses it.

Floors: the forward passes alone, i.e. fastnas's compiled forward of each candidate (folded,
channels-last) over the same number of images (14 x 64 + 3 x validation) in eval mode, with no
recalibration, copy or noise, in fp32 and in bf16.

Sizes (``FASTNAS_BENCH_GENAS_SIZE``):

* ``small`` (default): 4 candidates, C=16, N=2, 32x32x3, 256 validation images, 3 sigmas; about a
  minute on 2 shared cores;
* ``issue``: issue 9's size, 8 candidates, C=16, N=5, 32x32x3, 512 validation images, 3 sigmas (the
  baseline alone took 144.6 s there); several minutes per round.

``FASTNAS_BENCH_GENAS_ROUNDS`` sets the rounds (default 3 for ``small``, 1 for ``issue``). Each round
runs every candidate through every method in turn (interleaved, since the machine is shared) on one
thread; the medians over rounds of wall time and of process CPU time (less disturbed by other jobs on
the machine) are reported, and the ratios are those of the wall medians. Ratios are printed at the
end of the run (``benchmarks/conftest.py``).
"""

from __future__ import annotations

import copy
import os
import random
import statistics
import time

import torch
import torch.nn.functional as F

from fastnas.metrics import flatness_score, make_score_fn
from fastnas.metrics.evaluator import calibration_batches
from fastnas.metrics.flatness import FlatnessConfig
from fastnas.metrics.rank import kendall_tau
from fastnas.ops.layout import ParamLayout
from fastnas.ops.perturb import noise
from fastnas.spaces.nb201 import NB201
from fastnas.spaces.nb201_fast import CompiledNB201

SIZES = {
    "small": {"candidates": 4, "C": 16, "N": 2, "resolution": 32, "valid": 256, "rounds": 3},
    "issue": {"candidates": 8, "C": 16, "N": 5, "resolution": 32, "valid": 512, "rounds": 1},
}
SIGMAS = (2e-3, 1e-2, 2e-2)  # GeNAS's NB201 sigmas (its Table 5), NB201's preset
RECAL_BATCHES, RECAL_BATCH = 14, 64  # GeNAS: ceil(850 / 64) train-mode batches of 64
SEED = 0


def _size() -> dict:
    name = os.environ.get("FASTNAS_BENCH_GENAS_SIZE", "small")
    if name not in SIZES:
        raise ValueError(f"FASTNAS_BENCH_GENAS_SIZE={name!r}: expected one of {list(SIZES)}")
    size = dict(SIZES[name], name=name)
    rounds = os.environ.get("FASTNAS_BENCH_GENAS_ROUNDS")
    if rounds is not None:
        if not rounds.isdigit() or int(rounds) < 1:
            raise ValueError(f"FASTNAS_BENCH_GENAS_ROUNDS={rounds!r}: expected an integer >= 1")
        size["rounds"] = int(rounds)
    return size


def genas_procedure(supernet, arch, calib_loader, valid_loader, sigmas, layout: ParamLayout) -> float:
    """The GeNAS code's per-candidate flatness (deep copy, BN reset + train-mode passes, cumulative
    noise on every parameter, a DataLoader pass per sigma), with fastnas's noise values."""
    model = copy.deepcopy(supernet)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()  # momentum stays 0.1, as in the GeNAS code
    model.train()
    with torch.no_grad():
        for (xb,) in calib_loader:
            model(xb, arch)
    model.eval()
    losses, prev = [], 0.0
    for level, sigma in enumerate(sigmas):
        with torch.no_grad():
            for name, p in model.named_parameters():
                z = noise(p.numel(), SEED, stream=level, offset=layout.offset(name)).view_as(p)
                p.add_(z * (sigma - prev))
        prev = sigma
        total, batches = 0.0, 0
        with torch.no_grad():
            for xb, yb in valid_loader:
                total += F.cross_entropy(model(xb, arch), yb).item()
                batches += 1
        losses.append(total / batches)
    del model
    return flatness_score(losses, sigmas)


def _floor_pass(program: CompiledNB201, calib, valid_x, levels: int, batch_size: int) -> None:
    with torch.inference_mode():
        for xb in calib:
            program(xb)
        for _ in range(levels):
            for start in range(0, valid_x.shape[0], batch_size):
                program(valid_x[start:start + batch_size])


def test_genas_procedure_population(benchmark, record_result):
    size = _size()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(benchmark, record_result, size)
    finally:
        torch.set_num_threads(threads)


def _run(benchmark, record_result, size: dict) -> None:
    torch.manual_seed(0)
    res = size["resolution"]
    space = NB201(C=size["C"], N=size["N"], resolution=res)
    sn = space.supernet().eval()
    with torch.no_grad():  # a supernet whose candidates differ: weights away from their initialisation
        for p in sn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(0)
    vx = torch.randn(size["valid"], 3, res, res, generator=g)
    vy = torch.randint(0, 10, (size["valid"],), generator=g)
    pool = torch.randn(RECAL_BATCHES * RECAL_BATCH + 256, 3, res, res, generator=g)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(size["candidates"])]

    # the same calibration batches on both sides: the ones the evaluator draws from the pool
    calib = calibration_batches(pool, RECAL_BATCHES, RECAL_BATCH, seed=0)
    calib_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(calib)),
                                               batch_size=RECAL_BATCH, shuffle=False)
    valid_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx, vy), batch_size=64,
                                               shuffle=False)
    layout = ParamLayout.from_module(sn)
    cfg = FlatnessConfig(sigmas=SIGMAS, noise="cumulative", bn_mode="momentum", bn_batches=RECAL_BATCHES,
                         bn_batch_size=RECAL_BATCH, seed=SEED)
    fns = {p: make_score_fn("flatness", sn, space, valid=(vx, vy), calib_x=pool,
                            flatness_config=cfg.replace(precision=p), cache=False) for p in ("fp32", "bf16")}
    programs = {}
    for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for a in archs:
            programs[(p, a)] = CompiledNB201(sn.extract(a).eval(), dtype=dtype)
            programs[(p, a)].refresh()
    calib_cl = [b.contiguous(memory_format=torch.channels_last) for b in calib]
    vx_cl = vx.contiguous(memory_format=torch.channels_last)
    batch_sizes = {p: fns[p].evaluator.batch_size for p in fns}

    # warm-up (oneDNN primitive caches, the stem cache, the allocator)
    for fn in fns.values():
        fn(archs[0])
    with torch.no_grad():
        sn.train()
        sn(calib[0], archs[0])
        sn.eval()
        sn(vx[:64], archs[0])
    for p in fns:
        _floor_pass(programs[(p, archs[0])], calib_cl[:1], vx_cl[:64], 1, batch_sizes[p])

    methods = ("baseline", "fp32", "bf16", "floor fp32", "floor bf16")
    wall = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    scores = {m: [] for m in ("baseline", "fp32", "bf16")}
    recal = {p: [] for p in fns}

    def one_round(record_scores: bool) -> None:
        w = dict.fromkeys(methods, 0.0)
        c = dict.fromkeys(methods, 0.0)
        r0 = {p: fns[p].evaluator.recal_seconds for p in fns}
        for a in archs:
            for m in methods:
                t0, c0 = time.perf_counter(), time.process_time()
                if m == "baseline":
                    value = genas_procedure(sn, a, calib_loader, valid_loader, SIGMAS, layout)
                elif m in fns:
                    value = fns[m](a).parts["flatness"]
                else:
                    p = m.split()[1]
                    _floor_pass(programs[(p, a)], calib_cl, vx_cl, len(SIGMAS), batch_sizes[p])
                    value = None
                w[m] += time.perf_counter() - t0
                c[m] += time.process_time() - c0
                if record_scores and value is not None:
                    scores[m].append(value)
        for m in methods:
            wall[m].append(w[m])
            cpu[m].append(c[m])
        for p in fns:
            recal[p].append(fns[p].evaluator.recal_seconds - r0[p])

    def rounds() -> None:
        for k in range(size["rounds"]):
            one_round(record_scores=k == 0)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    med_wall = {m: statistics.median(v) for m, v in wall.items()}
    med_cpu = {m: statistics.median(v) for m, v in cpu.items()}
    n = len(archs)
    label = (f"{n} NB201 candidates, C={size['C']}, N={size['N']}, {res}x{res}x3, {size['valid']} valid, "
             f"{len(SIGMAS)} sigmas, {RECAL_BATCHES}x{RECAL_BATCH} recal, 1 thread")
    for p in ("fp32", "bf16"):
        group = f"flatness population {p}: {label}"
        record_result(group, "GeNAS procedure", med_wall["baseline"], role="baseline")
        record_result(group, f"fastnas make_score_fn {p}", med_wall[p])
        record_result(group, f"forward passes alone {p}", med_wall[f"floor {p}"], role="floor")
    tau = {p: kendall_tau(scores["baseline"], scores[p]) for p in ("fp32", "bf16")}
    rel = {p: max(abs(a - b) / abs(a) for a, b in zip(scores["baseline"], scores[p])) for p in ("fp32", "bf16")}
    ratio = {p: med_wall["baseline"] / med_wall[p] for p in ("fp32", "bf16")}
    ratio_cpu = {p: med_cpu["baseline"] / med_cpu[p] for p in ("fp32", "bf16")}
    benchmark.extra_info.update({
        "size": size, "archs": [space.format(a) for a in archs],
        "seconds_wall_median": med_wall, "seconds_cpu_median": med_cpu, "seconds_wall": wall, "seconds_cpu": cpu,
        "ratio_fp32": ratio["fp32"], "ratio_bf16": ratio["bf16"],
        "ratio_cpu_fp32": ratio_cpu["fp32"], "ratio_cpu_bf16": ratio_cpu["bf16"],
        "kendall_tau_fp32": tau["fp32"], "kendall_tau_bf16": tau["bf16"],
        "max_relative_score_difference": rel, "scores": scores,
        "recal_seconds_per_round": recal, "report_fp32": fns["fp32"].stats(), "report_bf16": fns["bf16"].stats(),
    })
    print(f"\nGeNAS procedure vs fastnas, {label} ({size['rounds']} rounds, medians; per population):")
    for m in methods:
        print(f"  {m:<12} wall {med_wall[m]:8.2f} s  cpu {med_cpu[m]:8.2f} s")
    for p in ("fp32", "bf16"):
        print(f"  fastnas {p}: {ratio[p]:.2f}x the GeNAS procedure (cpu {ratio_cpu[p]:.2f}x), "
              f"{med_wall[p] / med_wall[f'floor {p}']:.2f}x its forward passes; Kendall tau vs the procedure's "
              f"scores {tau[p]:.3f} (max relative score difference {rel[p]:.1e}); BN recalibration "
              f"{statistics.median(recal[p]):.2f} s wall")
