"""Sharded scoring under torchrun: one round of N candidates scored by 2 processes against 1, in one run.

Run: ``python -m pytest benchmarks/bench_distributed_search.py --benchmark-only -s`` (not part of the test
suite).

Each measurement is ``torchrun --standalone --nproc_per_node=P`` of this file's worker: every rank builds
the same NB201 supernet (C=16, N=2, 8x8x1 images, 10 classes: the digits default; seeded random weights,
so no training), the score function of ``angle+flatness`` (three sigmas, BN recalibration on 2 batches of
64, 256 validation images), then times :func:`fastnas.search.run_search` over one random-search round of
N candidates (``world=`` the torchrun world: rank r scores ``archs[r::P]``, one all-gather, every rank
tells all of them), after a barrier and a warm-up candidate. Reported: the seconds of that round on
rank 0 (end to end: its share, the wait for the slower rank and the gather; each rank's own scoring
seconds are printed beside it, to show the balance of the shares), the fastest of 3
interleaved rounds; the baseline is one process scoring all N (``P=1``, the same loop). Every rank runs
1 thread (``OMP_NUM_THREADS=1``), so ``P=2`` uses two cores against one: the ideal ratio is 2x. The
histories of both are checked to be equal. Process start-up and data loading are not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

N = 24  # candidates in the round
ROUNDS = 3
ROOT = Path(__file__).resolve().parents[1]


def _worker() -> None:
    import torch

    from fastnas import distributed
    from fastnas.metrics import FlatnessConfig, make_score_fn
    from fastnas.search import SearchConfig, create_searcher, run_search
    from fastnas.spaces.nb201 import NB201

    torch.set_num_threads(1)
    with distributed.process_group() as world:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (512,), generator=g)
        space = NB201(C=16, N=2, num_classes=10, in_channels=1, resolution=8)
        torch.manual_seed(0)
        net = space.supernet()
        initial = {k: v.clone() for k, v in net.state_dict().items()}
        with torch.no_grad():
            for p in net.parameters():  # "trained": weights moved away from the initial ones
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        cfg = FlatnessConfig(sigmas=(2e-3, 1e-2, 2e-2), bn_batches=2, bn_batch_size=64)
        fn = make_score_fn("angle+flatness", net, space, valid=(x[:256], y[:256]), calib_x=x[256:],
                           initial_state=initial, flatness_config=cfg, device="cpu")
        fn(space.sample(__import__("random").Random(99)))  # warm up
        searcher = create_searcher("random", space, SearchConfig(population=N, generations=1, seed=1))
        busy = [0.0]

        def timed(arch):
            t = time.perf_counter()
            try:
                return fn(arch)
            finally:
                busy[0] += time.perf_counter() - t

        world.barrier()
        t0 = time.perf_counter()
        result = run_search(searcher, timed, world=world)
        seconds = time.perf_counter() - t0
        busy_all = world.all_gather_object(busy[0])
        if world.is_main:
            print("BENCH " + json.dumps({"seconds": seconds, "n": len(result.history), "world": world.size,
                                         "busy": busy_all, "history": [[r.text, r.score] for r in result.history]}),
                  flush=True)


def _measure(processes: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           __file__, "--worker"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"torchrun with {processes} process(es) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH "):])


def test_sharded_scoring_two_processes_vs_one(benchmark, record_result):
    pytest.importorskip("torch.distributed")
    runs = {1: [], 2: []}

    def interleaved():
        for _ in range(ROUNDS):
            for p in runs:
                runs[p].append(_measure(p))

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    best = {p: min(r["seconds"] for r in rs) for p, rs in runs.items()}
    assert runs[1][0]["history"] == runs[2][0]["history"]  # the same search, bit for bit
    n = runs[1][0]["n"]
    group = (f"one round of {n} candidates, angle+flatness, NB201 C=16 N=2 8x8x1, 1 thread per process, "
             f"seconds on rank 0 [cpu, {os.cpu_count()} CPUs]")
    names = {1: "1 process (baseline)", 2: "2 processes (torchrun, Gloo)"}
    for p in runs:
        record_result(group, names[p], best[p], role="baseline" if p == 1 else None)
        benchmark.extra_info[names[p]] = {"seconds": best[p], "candidates_per_s": n / best[p]}
    fastest = {p: min(rs, key=lambda r: r["seconds"]) for p, rs in runs.items()}
    print(f"\n{group}\n" + "\n".join(
        f"  {names[p]:<32} {best[p]:7.3f} s  {n / best[p]:7.1f} candidates/s  {best[1] / best[p]:5.2f}x vs baseline"
        f"  (scoring per rank: {', '.join(f'{b:.3f}' for b in fastest[p]['busy'])} s)"
        for p in runs))


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
