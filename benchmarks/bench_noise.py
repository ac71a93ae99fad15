"""Noise generation, one thread: fastnas's two SIMD paths against torch's own ``normal_``.

Run: ``python -m pytest benchmarks/bench_noise.py --benchmark-only``. Every entry fills the same
preallocated float32 buffer (no allocation or page faults in the timing); the floor is writing it
(``zero_``). The hand-written AVX-512 path runs where the CPU has AVX-512F, the portable path is
what the compiler vectorises (AVX-512, AVX2 or SSE clones); both give the same bits.
"""

from __future__ import annotations

import pytest
import torch

import fastnas

SIZES = {"1M": 1 << 20, "4M": 1 << 22, "16M": 1 << 24}


def _native():
    from fastnas._native import C

    if C is None or not hasattr(C, "set_simd"):
        pytest.skip("fastnas._C not built")
    return C


def _fastnas(hand_written: bool):
    def make(out):
        C = _native()

        def run():
            C.set_simd(hand_written)
            try:
                C.normals_cpu(out.data_ptr(), out.numel(), 0, 1, 0, 1)
            finally:
                C.set_simd(True)
        return run
    return make


IMPLS = {
    "fastnas hand-written AVX-512": (_fastnas(True), None),
    "fastnas portable (auto-vectorised)": (_fastnas(False), None),
    "torch normal_": (lambda out: out.normal_, "baseline"),
    "write the buffer (floor)": (lambda out: out.zero_, "floor"),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("size", list(SIZES))
def test_noise_one_thread(benchmark, record_result, size, impl):
    if impl.startswith("fastnas hand") and not _native().simd_variant().endswith("(hand-written)"):
        pytest.skip("the CPU has no AVX-512F: the hand-written path does not run")
    n = SIZES[size]
    out = torch.empty(n, dtype=torch.float32)
    make, role = IMPLS[impl]
    run = make(out)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run()  # warm-up: pages touched, code paths resolved
        benchmark.group = f"noise {size} cpu 1 thread"
        benchmark.pedantic(run, rounds=15, iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(old)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["ns_per_normal"] = seconds / n * 1e9
    record_result(f"noise {size} [cpu, 1 thread, {_native().simd_variant()}]", impl, seconds, 4 * n, role)


def test_paths_agree_bit_for_bit():
    # The benchmark compares like with like: both native paths give the reference's values.
    C = _native()
    want = fastnas.noise(4099, seed=1, offset=5, backend="reference")
    for hand_written in (True, False):
        out = torch.empty(4099)
        C.set_simd(hand_written)
        try:
            C.normals_cpu(out.data_ptr(), out.numel(), 5, 1, 0, 1)
        finally:
            C.set_simd(True)
        assert torch.equal(out, want)
