"""Supernet training throughput: today's trainer against bf16, channels-last, batch sizes and samplers, in one run.

Run: ``python -m pytest benchmarks/bench_train.py --benchmark-only -s`` (not part of the test suite).

NB201 supernet, C=8, N=2, on 28x28x1 images with 10 classes (the Fashion-MNIST shape; random tensors)
-- the issue-9 Fashion-MNIST setting. Every variant runs 6 steps of :func:`fastnas.train.train_supernet`
(optimizer, schedule, clipping, the sampler and the step strategy all included; no checkpoint); the
uniform variants train the same 6 architectures (the sampler is a function of the step). Each step is
timed from the progress events; the variants run interleaved, 3 rounds, and per step the fastest round
counts (the machine is shared). Reported: seconds per 512 images, so "x vs baseline" is the images/s
ratio; steps/s is printed beside it. The baseline is today's trainer: ``TrainConfig`` with the uniform
sampler, fp32, the default layout and batch 64. Ratios are printed at the end of the run
(``benchmarks/conftest.py``). About 5 minutes per thread count on two shared cores.
"""

from __future__ import annotations

import time

import pytest
import torch

from fastnas.spaces.nb201 import NB201
from fastnas.train import TrainConfig, bf16_support, train_supernet

STEPS = 6  # per run; the uniform sampler trains the same 6 architectures in every variant
PER = 512  # results are reported as seconds per 512 images
BASELINE = "fp32, batch 64 (today's trainer)"

#: name -> TrainConfig changes (batch_size 64, uniform, fp32, contiguous unless changed)
VARIANTS = {
    BASELINE: {},
    "bf16, batch 64": {"precision": "bf16"},
    "channels-last, batch 64": {"channels_last": True},
    "bf16 + channels-last, batch 64": {"precision": "bf16", "channels_last": True},
    "fp32, batch 128": {"batch_size": 128},
    "fp32, batch 256": {"batch_size": 256},
    "channels-last, batch 128": {"channels_last": True, "batch_size": 128},
    "channels-last, batch 256": {"channels_last": True, "batch_size": 256},
    "bf16 + channels-last, batch 128": {"precision": "bf16", "channels_last": True, "batch_size": 128},
    "bf16 + channels-last, batch 256": {"precision": "bf16", "channels_last": True, "batch_size": 256},
    "per-cell sampler, batch 64": {"sampler": "per-cell"},
    "fair sampler (5 paths/step), batch 64": {"sampler": "fair"},
}


def _setup(images: int = STEPS * 256):
    torch.manual_seed(0)
    space = NB201(C=8, N=2, num_classes=10, in_channels=1, resolution=28)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(images, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    return space, x, y


def _step_times(space, x, y, changes, steps: int = STEPS) -> list:
    """Seconds of each step of a :func:`train_supernet` run of ``steps`` steps (from the progress events)."""
    cfg = TrainConfig(**{"epochs": 1, "batch_size": 64, "lr": 0.025, **changes})
    b = cfg.batch_size
    batches = [(x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]) for i in range(steps)]
    torch.manual_seed(1)
    net = space.supernet()
    stamps = []
    t0 = time.perf_counter()
    train_supernet(net, space, None, None, cfg, batch_fn=lambda epoch: batches,
                   progress=lambda event, info: stamps.append(time.perf_counter()) if event == "step" else None)
    return [b - a for a, b in zip([t0] + stamps[:-1], stamps)]


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """torch's thread count for the test (the CLI takes torch's default, all cores, for images above 16 px)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_supernet_training_throughput(benchmark, record_result, threads):
    space, x, y = _setup()
    for changes in VARIANTS.values():  # warm up (oneDNN primitive caches, autocast kernels)
        _step_times(space, x, y, changes, steps=1)
    times = {name: [] for name in VARIANTS}

    def interleaved():
        for _ in range(3):
            for name, changes in VARIANTS.items():
                times[name].append(_step_times(space, x, y, changes))

    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    # Per step index the fastest of the rounds (the machine is shared), summed over the steps.
    run_s = {name: sum(min(r[i] for r in rounds) for i in range(STEPS)) for name, rounds in times.items()}
    per_image = {name: s / (STEPS * VARIANTS[name].get("batch_size", 64)) for name, s in run_s.items()}
    native = bf16_support("cpu")
    group = (f"supernet training, NB201 C=8 N=2, 28x28x1, seconds per {PER} images, {torch.get_num_threads()} "
             f"thread(s), bf16 {'native' if not native else 'emulated'} [cpu]")
    lines = []
    for name in VARIANTS:
        record_result(group, name, per_image[name] * PER, role="baseline" if name == BASELINE else None)
        steps_per_s = STEPS / run_s[name]
        lines.append(f"  {name:<40} {steps_per_s:7.2f} steps/s  {1 / per_image[name]:8.1f} images/s  "
                     f"{per_image[BASELINE] / per_image[name]:5.2f}x images/s vs baseline")
        benchmark.extra_info[name] = {"steps_per_s": steps_per_s, "images_per_s": 1 / per_image[name]}
    print("\n" + group + "\n" + "\n".join(lines))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["default", "channels-last"])
def test_one_step(benchmark, precision, layout, threads):
    """One SPOS step at batch 64 on one architecture (pytest-benchmark's own statistics)."""
    from fastnas.train import SinglePath

    space, x, y = _setup(64)
    torch.manual_seed(1)
    net = space.supernet().train()
    if layout == "channels-last":
        net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9)
    arch = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3")
    step = SinglePath()
    step.step(net, arch, x, y, opt, grad_clip=5.0, precision=precision)  # warm up
    benchmark.group = f"one SPOS step, NB201 C=8 N=2, 64 x 28x28x1, {threads} thread(s)"
    benchmark(lambda: step.step(net, arch, x, y, opt, grad_clip=5.0, precision=precision))
