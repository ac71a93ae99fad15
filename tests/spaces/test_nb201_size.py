"""NATS-Bench's size search space: the definition (sizes, text form, parameter counts of the benchmark),
the configurable cell, the family order and its exact containment of weights, before and after training."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from fastnas.ops import ParamSlice
from fastnas.spaces import NB201Size, create_space
from fastnas.spaces.nb201_size import NATS_CELL, NATS_CHANNELS
from fastnas.train import Sandwich, SandwichSampler


def _small(**kw):
    torch.manual_seed(0)
    return NB201Size(candidates=(2, 4), num_classes=3, resolution=8, **kw)


def test_the_default_is_natsbenchs_size_space():
    s = create_space("nb201_size")
    assert s.candidates == NATS_CHANNELS == (8, 16, 24, 32, 40, 48, 56, 64)
    assert s.num_layers == 5 and s.reductions == (False, True, False, True, False)
    assert s.cell_text == NATS_CELL and s.size() == 32768 == sum(1 for _ in s.enumerate())
    assert s.largest() == (64,) * 5 and s.smallest() == (8,) * 5
    assert s.parse(" 8:16:32:48:64 ") == (8, 16, 32, 48, 64) and s.format((8, 16, 32, 48, 64)) == "8:16:32:48:64"
    assert create_space("nb201_size", **s.config()).config() == s.config()
    assert create_space("nb201_size", channels=16).candidates == (2, 4, 6, 8, 10, 12, 14, 16)


@pytest.mark.parametrize("text, params", [("8:8:8:8:8", 11_714), ("8:8:16:40:40", 107_826),
                                          ("64:64:64:64:64", 713_674)])
def test_parameter_counts_are_the_benchmarks(text, params):
    # NATS-Bench's recorded sizes on CIFAR-10 (0.011714, 0.107826, 0.713674 MB); 8:8:16:40:40 has the 1x1
    # projection of skip_connect~0 in its second cell (8 -> 16 channels).
    s = NB201Size()
    a = s.parse(text)
    assert s.params(a) == params == sum(p.numel() for p in s.build(a).parameters())


def test_flops_count_convolutions_and_the_linear_layer():
    s = NB201Size()
    # 8:8:8:8:8 at 32 px, by hand: stem, 5 conv3x3 per cell at 32/16/8 px, the two residual blocks, linear.
    hand = (3 * 8 * 9 * 32 * 32 + 5 * 9 * 64 * (32 * 32 + 16 * 16 + 8 * 8) + (9 * 64 + 9 * 64 + 64) * (16 * 16 + 8 * 8)
            + 8 * 10 + 10)
    assert s.flops((8,) * 5) == pytest.approx(hand / 1e6, rel=1e-12)
    assert s.flops(s.largest()) > s.flops((8, 8, 16, 40, 40)) > s.flops(s.smallest())


def test_bad_input_is_refused_with_the_argument_named():
    s = NB201Size()
    for text in ("8:8:8:8", "8:8:8:8:9", "a:b", ""):
        with pytest.raises(ValueError, match="text="):
            s.parse(text)
    with pytest.raises(ValueError, match=r"arch=.*layer 4 width 9"):
        s.validate((8, 8, 8, 8, 9))
    with pytest.raises(ValueError, match="big="):
        s.contains((8,) * 4, (8,) * 5)
    with pytest.raises(ValueError, match="small='8:8:8:8:8' is a string"):
        s.contains((8,) * 5, "8:8:8:8:8")
    with pytest.raises(ValueError, match="cell="):
        NB201Size(cell="|conv~0|")
    with pytest.raises(ValueError, match="channels=32 and candidates"):
        NB201Size(candidates=(8, 16), channels=32)
    with pytest.raises(ValueError, match="resolution=30"):
        NB201Size(resolution=30)


def _names_and_shapes(space, arch):
    with torch.device("meta"):
        return {n: tuple(p.shape) for n, p in space.build(arch).named_parameters()}


@pytest.mark.parametrize("cell", [None, "|skip_connect~0|+|avg_pool_3x3~0|none~1|+|nor_conv_1x1~0|none~1|none~2|"])
def test_contains_is_exactly_weight_containment(cell):
    # contains(big, small) <=> every weight of small is a leading block of big's weight of the same name
    s = _small(cell=cell)
    archs = list(s.enumerate())
    shapes = {a: _names_and_shapes(s, a) for a in archs}
    for big, small in itertools.product(archs, repeat=2):
        b, sm = shapes[big], shapes[small]
        inside = all(n in b and all(x <= y for x, y in zip(shape, b[n])) for n, shape in sm.items())
        assert s.contains(big, small) == inside, (big, small)
    assert all(s.contains(a, s.smallest()) for a in archs)
    # the largest member has no projection: it contains exactly the members without one
    assert [a for a in archs if s.contains(s.largest(), a)] == [a for a in archs if not s.projections(a)]


def test_extract_equals_forward_for_every_member_and_a_cell_with_pooling_and_projections():
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for cell in (None, "|avg_pool_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|none~1|avg_pool_3x3~2|"):
        s = _small(cell=cell)
        sn = s.supernet()
        with torch.no_grad():
            for p in sn.parameters():
                p.add_(0.1 * torch.randn_like(p))
        for mode in ("train", "eval"):
            for a in s.enumerate():
                sn.train(mode == "train")
                net = sn.extract(a)
                with torch.no_grad():
                    torch.testing.assert_close(net(x), sn(x, a), rtol=1e-5, atol=1e-6, msg=str(a))


def _assert_contained(sn, big, small):
    """Every weight and BatchNorm statistic of the extracted small member is the leading block of the
    extracted big member's."""
    b, s = sn.extract(big).state_dict(), sn.extract(small).state_dict()
    for n, t in s.items():
        assert n in b, n
        assert torch.equal(t, b[n][tuple(slice(0, k) for k in t.shape)]), (n, big, small)


def test_containment_holds_before_and_after_sandwich_training():
    s = _small()
    sn = s.supernet()
    rng = random.Random(0)
    pairs = [(a, b) for a, b in itertools.product(list(s.enumerate()), repeat=2) if s.contains(a, b)]
    chosen = rng.sample(pairs, 12) + [(s.largest(), s.smallest())]
    for big, small in chosen:
        _assert_contained(sn, big, small)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    opt = torch.optim.SGD(sn.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    sampler, step = SandwichSampler(s, k=2, seed=0), Sandwich(distill=True)
    sn.train()
    for t in range(4):
        step.step(sn, sampler.sample(t), x, y, opt)
    assert any(not torch.equal(v, before[k]) for k, v in sn.state_dict().items())
    sn.eval()
    for big, small in chosen:
        _assert_contained(sn, big, small)


def test_path_parameters_are_the_leading_blocks_of_the_supernets_tensors():
    s = _small()
    sn = s.supernet()
    full = dict(sn.named_parameters())
    entries = sn.path_parameters(s.largest())
    assert all(isinstance(e, str) for e in entries)  # the largest member uses whole tensors ...
    assert set(entries) == {n for n in full if ".edges.3." not in n}  # ... but not the projections
    small = sn.path_parameters(s.smallest())
    assert [e for e in small if isinstance(e, str)] == ["classifier.bias"]  # the one tensor used whole
    for e in small:
        if isinstance(e, ParamSlice):
            assert all(lo == 0 for lo, _ in e.index)
            assert e.view(full[e.name]).shape == dict(sn.extract(s.smallest()).named_parameters())[e.name].shape


def test_training_moves_only_the_members_slice_of_the_batchnorm_statistics():
    s = _small()
    sn = s.supernet()
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    sn.train()
    with torch.no_grad():
        sn(torch.randn(4, 3, 8, 8), s.smallest())
    after = sn.state_dict()
    rm = "cells.0.edges.0.2.running_mean"
    assert not torch.equal(after[rm][:2], before[rm][:2]) and torch.equal(after[rm][2:], before[rm][2:])
