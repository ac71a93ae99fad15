"""Perturb + restore throughput: fastnas against the per-tensor loop, the best plain PyTorch and a copy.

Run: ``python -m pytest benchmarks/bench_perturb.py --benchmark-only`` (``-m gpu`` for the GPU part).
Memory traffic per perturb + restore cycle: perturb reads N and writes 2N (weights and backup),
restore reads N and writes N; the floor is the same bytes moved by two plain copies. The slice
benchmark perturbs a half-width nested member (``weight[:out/2, :in/2]`` of every tensor, as a
once-for-all family does) against perturbing the whole tensors and a per-view torch loop.
"""

from __future__ import annotations

import pytest
import torch

import fastnas

SIGMA = 0.01


def resnet20_shapes() -> list[tuple]:
    """CIFAR ResNet-20: 0.27M parameters in 59 tensors (convs without bias, BN pairs, linear)."""
    shapes = [(16, 3, 3, 3), (16,), (16,)]
    cin = 16
    for cout in (16, 32, 64):
        for _ in range(3):
            shapes += [(cout, cin, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
            cin = cout
    return shapes + [(10, 64), (10,)]


def resnet18_shapes() -> list[tuple]:
    """ImageNet ResNet-18: 11.7M parameters in 62 tensors."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            shapes += [(cout, cin, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
            if block == 0 and stage > 0:
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    return shapes + [(1000, 512), (1000,)]


CASES = {"resnet20-0.27M": resnet20_shapes, "resnet18-11M": resnet18_shapes}


def make_params(case: str, device: str = "cpu") -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(device) for s in CASES[case]()]


def test_shapes_are_as_documented():
    p20, p18 = make_params("resnet20-0.27M"), make_params("resnet18-11M")
    assert len(p20) == 59 and 0.26e6 < sum(p.numel() for p in p20) < 0.28e6
    assert 11.6e6 < sum(p.numel() for p in p18) < 11.8e6


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def impl_fastnas(params, device):
    backup = [None]

    def run():
        backup[0] = fastnas.perturb_(params, SIGMA, seed=1, backup=backup[0])
        fastnas.restore_(params, backup[0])
        _sync(device)
    return run


def impl_per_tensor_loop(params, device):
    # What the reference NAS code does: one randn_like per parameter, clone to restore.
    def run():
        saved = [p.clone() for p in params]
        for p in params:
            p.add_(torch.randn_like(p) * SIGMA)
        for p, s in zip(params, saved):
            p.copy_(s)
        _sync(device)
    return run


def impl_flat_torch(params, device):
    # Best plain PyTorch: parameters living in one flat buffer, one normal_ and one fused add.
    flat = torch.cat([p.reshape(-1) for p in params])
    saved = torch.empty_like(flat)
    noise = torch.empty_like(flat)

    def run():
        saved.copy_(flat)
        noise.normal_(0.0, SIGMA)
        flat.add_(noise)
        flat.copy_(saved)
        _sync(device)
    return run


def impl_copy_floor(params, device):
    flat = torch.cat([p.reshape(-1) for p in params])
    saved = torch.empty_like(flat)

    def run():
        saved.copy_(flat)
        flat.copy_(saved)
        _sync(device)
    return run


IMPLS = {
    "fastnas": (impl_fastnas, None),
    "per-tensor loop (reference code)": (impl_per_tensor_loop, "baseline"),
    "flat buffer + normal_ (plain torch)": (impl_flat_torch, None),
    "memory copy (floor)": (impl_copy_floor, "floor"),
}


def _bench(benchmark, record_result, case, impl, device):
    params = make_params(case, device)
    fn, role = IMPLS[impl]
    run = fn(params, device)
    run()  # warm-up
    benchmark.pedantic(run, rounds=20 if "11M" in case else 100, iterations=1, warmup_rounds=2)
    # GB/s column: the floor's bytes (two copies: read and write N, twice) over each entry's time. A
    # perturb + restore must move 25% more (read N, write 2N; read N, write N), so 1.25x the floor is ideal.
    nbytes = 4 * sum(p.numel() * p.element_size() for p in params)
    record_result(f"perturb+restore {case} [{device}, {torch.get_num_threads()} threads]", impl,
                  benchmark.stats.stats.median, nbytes, role)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(CASES))
def test_perturb_restore_cpu(benchmark, record_result, case, impl):
    benchmark.group = f"perturb+restore {case} cpu"
    _bench(benchmark, record_result, case, impl, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(CASES))
def test_perturb_restore_gpu(benchmark, record_result, case, impl):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    benchmark.group = f"perturb+restore {case} cuda"
    _bench(benchmark, record_result, case, impl, "cuda")


# ---- slices: a nested member's path --------------------------------------------------------------

def half_width(params) -> list:
    """``(ParamSlice, tensor)`` pairs: the first half of the first two dims of every tensor."""
    return [(fastnas.ParamSlice(f"p{i}", tuple((0, max(1, n // 2)) for n in p.shape[:2])), p)
            for i, p in enumerate(params)]


def _slice_layout(params):
    return fastnas.ParamLayout([(f"p{i}", p.numel()) for i, p in enumerate(params)])


def impl_fastnas_slices(params, device):
    entries, layout, backup = half_width(params), _slice_layout(params), [None]

    def run():
        backup[0] = fastnas.perturb_(entries, SIGMA, seed=1, layout=layout, backup=backup[0])
        fastnas.restore_(entries, backup[0])
        _sync(device)
    return run


def impl_fastnas_whole_tensors(params, device):
    # What a path of whole tensors costs: the member's boxes plus everything around them.
    named, layout, backup = [(f"p{i}", p) for i, p in enumerate(params)], _slice_layout(params), [None]

    def run():
        backup[0] = fastnas.perturb_(named, SIGMA, seed=1, layout=layout, backup=backup[0])
        fastnas.restore_(named, backup[0])
        _sync(device)
    return run


def impl_view_loop(params, device):
    # The reference code's loop over the member's views (a view is perturbed and restored in place).
    return impl_per_tensor_loop([s.view(p) for s, p in half_width(params)], device)


def impl_box_copy_floor(params, device):
    # Reading and writing the boxes once (the copy floor of the boxes' bytes).
    return impl_copy_floor([s.view(p) for s, p in half_width(params)], device)


SLICE_IMPLS = {
    "fastnas slices": (impl_fastnas_slices, None),
    "fastnas whole tensors": (impl_fastnas_whole_tensors, None),
    "per-view loop (plain torch)": (impl_view_loop, "baseline"),
    "memory copy of the boxes (floor)": (impl_box_copy_floor, "floor"),
}


def test_half_width_slices_are_a_quarter_of_the_weights():
    params = make_params("resnet18-11M")
    box = sum(s.numel(p.shape) for s, p in half_width(params))
    assert 0.24 < box / sum(p.numel() for p in params) < 0.27


@pytest.mark.parametrize("impl", list(SLICE_IMPLS))
@pytest.mark.parametrize("case", list(CASES))
def test_slice_perturb_restore_cpu(benchmark, record_result, case, impl):
    benchmark.group = f"half-width slices {case} cpu"
    params = make_params(case)
    fn, role = SLICE_IMPLS[impl]
    run = fn(params, "cpu")
    run()  # warm-up
    benchmark.pedantic(run, rounds=20 if "11M" in case else 100, iterations=1, warmup_rounds=2)
    nbytes = 4 * sum(s.numel(p.shape) * p.element_size() for s, p in half_width(params))
    record_result(f"perturb+restore half-width slices {case} [cpu, {torch.get_num_threads()} threads]", impl,
                  benchmark.stats.stats.median, nbytes, role)
