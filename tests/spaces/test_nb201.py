"""Tests of the NAS-Bench-201 space: encodings, published params/FLOPs, supernet, extract, export."""

from __future__ import annotations

import collections
import itertools
import random

import pytest
import torch
from torch import nn

from fastnas.spaces import create_space, list_spaces
from fastnas.spaces.nb201 import EDGES, OPS, NB201, NB201Supernet
from fastnas.spaces.nb201_ops import Cell

EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
PARAM_CHECK = "|none~0|+|skip_connect~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|none~2|"
ALL_NONE = ("none",) * 6
ALL_CONV3 = ("nor_conv_3x3",) * 6


@pytest.fixture(scope="module")
def space():
    return NB201()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny tensors: extra intra-op threads only contend on shared CPUs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- registry and construction


def test_registered_and_config_round_trip():
    assert "nb201" in list_spaces()
    s = create_space("nb201", C=8, N=2, num_classes=100, in_channels=1, resolution=16)
    assert isinstance(s, NB201)
    assert s.config() == {"C": 8, "N": 2, "num_classes": 100, "in_channels": 1, "resolution": 16,
                          "operators": "rlnas"}
    assert create_space("nb201", **s.config()).config() == s.config()
    old = create_space("nb201", operators="different")
    assert create_space("nb201", **old.config()).config()["operators"] == "different"
    assert create_space("nb201", C=None).config()["C"] == 16  # None keeps the default


@pytest.mark.parametrize("kwargs, text", [
    ({"C": 0}, "C=0"), ({"N": -1}, "N=-1"), ({"num_classes": 2.5}, "num_classes=2.5"),
    ({"resolution": 30}, "resolution=30"), ({"in_channels": True}, "in_channels=True"),
    ({"operators": "rlnaz"}, "operators='rlnaz'.*did you mean 'rlnas'"),
])
def test_bad_constructor_arguments(kwargs, text):
    with pytest.raises(ValueError, match=text):
        NB201(**kwargs)


# ---- text form and validation


def test_format_official_string(space):
    arch = ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect")
    assert space.format(arch) == EXAMPLE
    assert space.parse(EXAMPLE) == arch
    assert space.parse(f"  {EXAMPLE}\n") == arch


def test_parse_format_round_trip_all(space):
    archs = list(space.enumerate())
    assert len(archs) == space.size() == 15625 == len(set(archs))
    assert all(len(a) == 6 and set(a) <= set(OPS) for a in archs)
    for a in archs:
        assert space.parse(space.format(a)) == a
    assert list(space.enumerate()) == archs  # fixed order


@pytest.mark.parametrize("text, expected", [
    (EXAMPLE.replace("nor_conv_3x3~1", "nor_conv3x3~1"), "did you mean 'nor_conv_3x3'"),
    (EXAMPLE.replace("avg_pool_3x3", "max_pool_3x3"), "did you mean 'avg_pool_3x3'"),
    ("|nor_conv_3x3~0|+|none~0|none~1|", "expected 3 nodes"),
    (EXAMPLE + "+|none~0|", "expected 3 nodes"),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", "expected 2"),
    ("|none~0|+|none~0|none~1|none~2|+|none~0|none~1|none~2|", "expected 2"),
    ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "expected input index 0"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~3|", "expected input index 2"),
    ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "expected 'op~0'"),
    ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "not enclosed"),
    ("", "expected 3 nodes"),
    ("nor_conv_3x3", "expected 3 nodes"),
])
def test_parse_rejects_malformed(space, text, expected):
    with pytest.raises(ValueError) as info:
        space.parse(text)
    message = str(info.value)
    assert expected in message
    assert repr(text) in message  # quotes the offending text


def test_parse_rejects_non_string(space):
    with pytest.raises(ValueError, match="expected a string"):
        space.parse(("none",) * 6)


def test_validate(space):
    as_list = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3", "none"]
    out = space.validate(as_list)
    assert isinstance(out, tuple) and out == tuple(as_list)
    with pytest.raises(ValueError, match="6 op names"):
        space.validate(("none",) * 5)
    with pytest.raises(ValueError, match="edge 3<-2.*'conv_3x3'.*did you mean 'nor_conv_3x3'"):
        space.validate(("none",) * 5 + ("conv_3x3",))
    with pytest.raises(ValueError, match="use NB201.parse"):
        space.validate(EXAMPLE)
    with pytest.raises(ValueError, match="6 op names"):
        space.validate(None)
    with pytest.raises(ValueError, match="unknown op 3"):
        space.validate(("none",) * 5 + (3,))
    with pytest.raises(ValueError, match=r"unknown op \['none'\]"):
        space.validate(("none",) * 5 + (["none"],))


# ---- sampling and variation


def test_sample_uniform_and_reproducible(space):
    draws = [space.sample(random.Random(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(6000)]
    for a in archs[:50]:
        assert space.validate(a) == a
    for k in range(6):  # each op on each edge ~ 1/5: 1200 +- 4 sd (sd ~ 31)
        counts = collections.Counter(a[k] for a in archs)
        assert set(counts) == set(OPS)
        assert all(abs(c - 1200) < 130 for c in counts.values()), counts
    # edges are independent: all 25 pairs on edges (0, 5) occur
    assert len({(a[0], a[5]) for a in archs}) == 25


def test_mutate_never_introduces_none_by_default(space):
    """RLNAS's get_mutation draws np.random.randint(1, op_num): one of the 4 non-'none' ops, maybe the same."""
    assert space.operators == "rlnas"
    rng = random.Random(1)
    a = space.parse(PARAM_CHECK)  # 'none' on edges 0 and 5
    assert space.mutate(a, 0.0, rng) == a
    mutants = [space.mutate(a, 0.3, rng) for _ in range(4000)]
    assert all(space.validate(m) == m for m in mutants[:50])
    for k in range(6):
        counts = collections.Counter(m[k] for m in mutants)
        if a[k] != "none":
            assert "none" not in counts  # a mutated gene is never 'none'
            # unchanged: 0.7 + 0.3 / 4 = 0.775, each other op 0.075 (sd of a frequency <= 0.007)
            assert abs(counts[a[k]] / 4000 - 0.775) < 0.03, counts
            assert all(abs(c / 4000 - 0.075) < 0.02 for op, c in counts.items() if op != a[k]), counts
        else:  # a 'none' edge keeps 'none' unless mutated (0.7), then each non-'none' op 0.075
            assert abs(counts["none"] / 4000 - 0.7) < 0.03, counts
            assert set(counts) == set(OPS)
    # With prob 1 every edge is redrawn among the non-'none' ops (the same op included: 1/4).
    full = [space.mutate(ALL_CONV3, 1.0, rng) for _ in range(800)]
    assert not any("none" in m for m in full)
    same = sum(x == "nor_conv_3x3" for m in full for x in m) / (800 * 6)
    assert abs(same - 0.25) < 0.04
    assert collections.Counter(space.mutate(ALL_NONE, 1.0, rng)[0] for _ in range(800)).keys() == set(OPS) - {"none"}


def test_mutate_different_operators():
    space = NB201(operators="different")
    rng = random.Random(1)
    a = space.parse(EXAMPLE)
    assert space.mutate(a, 0.0, rng) == a
    for _ in range(20):
        b = space.mutate(a, 1.0, rng)
        assert all(x != y for x, y in zip(a, b)) and space.validate(b) == b
    changed = sum(x != y for _ in range(500) for x, y in zip(a, space.mutate(a, 0.3, rng)))
    assert abs(changed / 3000 - 0.3) < 0.05
    replacements = collections.Counter(space.mutate(ALL_NONE, 1.0, rng)[0] for _ in range(800))
    assert set(replacements) == set(OPS) - {"none"}
    assert all(abs(c - 200) < 60 for c in replacements.values())
    with pytest.raises(ValueError, match="prob=1.5"):
        space.mutate(a, 1.5, rng)
    with pytest.raises(ValueError, match="bogus"):
        space.mutate(("bogus",) * 6, 0.1, rng)


def test_crossover(space):
    rng = random.Random(2)
    a = ("nor_conv_3x3",) * 6
    b = ("avg_pool_3x3",) * 6
    from_a = 0
    for _ in range(500):
        c = space.crossover(a, b, rng)
        assert all(x in (y, z) for x, y, z in zip(c, a, b))
        from_a += sum(x == "nor_conv_3x3" for x in c)
    assert abs(from_a / 3000 - 0.5) < 0.05
    assert space.crossover(a, a, rng) == a
    with pytest.raises(ValueError):
        space.crossover(a, ("none",) * 4, rng)


# ---- canonical form


def test_canonical_examples(space):
    canon = space.canonical
    # Nothing reaches node 3: the zero cell.
    dead = space.parse("|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|none~0|none~1|none~2|")
    assert canon(dead) == ALL_NONE
    # Ops fed by a zero node contribute nothing (node 1 is zero here).
    zero_fed = space.parse("|none~0|+|none~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_3x3~1|none~2|")
    assert canon(zero_fed) == space.parse("|none~0|+|none~0|none~1|+|nor_conv_1x1~0|none~1|none~2|")
    # A skip chain equals the direct edge.
    chain = space.parse("|skip_connect~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|")
    direct = space.parse("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")
    assert canon(chain) == canon(direct) == direct
    # Swapping nodes 1 and 2 (node 2 not reading node 1) gives the same cell.
    left = space.parse("|nor_conv_3x3~0|+|avg_pool_3x3~0|none~1|+|none~0|nor_conv_1x1~1|skip_connect~2|")
    right = space.parse("|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|nor_conv_1x1~2|")
    assert canon(left) == canon(right)
    # Different ops or different wiring are different cells.
    assert canon(ALL_CONV3) != canon(("nor_conv_1x1",) + ALL_CONV3[1:])
    assert canon(direct) != canon(space.parse("|none~0|+|none~0|none~1|+|nor_conv_1x1~0|none~1|none~2|"))
    # conv(x) + conv(x) (two weight sets) is not conv(x)
    twice = space.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|")
    assert canon(twice) != direct
    with pytest.raises(ValueError, match="bogus"):
        canon(("bogus",) * 6)


def test_canonical_is_a_class_representative(space):
    archs = list(space.enumerate())
    canon = {a: space.canonical(a) for a in archs}
    reps = set(canon.values())
    assert 1 < len(reps) < len(archs)
    for a in archs:
        c = canon[a]
        assert canon[c] == c  # idempotent
        assert sum(op != "none" for op in c) <= sum(op != "none" for op in a)
    # Cells of parameter-free ops compute exactly the same function as their representative.
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 5)
    free = [a for a in archs if set(a) <= {"none", "skip_connect", "avg_pool_3x3"}]
    assert len(free) == 3 ** 6
    with torch.no_grad():
        out = {a: Cell(a, 2)(x) for a in free}
    for a in free:
        assert torch.allclose(out[a], out[canon[a]], rtol=1e-5, atol=1e-6), (a, canon[a])


# ---- parameters and FLOPs


def test_published_parameter_count(space):
    # NAS-Bench-201 reports 0.802426 M parameters for this cell (C=16, N=5, CIFAR-10).
    arch = space.parse(PARAM_CHECK)
    assert space.params_benchmark(arch) == space.params(arch, affine_cells=True) == 802426
    assert sum(p.numel() for p in space.build(arch).parameters()) == 802426


# Hand computation, C=16, N=5, CIFAR-10 (32x32, 10 classes); FLOPs as multiply-adds:
#   stem conv 3->16 3x3 @32x32: 432 w, 442,368 MACs; BN 32 params
#   residual 16->32 @16x16: conv_a 4,608 w (1,179,648 MACs) + BN 64; conv_b 9,216 w (2,359,296) + BN 64;
#       shortcut 1x1 512 w (131,072)                                   -> 14,464 params
#   residual 32->64 @8x8: conv_a 18,432 (1,179,648) + 128; conv_b 36,864 (2,359,296) + 128;
#       shortcut 2,048 (131,072)                                       -> 57,600 params
#   final BN 128; classifier 64*10 + 10 = 650 params, 650 FLOPs
#   all-none cell: 464 + 14,464 + 57,600 + 128 + 650 = 73,306 params;
#       442,368 + 2*(1,179,648 + 2,359,296 + 131,072) + 650 = 7,783,050 FLOPs
#   each nor_conv_3x3 edge adds, per cell, 9c^2 + 2c params and 9 c^2 h^2 = 2,359,296 MACs
#       (c, h = 16, 32 / 32, 16 / 64, 8): 5*(2,336 + 9,280 + 36,992) = 243,040 params,
#       15 * 2,359,296 = 35,389,440 MACs; six edges: 1,531,546 params, 220,119,690 FLOPs.
# NAS-Bench-201 publishes exactly these ranges: params [0.073306, 1.531546] M and FLOPs
# [7.78305, 220.11969] M on CIFAR-10; CIFAR-100 [0.079156, 1.537396] / [7.7889, 220.12554];
# ImageNet16-120 [0.080456, 1.538696] / [1.9534, 55.03756].
@pytest.mark.parametrize("classes, resolution, params, flops", [
    (10, 32, (73306, 1531546), (7.78305, 220.11969)),
    (100, 32, (79156, 1537396), (7.7889, 220.12554)),
    (120, 16, (80456, 1538696), (1.9534, 55.03756)),
])
def test_published_ranges(classes, resolution, params, flops):
    space = NB201(num_classes=classes, resolution=resolution)
    assert space.params_benchmark(ALL_NONE) == params[0]
    assert space.params_benchmark(ALL_CONV3) == params[1]
    assert space.flops(ALL_NONE) == pytest.approx(flops[0], abs=1e-9)
    assert space.flops(ALL_CONV3) == pytest.approx(flops[1], abs=1e-9)
    # the extremes of the whole space
    no_conv = ("skip_connect", "avg_pool_3x3", "none", "avg_pool_3x3", "skip_connect", "none")
    assert space.flops(no_conv) == pytest.approx(flops[0], abs=1e-9)
    assert space.params_benchmark(no_conv) == params[0]


def test_hand_computed_numbers(space):
    assert space.params_benchmark(ALL_NONE) == space.params(ALL_NONE) == 464 + 14464 + 57600 + 128 + 650
    assert space.flops(ALL_NONE) * 1e6 == pytest.approx(442368 + 2 * (1179648 + 2359296 + 131072) + 650)
    assert space.params_benchmark(ALL_CONV3) - space.params_benchmark(ALL_NONE) == 6 * 243040
    # the searched network's cell BNs are not affine: 2c fewer per conv edge and cell
    assert space.params(ALL_CONV3) - space.params(ALL_NONE) == 6 * (243040 - 5 * 2 * (16 + 32 + 64))
    assert (space.flops(ALL_CONV3) - space.flops(ALL_NONE)) * 1e6 == pytest.approx(6 * 35389440)
    # "full" convention on the all-none cell adds BN (2/elem), ReLU (1/input elem), pooling and GAP:
    # stem BN 2*16*1024; residual 1: ReLU 16*1024 + BN 2*32*256 + ReLU 32*256 + BN 2*32*256 + pool 4*16*256;
    # residual 2: ReLU 32*256 + BN 2*64*64 + ReLU 64*64 + BN 2*64*64 + pool 4*32*64;
    # final BN 2*64*64, ReLU 64*64, GAP 64*64.
    extra = (32768 + 16384 + 16384 + 8192 + 16384 + 16384 + 8192 + 8192 + 4096 + 8192 + 8192
             + 8192 + 4096 + 4096)
    assert (space.flops(ALL_NONE, convention="full") - space.flops(ALL_NONE)) * 1e6 == pytest.approx(extra)
    with pytest.raises(ValueError, match="convention='fvcore'"):
        space.flops(ALL_NONE, convention="fvcore")


@pytest.mark.parametrize("text", [PARAM_CHECK, EXAMPLE, "|avg_pool_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_1x1~2|"])
@pytest.mark.parametrize("config", [{}, {"C": 8, "N": 2, "num_classes": 120, "in_channels": 1, "resolution": 16}])
def test_params_equal_built_module(text, config):
    space = NB201(**config)
    arch = space.parse(text)
    assert space.params_benchmark(arch) == sum(p.numel() for p in space.build(arch).parameters())
    net = space.build(arch, affine_cells=False)
    assert space.params(arch) == space.params(arch, affine_cells=False) == sum(p.numel() for p in net.parameters())


def _hook_flops(model: nn.Module, x: torch.Tensor, full: bool) -> int:
    """FLOPs of one image counted by forward hooks."""
    total = [0]

    def conv(m, inp, out):
        total[0] += (m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups * m.out_channels
                     * out.shape[2] * out.shape[3])
        assert m.bias is None

    def linear(m, inp, out):
        total[0] += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)

    def bn(m, inp, out):
        total[0] += 2 * out[0].numel()

    def per_input(m, inp, out):
        total[0] += inp[0][0].numel()

    def pool(m, inp, out):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        total[0] += k * k * out[0].numel()

    kinds = {nn.Conv2d: conv, nn.Linear: linear}
    if full:
        kinds.update({nn.BatchNorm2d: bn, nn.ReLU: per_input, nn.AvgPool2d: pool, nn.AdaptiveAvgPool2d: per_input})
    hooks = [m.register_forward_hook(kinds[type(m)]) for m in model.modules() if type(m) in kinds]
    with torch.no_grad():
        model.eval()(x[:1])
    for h in hooks:
        h.remove()
    return total[0]


@pytest.mark.parametrize("convention", ["nb201", "full"])
@pytest.mark.parametrize("config", [dict(C=4, N=2, num_classes=7, in_channels=2, resolution=16),
                                    dict(C=6, N=1, num_classes=120, in_channels=1, resolution=8)])
def test_flops_match_forward_hooks(convention, config):
    space = NB201(**config)
    x = torch.randn(1, space.in_channels, space.resolution, space.resolution)
    for text in [PARAM_CHECK, EXAMPLE, "|avg_pool_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|"]:
        arch = space.parse(text)
        counted = _hook_flops(space.build(arch), x, full=convention == "full")
        assert space.flops(arch, convention=convention) * 1e6 == pytest.approx(counted)
    assert _hook_flops(space.build(ALL_NONE), x, False) == pytest.approx(space.flops(ALL_NONE) * 1e6)


# ---- networks and the supernet


def _trained_supernet(space: NB201, seed: int = 0, **kwargs) -> NB201Supernet:
    """A supernet with random weights and non-trivial BN statistics (a few train-mode passes)."""
    torch.manual_seed(seed)
    net = space.supernet(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        rng = random.Random(seed)
        net.train()
        for _ in range(4):
            net(torch.randn(4, space.in_channels, 8, 8), space.sample(rng))
    return net.eval()


SMALL = {"C": 4, "N": 1, "num_classes": 5, "resolution": 8}
ARCHS = [
    PARAM_CHECK, EXAMPLE, "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    "|nor_conv_1x1~0|+|none~0|none~1|+|none~0|none~1|avg_pool_3x3~2|",  # node 2 zero, op after it runs
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|",
]


def test_standalone_forward_shapes():
    space = NB201(**SMALL)
    net = space.build(space.parse(EXAMPLE))
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert net(torch.randn(1, 3, 16, 12)).shape == (1, 5)  # any size divisible by 4
    with pytest.raises(ValueError, match=r"shape \(2, 1, 8, 8\); expected \(batch, 3, height, width\)"):
        net(torch.randn(2, 1, 8, 8))


def test_all_none_cell_is_zero():
    cell = Cell(ALL_NONE, 4)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(cell(x), torch.zeros_like(x))
    sn = NB201(**SMALL).supernet()
    out = sn.cells[0](x, ALL_NONE)
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("text", ARCHS)
def test_extract_matches_supernet(text):
    space = NB201(**SMALL)
    sn = _trained_supernet(space)
    arch = space.parse(text)
    x = torch.randn(3, 3, 8, 8)
    net = sn.extract(arch)
    assert isinstance(net, type(space.build(arch)))
    assert not net.training
    with torch.no_grad():
        expected = sn(x, arch)
        got = net(x)
    assert (got - expected).abs().max().item() < 1e-5
    # the statistics were copied, not left at their defaults
    assert not torch.allclose(net.stem[1].running_var, torch.ones(4))
    # train mode (batch statistics) agrees too, and the copy is independent of the supernet
    sn.train(); net.train()
    with torch.no_grad():
        assert (net(x) - sn(x, arch)).abs().max().item() < 1e-5
        net.classifier.weight.add_(1.0)
    assert not torch.equal(net.classifier.weight, sn.classifier.weight)


def test_extract_affine_supernet():
    space = NB201(**SMALL)
    sn = _trained_supernet(space, affine_cells=True)
    arch = space.parse(EXAMPLE)
    net = sn.extract(arch)
    assert sum(p.numel() for p in net.parameters()) == space.params(arch, affine_cells=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (net(x) - sn(x, arch)).abs().max().item() < 1e-5


def test_supernet_cell_bns_non_affine():
    sn = NB201(**SMALL).supernet()
    conv_bn = sn.cells[0].edges[0]["nor_conv_3x3"][2]
    assert isinstance(conv_bn, nn.BatchNorm2d) and not conv_bn.affine and conv_bn.track_running_stats
    assert sn.stem[1].affine and sn.lastact[0].affine and sn.cells[1].conv_a[2].affine


@pytest.mark.parametrize("text", ARCHS)
def test_path_parameters(text):
    space = NB201(**SMALL)
    sn = space.supernet()
    arch = space.parse(text)
    path = sn.path_parameters(arch)
    order = [n for n, _ in sn.named_parameters()]
    assert path == [n for n in order if n in set(path)]  # named_parameters() order
    # one-to-one with the extracted network's parameters, same shapes
    extracted = list(sn.extract(arch).named_parameters())
    params = dict(sn.named_parameters())
    assert len(path) == len(extracted)
    for name, (ename, p) in zip(path, extracted):
        assert params[name].shape == p.shape
        parts = ename.split(".")
        if len(parts) > 4 and parts[2] == "edges":  # cells.{i}.edges.{k}.<rest> <- cells.{i}.edges.{k}.{op}.<rest>
            parts.insert(4, arch[int(parts[3])])
        assert name == ".".join(parts)
    # a backward pass reaches only path parameters; all of them when every chosen op has a non-zero
    # input and reaches the output (ops on dead edges run but get no gradient)
    sn.train()
    sn(torch.randn(2, 3, 8, 8), arch).square().sum().backward()
    reached = [n for n, p in sn.named_parameters() if p.grad is not None]
    assert set(reached) <= set(path)
    if text in (EXAMPLE, ARCHS[4]):
        assert reached == path
    else:
        assert len(reached) < len(path)
    for k, op in enumerate(arch):
        edge = f"cells.0.edges.{k}.nor_conv_3x3.1.weight"
        assert (edge in path) == (op == "nor_conv_3x3")


def test_path_parameters_count():
    space = NB201(**SMALL)
    sn = space.supernet()
    # fixed parts: stem 2 + BN 2... conv 1 + BN 2 = 3; two residual blocks 2*(3+3+1) = 14; final BN 2;
    # classifier 2 -> 21; each conv op on each of the 3 cells: 1 weight
    assert len(sn.path_parameters(ALL_NONE)) == 21
    assert len(sn.path_parameters(ALL_CONV3)) == 21 + 6 * 3


@pytest.mark.parametrize("text", [PARAM_CHECK, ARCHS[3]])
def test_export_source(text):
    space = NB201(**SMALL)
    sn = _trained_supernet(space, seed=3)
    arch = space.parse(text)
    source = sn.export_source(arch, class_name="MyNet")
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["from __future__ import annotations", "import torch", "from torch import nn"]
    assert "fastnas" not in "\n".join(imports) and space.format(arch) in source
    namespace: dict = {}
    exec(compile(source, "<exported>", "exec"), namespace)
    model = namespace["MyNet"]()
    extracted = sn.extract(arch)
    state = extracted.state_dict()
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (model.eval()(x) - sn(x, arch)).abs().max().item() < 1e-5


def test_export_source_bad_class_name():
    space = NB201(**SMALL)
    sn = space.supernet()
    for bad in ["my net", "class", "Cell", ""]:
        with pytest.raises(ValueError, match=repr(bad)):
            sn.export_source(ALL_CONV3, class_name=bad)


def test_supernet_rejects_bad_input():
    space = NB201(**SMALL)
    sn = space.supernet()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\); expected \(batch, 3, height, width\)"):
        sn(x[0], ALL_CONV3)
    with pytest.raises(ValueError, match=r"shape \(2, 4, 8, 8\)"):
        sn(torch.randn(2, 4, 8, 8), ALL_CONV3)
    darts_genotype = ((("sep_conv_3x3", 0), ("sep_conv_3x3", 1)), (("skip_connect", 0), ("dil_conv_3x3", 2)))
    with pytest.raises(ValueError, match="expected a tuple of 6 op names"):
        sn(x, darts_genotype)
    with pytest.raises(ValueError, match="sep_conv_3x3"):
        sn(x, ("sep_conv_3x3",) * 6)
    with pytest.raises(ValueError, match="use NB201.parse"):
        sn(x, EXAMPLE)
    assert sn(x, list(ALL_CONV3)).shape == (2, 5)  # a list is accepted


def test_recalibrate_keeps_extract_equal():
    space = NB201(**SMALL)
    sn = _trained_supernet(space, seed=5)
    arch = space.parse(EXAMPLE)
    batches = [torch.randn(4, 3, 8, 8) + 1.0 for _ in range(3)]
    before = sn.stem[1].running_mean.clone()
    unused = sn.cells[0].edges[0]["nor_conv_1x1"][2].running_mean.clone()
    assert sn.recalibrate(arch, batches) == 3
    assert not torch.allclose(before, sn.stem[1].running_mean)
    assert torch.equal(unused, sn.cells[0].edges[0]["nor_conv_1x1"][2].running_mean)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (sn.extract(arch)(x) - sn(x, arch)).abs().max().item() < 1e-5


def test_edges_and_ops_constants():
    assert OPS == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
    assert EDGES == tuple((i, j) for i in range(1, 4) for j in range(i))
    assert list(itertools.islice(NB201().enumerate(), 2)) == [ALL_NONE, ALL_NONE[:5] + ("skip_connect",)]


def test_op_semantics():
    from fastnas.spaces.nb201_ops import make_op
    ones = torch.ones(1, 2, 4, 4)
    # padding is excluded from the average: a constant stays constant, also at the borders
    assert torch.equal(make_op("avg_pool_3x3", 2)(ones), ones)
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(make_op("skip_connect", 2)(x), x)
    for name, k in (("nor_conv_1x1", 1), ("nor_conv_3x3", 3)):
        relu, conv, bn = make_op(name, 2)
        assert isinstance(relu, nn.ReLU) and isinstance(bn, nn.BatchNorm2d) and bn.affine
        assert conv.kernel_size == (k, k) and conv.bias is None and conv.stride == (1, 1)
        assert make_op(name, 2)(x).shape == x.shape
        assert not make_op(name, 2, affine=False)[2].affine
    with pytest.raises(ValueError, match="'max_pool_3x3'"):
        make_op("max_pool_3x3", 2)


# Dead edges: a conv from a node fed only by `none` edges, and a conv into a node that reaches no output.
DEAD = ["|none~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|",
        "|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|nor_conv_3x3~0|none~1|none~2|"]


@pytest.mark.parametrize("text", [PARAM_CHECK, EXAMPLE, *DEAD])
@pytest.mark.parametrize("config", [{"C": 8, "N": 2, "num_classes": 7, "in_channels": 1, "resolution": 16},
                                    {"C": 6, "N": 1}])
def test_params_count_the_searched_and_exported_network(text, config):
    # the count a search reports is the network `fastnas export` writes: the supernet's extracted path
    space = NB201(**config)
    sn = space.supernet()
    for arch in (space.parse(text), space.canonical(space.parse(text))):
        exported = sum(p.numel() for p in sn.extract(arch).parameters())
        assert space.params(arch) == exported
        assert space.params_benchmark(arch) == sum(p.numel() for p in space.build(arch).parameters()) >= exported
    arch = space.parse(text)
    if text in DEAD:  # the representative drops the dead convolutions
        assert space.params(space.canonical(arch)) < space.params(arch)
