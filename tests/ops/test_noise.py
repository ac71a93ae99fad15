"""The noise stream: Philox words, normals, and their independence of how they are computed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fastnas
from fastnas.ops.perturb import reference
from _ulp import ulp_distance

scipy_stats = pytest.importorskip("scipy.stats")

HAS_CPP = fastnas.backends()["cpp"].available
HAS_TRITON = fastnas.backends()["triton"].available
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="fastnas._C not built")
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")


def test_philox_known_answer():
    # Random123 known-answer vector: philox4x32-10, counter (0,0,0,0), key (0,0).
    expected = [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert reference.philox_words(torch.tensor([0]), 0, 0)[0].tolist() == expected
    if HAS_CPP:
        assert fastnas.philox_words(1, backend="cpp")[0].tolist() == expected


@needs_cpp
@pytest.mark.parametrize("seed,stream,group0", [(0, 0, 0), (7, 3, 123), (2**32 - 1, 2**32 - 1, 2**32 - 5)])
def test_words_cpp_equal_reference(seed, stream, group0):
    n = 1037
    got = fastnas.philox_words(n, seed, stream, group0, backend="cpp")
    want = reference.philox_words(torch.arange(group0, group0 + n), seed, stream)
    assert torch.equal(got, want)


@needs_triton
def test_words_triton_equal_reference_and_tl_randint4x():
    # The Triton backend is built on tl.randint4x(seed + 2**32 * stream, group): words must match.
    seed, stream, group0, n = 11, 5, 2**32 - 100, 300
    got = fastnas.philox_words(n, seed, stream, group0, backend="triton")
    want = reference.philox_words(torch.arange(group0, group0 + n), seed, stream)
    assert torch.equal(got, want)


@needs_cpp
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4, 63, 1001, 2**33 + 3])
def test_normals_cpp_bit_exact_vs_reference(offset):
    n = 4099
    got = fastnas.noise(n, seed=5, stream=9, offset=offset, backend="cpp")
    want = fastnas.noise(n, seed=5, stream=9, offset=offset, backend="reference")
    assert ulp_distance(got, want).max().item() <= 4
    assert torch.equal(got, want)  # same operations, same roundings: bit for bit on CPU


@needs_triton
@pytest.mark.parametrize("offset", [0, 3, 4097])
def test_normals_triton_within_4_ulp_of_reference(offset):
    n = 5003
    got = fastnas.noise(n, seed=2, stream=1, offset=offset, backend="triton")
    want = fastnas.noise(n, seed=2, stream=1, offset=offset, backend="reference")
    assert ulp_distance(got, want).max().item() <= 4


def test_normals_match_float64_box_muller():
    """Against the textbook formula in float64: the float32 polynomials are within 4 ulp."""
    groups = 50_000
    w = reference.philox_words(torch.arange(groups), 1, 0)
    u = (w >> 9).double() * 2.0**-23 + 2.0**-24
    r01, r23 = torch.sqrt(-2 * torch.log(u[:, 0])), torch.sqrt(-2 * torch.log(u[:, 2]))
    exact = torch.stack([r01 * torch.cos(2 * math.pi * u[:, 1]), r01 * torch.sin(2 * math.pi * u[:, 1]),
                         r23 * torch.cos(2 * math.pi * u[:, 3]), r23 * torch.sin(2 * math.pi * u[:, 3])], -1)
    got = fastnas.noise(4 * groups, seed=1, stream=0)
    exact32 = exact.reshape(-1).float()
    # 1 ulp of rounding exact to float32 plus the approximation error of the polynomials.
    assert ulp_distance(got, exact32).max().item() <= 4


def test_noise_statistics():
    n = 400_000
    z = fastnas.noise(n, seed=123, stream=0).double().numpy()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1) < 5 * math.sqrt(0.5 / n)
    assert scipy_stats.kstest(z[:100_000], "norm").pvalue > 1e-3
    assert scipy_stats.normaltest(z[:100_000]).pvalue > 1e-3
    for lag in (1, 2, 3, 4):  # within a Box-Muller pair, across pairs and across Philox groups
        r = np.corrcoef(z[:-lag], z[lag:])[0, 1]
        assert abs(r) < 5 / math.sqrt(n), (lag, r)
    # Squares of a Box-Muller pair are also uncorrelated if the pair is independent.
    r = np.corrcoef(z[0::2] ** 2, z[1::2] ** 2)[0, 1]
    assert abs(r) < 5 / math.sqrt(n / 2)


def test_streams_and_seeds_are_uncorrelated():
    n = 200_000
    base = fastnas.noise(n, seed=1, stream=0).double().numpy()
    for other in (fastnas.noise(n, seed=1, stream=1), fastnas.noise(n, seed=2, stream=0),
                  fastnas.noise(n, seed=1, stream=0, offset=n)):
        r = np.corrcoef(base, other.double().numpy())[0, 1]
        assert abs(r) < 5 / math.sqrt(n)


@needs_cpp
def test_noise_independent_of_chunking_and_threads():
    n, seed, stream = 100_003, 4, 2
    whole = fastnas.noise(n, seed, stream)
    cuts = [0, 1, 5, 64, 4097, 50_000, 99_999, n]
    pieces = torch.cat([fastnas.noise(b - a, seed, stream, offset=a) for a, b in zip(cuts, cuts[1:])])
    assert torch.equal(whole, pieces)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fastnas.noise(n, seed, stream)
        torch.set_num_threads(max(2, old))
        many = fastnas.noise(n, seed, stream)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, whole) and torch.equal(many, whole)


def test_noise_bad_input():
    with pytest.raises(ValueError, match="seed"):
        fastnas.noise(4, seed=-1)
    with pytest.raises(ValueError, match="stream"):
        fastnas.noise(4, stream=2**32)
    with pytest.raises(TypeError, match="seed"):
        fastnas.noise(4, seed=1.5)
    with pytest.raises(ValueError, match="n="):
        fastnas.noise(-3)
    with pytest.raises(ValueError, match="offset"):
        fastnas.noise(3, offset=-1)
    with pytest.raises(ValueError, match="backend='cp'.*did you mean 'cpp'"):
        fastnas.noise(3, backend="cp")


@needs_cpp
def test_hand_written_and_portable_simd_paths_agree():
    from fastnas._native import C

    want = fastnas.noise(10_007, seed=8, stream=3, offset=2**32 * 4 - 13, backend="reference")
    try:
        for hand_written in (True, False):
            C.set_simd(hand_written)
            got = fastnas.noise(10_007, seed=8, stream=3, offset=2**32 * 4 - 13, backend="cpp")
            assert torch.equal(got, want), C.simd_variant()
    finally:
        C.set_simd(True)
