"""Supernet costs against the networks they stand for, and the batched (mixed-op) forward.

Run: ``python -m pytest benchmarks/bench_supernet.py --benchmark-only`` (add ``-m gpu`` on a GPU).

* A single-path SPOS training step of the NB201 supernet vs the standalone network of the same
  architecture (same channels and cell count, non-affine cell BatchNorm like the supernet): target
  within 1.10x.
* K = 8 candidates in one batched pass vs 8 sequential supernet forwards (eval mode).
"""

from __future__ import annotations

import random
import time

import pytest
import torch
import torch.nn.functional as F

from fastnas.spaces import NB201
from fastnas.spaces.nb201_batched import BatchedNB201

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def _step_fn(forward, params, x, y):
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=3e-4)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
    return run


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _training_step(benchmark, record_result, device, batch):
    """Both steps timed in alternation (this machine is shared: separate runs drift), minimum kept."""
    torch.manual_seed(0)
    space = NB201(C=16, N=5, num_classes=10, in_channels=3, resolution=32)
    arch = space.parse(ARCH)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    net = space.build(arch, affine_cells=False).to(device).train()
    sn = space.supernet().to(device).train()
    steps = {
        "standalone network": _step_fn(net, net.parameters(), x, y),
        # SPOS: the optimizer sees every parameter; only the path's get gradients this step.
        "supernet single path": _step_fn(lambda t: sn(t, arch), list(sn.parameters()), x, y),
    }
    times = {k: [] for k in steps}

    def interleaved():
        for _ in range(6):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                _sync(device)
                times[name].append(time.perf_counter() - t0)

    for step in steps.values():
        step()
    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    group = f"training step NB201 C16 N5 batch {batch} [{device}]"
    record_result(group, "standalone network", min(times["standalone network"]), role="baseline")
    record_result(group, "supernet single path", min(times["supernet single path"]))


def test_training_step_cpu(benchmark, record_result):
    _training_step(benchmark, record_result, "cpu", 64)


@pytest.mark.gpu
def test_training_step_gpu(benchmark, record_result):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _training_step(benchmark, record_result, "cuda", 256)


def _batched(benchmark, record_result, device, which, batch):
    torch.manual_seed(0)
    space = NB201(C=16, N=5, num_classes=10, in_channels=3, resolution=32)
    sn = space.supernet().to(device).eval()
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(8)]
    x = torch.randn(batch, 3, 32, 32, device=device)
    if which == "8 sequential forwards":
        def run():
            with torch.inference_mode():
                for a in archs:
                    sn(x, a)
            _sync(device)
        role = "baseline"
    else:
        batched = BatchedNB201(sn)

        def run():
            with torch.inference_mode():
                batched(x, archs)  # includes folding the 8 candidates' weights
            _sync(device)
        role = None
    run()
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    record_result(f"eval forward of K=8 NB201 candidates, batch {batch} [{device}]", which,
                  benchmark.stats.stats.median, role=role)


@pytest.mark.parametrize("which", ["8 sequential forwards", "batched mixed-op forward"])
def test_batched_forward_cpu(benchmark, record_result, which):
    _batched(benchmark, record_result, "cpu", which, 64)


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["8 sequential forwards", "batched mixed-op forward"])
def test_batched_forward_gpu(benchmark, record_result, which):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _batched(benchmark, record_result, "cuda", which, 256)
