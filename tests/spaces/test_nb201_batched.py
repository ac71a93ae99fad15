"""The batched (mixed-op) NB201 forward equals K separate supernet forwards."""

from __future__ import annotations

import random

import pytest
import torch

import fastnas
from fastnas.spaces import NB201
from fastnas.spaces.nb201_batched import BatchedNB201, choices, choose_forward


@pytest.fixture(scope="module")
def trained_like():
    torch.manual_seed(0)
    space = NB201(C=4, N=1, num_classes=10, in_channels=1, resolution=8)
    sn = space.supernet()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in sn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return space, sn.eval()


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_k_architectures_equal_separate_forwards(trained_like):
    space, sn = trained_like
    rng = random.Random(1)
    archs = [space.sample(rng) for _ in range(6)] + [("none",) * 6, ("skip_connect",) * 6,
                                                      ("avg_pool_3x3",) * 6, ("nor_conv_1x1",) * 6]
    x = torch.randn(5, 1, 8, 8)
    out = BatchedNB201(sn)(x, archs)
    assert out.shape == (len(archs), 5, 10)
    with torch.no_grad():
        ref = torch.stack([sn(x, a) for a in archs])
    assert _rel(out, ref) < 1e-4


def test_k_weight_sets_equal_perturbed_forwards(trained_like):
    space, sn = trained_like
    arch = space.parse("|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|")
    sigmas = [0.01, 0.05, 0.1]
    layout = fastnas.ParamLayout.from_module(sn)
    named = dict(sn.named_parameters())
    names = sn.path_parameters(arch)
    copies = fastnas.perturbed_copies([(n, named[n]) for n in names], sigmas, seed=3, stream=0, layout=layout)
    weights = [{n: c[k] for n, c in zip(names, copies)} for k in range(len(sigmas))]
    x = torch.randn(4, 1, 8, 8)
    out = BatchedNB201(sn)(x, [arch] * len(sigmas), weights=weights)
    for k, s in enumerate(sigmas):
        with fastnas.perturbed([(n, named[n]) for n in names], s, seed=3, stream=k, layout=layout):
            with torch.no_grad():
                ref = sn(x, arch)
        assert _rel(out[k], ref) < 1e-4


def test_choice_is_measured_and_visible(trained_like):
    space, sn = trained_like
    rng = random.Random(2)
    archs = [space.sample(rng) for _ in range(3)]
    choice = choose_forward(sn, torch.randn(2, 1, 8, 8), archs, repeat=1)
    assert choice in ("batched", "sequential")
    seen = [c for c in choices() if c["k"] == 3]
    assert seen and seen[0]["choice"] == choice and seen[0]["sequential_s"] > 0 and seen[0]["batched_s"] > 0


def test_bad_input(trained_like):
    space, sn = trained_like
    b = BatchedNB201(sn)
    with pytest.raises(ValueError, match="at least one"):
        b.prepare([])
    with pytest.raises(ValueError, match="one each"):
        b.prepare([space.sample(random.Random(0))], weights=[{}, {}])
    with pytest.raises(ValueError, match="expected"):
        b(torch.randn(2, 3, 8, 8), [space.sample(random.Random(0))])
    with pytest.raises(TypeError, match="NB201Supernet"):
        BatchedNB201(torch.nn.Linear(2, 2))
