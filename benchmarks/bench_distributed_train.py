"""Data-parallel supernet training on the CPU: 1 process against 2 Gloo processes, the one-bucket path
all-reduce against DDP(find_unused_parameters=True), and the cost of synchronised BatchNorm.

Run: ``python -m pytest benchmarks/bench_distributed_train.py --benchmark-only -s`` (not part of the test
suite; about 2 minutes on two shared cores).

NB201 supernet, C=8, N=1, on 16x16x3 images with 10 classes (random tensors), global batch 64, SPOS
(uniform sampler, single-path steps) through :func:`fastnas.train.train`: every variant trains the same
``STEPS`` architectures on the same global batches. The variants of one world size run in the same
spawned processes (``multiprocessing`` start method ``spawn``; ranks join through a file store),
interleaved, ``ROUNDS`` times each (a fresh supernet each time), and per step the fastest round counts
(the machine is shared; the first step, which creates oneDNN primitives, is left out); reported: rank 0's
seconds per global step (the ranks wait for each other at every step). Variants:

* one process with 1 thread (the baseline) and with 2 (the same two cores as two ranks of one thread);
* two ranks of one thread with the loop's gradient sync -- one flat all-reduce of the path's gradients
  (:func:`fastnas.train.distributed.allreduce_gradients`) -- with and without synchronised BatchNorm;
* two ranks with the supernet wrapped in ``DistributedDataParallel(find_unused_parameters=True,
  broadcast_buffers=False)`` instead (DDP all-reduces every parameter's bucket during backward, the
  unused ones as zeros, after a graph traversal to find them), with and without synchronised BatchNorm.

The final weights of every two-rank variant with synchronised BatchNorm are checked against the
one-process run (and DDP's against the bucket's), so the variants compared train the same network.

Synchronised BatchNorm costs two collectives per BatchNorm layer and step (forward statistics, backward
gradient statistics; sequential, so they cannot share a bucket): on Gloo its cost is the all-reduce
latency times about twice the path's BatchNorm count, large next to the compute of a tiny supernet on a
CPU, small next to NCCL's microseconds on GPUs.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import torch.nn.functional as F

STEPS = 8
ROUNDS = 5
BATCH = 64

#: name -> (world size, threads per process, gradient sync, sync_bn)
VARIANTS: Dict[str, tuple] = {
    "1 process x 2 threads": (1, 2, "bucket", True),
    "1 process x 1 thread": (1, 1, "bucket", True),
    "2 ranks x 1 thread, bucket, sync BN": (2, 1, "bucket", True),
    "2 ranks x 1 thread, bucket, no sync BN": (2, 1, "bucket", False),
    "2 ranks x 1 thread, DDP(find_unused), sync BN": (2, 1, "ddp", True),
    "2 ranks x 1 thread, DDP(find_unused), no sync BN": (2, 1, "ddp", False),
}
BASELINE = "1 process x 1 thread"  # on small supernets faster than 2 threads of one process (thread hand-off)


class DDPSinglePath:
    """SPOS step through a DDP wrapper: DDP reduces during backward; the loop's ``reduce_grads`` is unused."""

    def __init__(self, ddp: torch.nn.Module) -> None:
        self.ddp = ddp

    def step(self, model, choice, x, y, optimizer, *, grad_clip=0.0, label_smoothing=0.0, reduce_grads=None):
        from fastnas.train.loop import StepResult
        from fastnas.train.steps import _update_paths

        optimizer.zero_grad(set_to_none=True)
        logits = self.ddp(x, choice)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss.backward()
        on_path = set(model.path_parameters(choice))
        for name, p in model.named_parameters():
            if name not in on_path:
                p.grad = None  # DDP hands unused parameters zero gradients: SPOS skips them
        grad_norm = _update_paths(model, on_path, choice, optimizer, grad_clip)
        return StepResult(loss.detach(), (logits.detach().argmax(1) == y).sum(), grad_norm)


def _worker(rank: int, world_size: int, names: List[str], init_file: str, out: str, steps: int,
            rounds_wanted: int) -> None:
    """Trains every variant of ``names`` (one world size) ``rounds_wanted`` times, interleaved."""
    from fastnas.spaces.nb201 import NB201
    from fastnas.train import SinglePath, TrainConfig, UniformSampler, train

    if world_size > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                             world_size=world_size)
    space = NB201(C=8, N=1, num_classes=10, in_channels=3, resolution=16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (steps * BATCH,), generator=g)
    batches = [(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]) for i in range(steps)]
    results: Dict[str, Dict[str, Any]] = {name: {"rounds": []} for name in names}
    for _ in range(rounds_wanted):
        for name in names:  # interleaved: a load change on the shared machine hits every variant alike
            _, threads, sync, sync_bn = VARIANTS[name]
            torch.set_num_threads(threads)
            cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=0.025, sync_bn=sync_bn)
            torch.manual_seed(1)
            net = space.supernet()
            strategy: Any = SinglePath()
            if sync == "ddp":
                from torch.nn.parallel import DistributedDataParallel
                strategy = DDPSinglePath(DistributedDataParallel(net, find_unused_parameters=True,
                                                                 broadcast_buffers=False))
            stamps: List[float] = []
            t0 = time.perf_counter()
            train(net, strategy, UniformSampler(space, 0), lambda epoch: batches, cfg,
                  progress=lambda event, info: stamps.append(time.perf_counter()) if event == "step" else None)
            results[name]["rounds"].append([b - a for a, b in zip([t0] + stamps[:-1], stamps)])
            results[name]["final"] = {k: v.clone() for k, v in net.state_dict().items()}
    if rank == 0:
        torch.save(results, Path(out) / "result.pt")
    if world_size > 1:
        torch.distributed.destroy_process_group()


def _run(names: List[str], tmp: Path, steps: int = STEPS, rounds: int = ROUNDS) -> Dict[str, Dict[str, Any]]:
    """Spawns the ranks of ``names`` (variants of one world size) and returns rank 0's results."""
    (world_size,) = {VARIANTS[n][0] for n in names}
    out = tmp / f"world{world_size}_{steps}"
    out.mkdir()
    ctx = multiprocessing.get_context("spawn")
    os.environ["OMP_NUM_THREADS"] = "1"  # for the ranks' start-up; each variant sets its thread count
    procs = [ctx.Process(target=_worker, args=(r, world_size, names, str(out / "init"), str(out), steps, rounds))
             for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    codes = [p.exitcode for p in procs]
    assert codes == [0] * world_size, f"world size {world_size}: exit codes {codes}"
    return torch.load(out / "result.pt", weights_only=False)


def _max_diff(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())


def test_distributed_supernet_training(benchmark, record_result):
    results: Dict[str, Dict[str, Any]] = {}

    def all_variants():
        with tempfile.TemporaryDirectory() as tmp:
            for w in sorted({v[0] for v in VARIANTS.values()}):
                results.update(_run([n for n, v in VARIANTS.items() if v[0] == w], Path(tmp)))

    benchmark.pedantic(all_variants, rounds=1, iterations=1)
    per_step = {}
    for name, r in results.items():
        rounds = r["rounds"]
        # per step index the fastest round; the first step (oneDNN primitive creation) is left out
        per_step[name] = statistics.mean(min(rd[i] for rd in rounds) for i in range(1, STEPS))

    ref = results["1 process x 1 thread"]["final"]
    checks = {
        "bucket+syncBN vs 1 process": _max_diff(ref, results["2 ranks x 1 thread, bucket, sync BN"]["final"]),
        "DDP+syncBN vs 1 process": _max_diff(ref, results["2 ranks x 1 thread, DDP(find_unused), sync BN"]["final"]),
        "DDP vs bucket, no sync BN": _max_diff(results["2 ranks x 1 thread, bucket, no sync BN"]["final"],
                                               results["2 ranks x 1 thread, DDP(find_unused), no sync BN"]["final"]),
        "no sync BN vs 1 process": _max_diff(ref, results["2 ranks x 1 thread, bucket, no sync BN"]["final"]),
    }
    for what in ("bucket+syncBN vs 1 process", "DDP+syncBN vs 1 process", "DDP vs bucket, no sync BN"):
        # float32: rounding in another order may flip a ReLU tie (~1e-5 moves, see tests/train/test_distributed.py);
        # without synchronised BatchNorm the difference is ~1e-2
        assert checks[what] < 1e-3, f"{what}: the variants train different networks (max |diff| {checks[what]:.3g})"

    scale = f"NB201 C=8 N=1, 16x16x3, global batch {BATCH}, seconds per global step [cpu]"
    groups = {
        f"1 vs 2 Gloo processes, {scale}": (BASELINE, list(VARIANTS)),
        f"gradient sync: bucket vs DDP(find_unused_parameters=True), 2 ranks, {scale}":
            ("2 ranks x 1 thread, DDP(find_unused), sync BN", [n for n in VARIANTS if n.startswith("2 ranks")]),
        f"synchronised BatchNorm cost, 2 ranks, {scale}":
            ("2 ranks x 1 thread, bucket, no sync BN", ["2 ranks x 1 thread, bucket, no sync BN",
                                                         "2 ranks x 1 thread, bucket, sync BN"]),
    }
    lines = []
    for group, (base, names) in groups.items():
        lines.append(group)
        for name in names:
            record_result(group, name, per_step[name], role="baseline" if name == base else None)
            lines.append(f"  {name:<50} {per_step[name] * 1e3:8.2f} ms/step  {per_step[base] / per_step[name]:5.2f}x "
                         "vs baseline")
    lines.append("max |weight difference| after the run: " + ", ".join(f"{k} {v:.2g}" for k, v in checks.items()))
    benchmark.extra_info.update({"ms_per_step": {k: v * 1e3 for k, v in per_step.items()}, "max_diff": checks})
    print("\n" + "\n".join(lines))
