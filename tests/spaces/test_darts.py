"""Tests of the DARTS search space: genotype text form, search operators, sizes, supernet, export."""

from __future__ import annotations

import random

import collections

import numpy as np
import pytest
import torch
from torch import nn

from fastnas.spaces import create_space, list_spaces
from fastnas.spaces.darts import DARTS, DARTS_V1, DARTS_V2, OPS, PRIMITIVES, DARTSSupernet, Genotype
from fastnas.spaces.darts_ops import FactorizedReduce, Identity, NetworkCIFAR, Zero, drop_path, make_op

# DARTS's published genotype text (genotypes.py), not in canonical edge order.
DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


@pytest.fixture(scope="module")
def space() -> DARTS:
    return DARTS(C=4, layers=5, num_classes=5, resolution=16)


@pytest.fixture(scope="module")
def trained_supernet(space: DARTS) -> DARTSSupernet:
    """A small supernet with non-trivial weights and BN running statistics."""
    torch.manual_seed(0)
    net = space.supernet()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rng = random.Random(0)
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(2, 3, 16, 16), space.sample(rng))
    net.eval()
    return net


def _conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(mod, _inp, out):
        nonlocal total
        per_image = out.numel() // out.shape[0]
        if isinstance(mod, nn.Conv2d):
            total += per_image * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            total += per_image * mod.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return total


# ----------------------------------------------------------------------------------------------------
# Registry and constructor
# ----------------------------------------------------------------------------------------------------

def test_registry_and_config_round_trip():
    assert "darts" in list_spaces()
    s = create_space("darts", C=8, layers=None)
    assert isinstance(s, DARTS) and s.C == 8 and s.layers == 8
    again = create_space("darts", **s.config())
    assert again.config() == s.config()
    assert DARTS().config() == dict(C=16, layers=8, num_classes=10, in_channels=3, resolution=32, steps=4,
                                    multiplier=4, stem_multiplier=3, affine=True, operators="genas")
    old = create_space("darts", affine=False, operators="pairs")
    assert create_space("darts", **old.config()).config() == old.config()
    assert (old.affine, old.operators) == (False, "pairs")


@pytest.mark.parametrize("kwargs, match", [
    (dict(C=0), "C=0"), (dict(layers=-1), "layers=-1"), (dict(steps=2, multiplier=3), "multiplier=3"),
    (dict(num_classes=1.5), "num_classes=1.5"), (dict(affine=1), "affine=1"),
    (dict(operators="genes"), "operators='genes'.*did you mean 'genas'"),
])
def test_constructor_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DARTS(**kwargs)


def test_enumerate_and_size():
    s = DARTS()
    assert s.size() is None
    with pytest.raises(NotImplementedError):
        s.enumerate()


# ----------------------------------------------------------------------------------------------------
# Text form
# ----------------------------------------------------------------------------------------------------

def test_parse_published_genotype_and_canonical_form():
    s = DARTS()
    g = s.parse(DARTS_V2_TEXT)
    assert g == DARTS_V2 and hash(g) == hash(DARTS_V2)
    # Node 2 of the normal cell is given as (sep_conv_3x3, 1), (skip_connect, 0): canonical sorts by input.
    assert g.normal[4:6] == (("skip_connect", 0), ("sep_conv_3x3", 1))
    assert isinstance(g.normal, tuple) and isinstance(g.normal_concat, tuple)
    assert s.format(g) == (
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
        "('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
        "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 1), "
        "('skip_connect', 2), ('max_pool_3x3', 0), ('skip_connect', 2), ('max_pool_3x3', 1), "
        "('skip_connect', 2)], reduce_concat=[2, 3, 4, 5])"
    )
    assert s.parse(s.format(g)) == g


def test_parse_accepts_range_whitespace_and_positional():
    s = DARTS()
    text = DARTS_V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)").replace(", ", ",\n    ")
    assert s.parse("  " + text + "\n") == DARTS_V2
    positional = s.format(DARTS_V1).replace("normal=", "").replace("normal_concat=", "") \
        .replace("reduce=", "").replace("reduce_concat=", "")
    assert s.parse(positional) == DARTS_V1


def test_format_parse_round_trip_on_samples():
    s = DARTS()
    rng = random.Random(1)
    for _ in range(50):
        g = s.sample(rng)
        assert s.parse(s.format(g)) == g
        assert s.validate(s.format(g)) == g


def test_validate_canonicalizes_edge_order_and_lists():
    s = DARTS()
    swapped = Genotype(*(list(list(e) for e in f) if i % 2 == 0 else list(f) for i, f in enumerate(DARTS_V2)))
    normal = list(swapped.normal)
    normal[0], normal[1] = normal[1], normal[0]
    g = s.validate(swapped._replace(normal=normal))
    assert g == DARTS_V2 and hash(g) == hash(DARTS_V2)
    assert s.validate(tuple(DARTS_V2)) == DARTS_V2


@pytest.mark.parametrize("text, match", [
    (DARTS_V2_TEXT.replace("'dil_conv_3x3'", "'dil_conv_3x4'", 1), r"unknown op 'dil_conv_3x4'.*did you mean 'dil_conv_3x3'"),
    (DARTS_V2_TEXT.replace("'sep_conv_3x3', 0", "'none', 0", 1), r"'none' is not allowed"),
    (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), r"node 3 \(0-based\) takes inputs 0..4, got 5"),
    (DARTS_V2_TEXT.replace("('skip_connect', 2), ('max_pool_3x3', 1)", "('skip_connect', 3), ('max_pool_3x3', 1)", 1),
     r"node 1 \(0-based\) takes inputs 0..2, got 3"),
    (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', -1)"), r"takes inputs 0..4, got -1"),
    (DARTS_V2_TEXT.replace(", ('dil_conv_3x3', 2)", ""), r"expected 8 \(op, input\) edges.*got 7 edges"),
    (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 2), ('skip_connect', 1)"), r"got 9 edges"),
    (DARTS_V2_TEXT.replace("('sep_conv_3x3', 1)", "('sep_conv_3x3', 0)", 1), r"node 0 .* same input 0"),
    (DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 4]"), r"normal_concat=.*expected \[2, 3, 4, 5\]"),
    (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', '2')"), r"expected an \(op, input\) pair"),
    (DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', True)"), r"expected an \(op, input\) pair"),
    (DARTS_V2_TEXT[:-1], r"malformed"),
    (DARTS_V2_TEXT.replace("Genotype(", "Genome("), r"malformed: expected 'Genotype\("),
    (DARTS_V2_TEXT.replace(", reduce_concat=[2, 3, 4, 5]", ""), r"missing field\(s\) \['reduce_concat'\]"),
    (DARTS_V2_TEXT.replace("reduce_concat=", "reduce_cat="), r"unknown field 'reduce_cat'"),
    (DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=list(range(2, 6))"), r"genotype"),
    ("", r"malformed"),
    ("sep_conv_3x3", r"malformed"),
])
def test_parse_rejects_bad_text_quoting_it(text, match):
    with pytest.raises(ValueError, match=match) as info:
        DARTS().parse(text)
    assert repr(text)[:60] in str(info.value)


def test_parse_never_evaluates_code(tmp_path):
    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    for text in (payload, DARTS_V2_TEXT.replace("[2, 3, 4, 5]", payload, 1),
                 f"Genotype(normal={payload}, normal_concat=[2, 3, 4, 5], reduce=[], reduce_concat=[2, 3, 4, 5])"):
        with pytest.raises(ValueError):
            DARTS().parse(text)
    assert not marker.exists()


def test_validate_rejects_non_genotypes():
    s = DARTS()
    for bad in (None, 3, ("a", "b"), {"normal": []}):
        with pytest.raises(ValueError, match="expected a Genotype"):
            s.validate(bad)
    with pytest.raises(ValueError, match="expected a string"):
        s.parse(b"Genotype()")


# ----------------------------------------------------------------------------------------------------
# Search operators
# ----------------------------------------------------------------------------------------------------

def _check_valid(g: Genotype, steps: int = 4) -> None:
    for cell in (g.normal, g.reduce):
        assert len(cell) == 2 * steps
        for k in range(steps):
            (op_a, j_a), (op_b, j_b) = cell[2 * k], cell[2 * k + 1]
            assert op_a in OPS and op_b in OPS
            assert 0 <= j_a < j_b <= k + 1


def test_sample_is_valid_deterministic_and_covers_choices():
    s = DARTS()
    rng = random.Random(0)
    samples = [s.sample(rng) for _ in range(300)]
    for g in samples:
        _check_valid(g)
        assert s.validate(g) == g
    rng2 = random.Random(0)
    assert samples[:5] == [s.sample(rng2) for _ in range(5)]
    assert {op for g in samples for op, _ in g.normal + g.reduce} == set(OPS)
    assert {j for g in samples for _, j in g.normal[6:]} == {0, 1, 2, 3, 4}
    assert len(set(samples)) == len(samples)


@pytest.mark.parametrize("operators", ["genas", "pairs"])
def test_mutate(operators):
    s = DARTS(operators=operators)
    rng = random.Random(2)
    g = s.sample(rng)
    assert s.mutate(g, 0.0, rng) == g
    changed = 0
    for _ in range(100):
        m = s.mutate(g, 1.0, rng)
        _check_valid(m)
        changed += m != g
    assert changed >= 95
    # With a small probability only a few edges change.
    diffs = [sum(a != b for a, b in zip(s.mutate(g, 0.1, rng).normal, g.normal)) for _ in range(200)]
    assert 0 < sum(diffs) / len(diffs) < 3
    for bad in (-0.1, 1.5, "0.1", True):
        with pytest.raises(ValueError, match="prob="):
            s.mutate(g, bad, rng)


# GeNAS's evolution on the 14-edge encoding (op index per supernet edge, 0 = 'none'), written after
# evolution_search/search.py (get_mutation, get_crossover) and utils.check_cand, with numpy's generator:
# an independent implementation to compare distributions with.

def _encode(s: DARTS, cell) -> list:
    ops = [0] * 14
    for e, (op, j) in enumerate(cell):
        ops[(e // 2) * (e // 2 + 3) // 2 + j] = PRIMITIVES.index(op)
    return ops


def _check_cand(cand: list, rs: np.random.RandomState) -> list:
    offset = 0
    for j in range(4):
        idx = list(range(offset, offset + j + 2))
        nones = [i for i in idx if cand[i] == 0]
        if len(nones) < j:
            live = [i for i in idx if cand[i] != 0]
            for i in rs.choice(live, size=j - len(nones), replace=False):
                cand[i] = 0
        elif len(nones) > j:
            for i in rs.choice(nones, size=len(nones) - j, replace=False):
                cand[i] = rs.randint(7) + 1
        offset += j + 2
    return cand


def _genas_mutation(s, g, prob, rs):
    normal = _encode(s, g.normal)
    for i in range(14):
        if rs.random_sample() < prob:
            normal[i] = rs.randint(0, 8)
    return _check_cand(normal, rs) + _check_cand(_encode(s, g.reduce), rs)


def _genas_crossover(s, a, b, rs):
    genes = [x if rs.randint(2) else y for x, y in zip(_encode(s, a.normal) + _encode(s, a.reduce),
                                                       _encode(s, b.normal) + _encode(s, b.reduce))]
    return _check_cand(genes[:14], rs) + _check_cand(genes[14:], rs)


def _marginals(genes_list) -> collections.Counter:
    counts = collections.Counter((i, op) for genes in genes_list for i, op in enumerate(genes))
    return collections.Counter({k: v / len(genes_list) for k, v in counts.items()})


def _max_gap(p: collections.Counter, q: collections.Counter) -> float:
    return max(abs(p[k] - q[k]) for k in set(p) | set(q))


def test_genas_mutation_keeps_the_reduction_cell_and_follows_the_reference():
    s = DARTS()
    rng = random.Random(11)
    g = DARTS_V2
    mutants = [s.mutate(g, 0.3, rng) for _ in range(3000)]
    for m in mutants[:200]:
        _check_valid(m)
    assert all(m.reduce == g.reduce for m in mutants)
    assert sum(m.normal != g.normal for m in mutants) > 2000
    # Per-edge op frequencies of the normal cell equal those of GeNAS's algorithm (sd of a gap ~0.01).
    rs = np.random.RandomState(0)
    ours = _marginals([_encode(s, m.normal) + _encode(s, m.reduce) for m in mutants])
    ref = _marginals([_genas_mutation(s, g, 0.3, rs) for _ in range(3000)])
    assert _max_gap(ours, ref) < 0.04
    # The earlier operators differ from the reference by far more (and change the reduction cell).
    old = DARTS(operators="pairs")
    pairs = [old.mutate(g, 0.3, rng) for _ in range(3000)]
    assert _max_gap(_marginals([_encode(s, m.normal) + _encode(s, m.reduce) for m in pairs]), ref) > 0.1
    assert any(m.reduce != g.reduce for m in pairs)
    # A node's repair can drop an input: a mutated 'none' edge into node 3 makes three live inputs.
    assert any({j for _, j in m.normal[6:]} - {j for _, j in g.normal[6:]} for m in mutants)


def test_genas_crossover_mixes_edges_and_follows_the_reference():
    s = DARTS()
    rng = random.Random(12)
    a, b = DARTS_V1, DARTS_V2
    assert s.crossover(a, a, rng) == a
    children = [s.crossover(a, b, rng) for _ in range(3000)]
    for c in children[:200]:
        _check_valid(c)
    rs = np.random.RandomState(1)
    ours = _marginals([_encode(s, c.normal) + _encode(s, c.reduce) for c in children])
    ref = _marginals([_genas_crossover(s, a, b, rs) for _ in range(3000)])
    assert _max_gap(ours, ref) < 0.04
    # Node 0 of both normal cells takes inputs 0 and 1: edge-wise crossover mixes the parents' edges.
    x = DARTS_V1._replace(normal=(("max_pool_3x3", 0), ("avg_pool_3x3", 1)) + DARTS_V1.normal[2:])
    y = DARTS_V1._replace(normal=(("sep_conv_5x5", 0), ("dil_conv_5x5", 1)) + DARTS_V1.normal[2:])
    firsts = collections.Counter(s.crossover(x, y, rng).normal[:2] for _ in range(400))
    assert set(firsts) == {(p, q) for p in (x.normal[0], y.normal[0]) for q in (x.normal[1], y.normal[1])}


def test_pairs_crossover_takes_whole_nodes_from_parents():
    s = DARTS(operators="pairs")
    rng = random.Random(3)
    a, b = s.sample(rng), s.sample(rng)
    assert s.crossover(a, a, rng) == a
    seen = set()
    for _ in range(50):
        c = s.crossover(a, b, rng)
        _check_valid(c)
        for field in ("normal", "reduce"):
            for k in range(4):
                node = getattr(c, field)[2 * k: 2 * k + 2]
                assert node in (getattr(a, field)[2 * k: 2 * k + 2], getattr(b, field)[2 * k: 2 * k + 2])
        seen.add(c)
    assert len(seen) > 5


# ----------------------------------------------------------------------------------------------------
# Sizes and costs
# ----------------------------------------------------------------------------------------------------

def test_darts_v2_has_the_published_parameter_count():
    s = DARTS()
    # DARTS reports "param size = 3.349342MB" for DARTS_V2 (C=36, 20 cells, CIFAR-10); paper: 3.3M.
    assert s.params_benchmark(DARTS_V2) == s.params(DARTS_V2, C=36, layers=20, network="evaluation") == 3_349_342
    assert DARTS(C=4, layers=5, num_classes=10).params_benchmark(DARTS_V2) == 3_349_342  # whatever the size
    with torch.device("meta"):
        net = s.build(DARTS_V2, C=36, layers=20, auxiliary=True)
    assert sum(p.numel() for n, p in net.named_parameters() if not n.startswith("auxiliary_head")) == 3_349_342
    assert DARTS(C=36, layers=20).params(DARTS_V2, network="evaluation") == 3_349_342
    assert s.params(DARTS_V2) == s.params(DARTS_V2, C=16, layers=8) < 3_349_342


def test_params_and_flops_match_built_networks():
    s = DARTS(num_classes=7, resolution=16)
    rng = random.Random(4)
    for g in [DARTS_V1, DARTS_V2] + [s.sample(rng) for _ in range(4)]:
        net = s.build(g, C=4, layers=5)
        assert s.params(g, C=4, layers=5, network="evaluation") == sum(p.numel() for p in net.parameters())
        macs = _conv_linear_macs(net, torch.randn(1, 3, 16, 16))
        assert s.flops(g, C=4, layers=5) == pytest.approx(macs / 1e6, rel=0, abs=1e-9)
        assert s.flops(g, C=4, layers=5, resolution=32) > s.flops(g, C=4, layers=5)
    # The full-size DARTS_V2 network at 32x32: 528.36M multiply-adds (conv + linear).
    assert DARTS().flops(DARTS_V2, C=36, layers=20) == pytest.approx(528.35904)
    assert DARTS(C=36, layers=20).flops(DARTS_V2) == pytest.approx(528.35904)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(C=4, layers=5, num_classes=7, resolution=16), dict(C=6, layers=3, in_channels=1, resolution=8),
    dict(C=4, layers=4, steps=3, multiplier=2, num_classes=100, resolution=16),
])
def test_params_and_flops_count_what_build_builds(kwargs):
    """Without keywords: the space's own C and layers (what the retraining builds)."""
    s = DARTS(**kwargs)
    rng = random.Random(9)
    archs = [s.sample(rng) for _ in range(3)] + ([DARTS_V1, DARTS_V2] if s.steps == 4 else [])
    for g in archs:
        if kwargs:
            net = s.build(g)
        else:
            with torch.device("meta"):
                net = s.build(g)
        assert len(net.cells) == s.layers and net.cells[0].preprocess1[1].out_channels == s.C
        assert s.params(g, network="evaluation") == sum(p.numel() for p in net.parameters())
        if kwargs:
            x = torch.randn(1, s.in_channels, s.resolution, s.resolution)
            assert s.flops(g) == pytest.approx(_conv_linear_macs(net, x) / 1e6, rel=0, abs=1e-9)


# ----------------------------------------------------------------------------------------------------
# Standalone network
# ----------------------------------------------------------------------------------------------------

def test_build_outputs_auxiliary_and_drop_path():
    s = DARTS(num_classes=5)
    torch.manual_seed(0)
    net = s.build(DARTS_V2, C=4, layers=5, auxiliary=True, drop_path_prob=0.3)
    assert isinstance(net, NetworkCIFAR)
    x = torch.randn(2, 3, 32, 32)
    net.train()
    logits, aux = net(x)
    assert logits.shape == (2, 5) and aux.shape == (2, 5)
    (logits.sum() + 0.4 * aux.sum()).backward()
    assert net.auxiliary_head.classifier.weight.grad is not None
    assert s.params(DARTS_V2, C=4, layers=5, network="evaluation") < sum(p.numel() for p in net.parameters())
    # Drop-path is random in train mode (and off in eval mode, checked below).
    with torch.no_grad():
        assert not torch.equal(net(x)[0], net(x)[0])
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
        assert torch.equal(out, net(x))
    # Reduction cells at layers // 3 and 2 * layers // 3 with doubled channels.
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]
    with pytest.raises(ValueError, match="drop_path_prob"):
        s.build(DARTS_V2, drop_path_prob=1.0)


def test_op_definitions():
    x = torch.randn(2, 6, 8, 8)
    for stride in (1, 2):
        for name in ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                     "dil_conv_3x3", "dil_conv_5x5"):
            assert make_op(name, 6, stride, affine=True)(x).shape == (2, 6, 8 // stride, 8 // stride)
    # Average pooling excludes the padding: a constant image stays constant at the borders.
    ones = torch.ones(1, 6, 8, 8)
    assert torch.equal(make_op("avg_pool_3x3", 6, 1, affine=True)(ones), ones)
    assert isinstance(make_op("skip_connect", 6, 1, affine=True), Identity)
    assert isinstance(make_op("skip_connect", 6, 2, affine=True), FactorizedReduce)
    assert isinstance(make_op("none", 6, 2, affine=True), Zero)
    assert not make_op("none", 6, 1, affine=True)(x).any()
    # Search convention: BN(affine=False) after pooling; non-affine BN elsewhere.
    pool = make_op("max_pool_3x3", 6, 1, affine=False, pool_bn=True)
    assert isinstance(pool[1], nn.BatchNorm2d) and not pool[1].affine
    # sep_conv: two (ReLU, depthwise, pointwise, BN) blocks, stride on the first depthwise conv only.
    sep = make_op("sep_conv_5x5", 6, 2, affine=True)
    convs = [m for m in sep if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.groups, c.padding) for c in convs] == [
        ((5, 5), (2, 2), 6, (2, 2)), ((1, 1), (1, 1), 1, (0, 0)), ((5, 5), (1, 1), 6, (2, 2)), ((1, 1), (1, 1), 1, (0, 0))]
    assert sum(isinstance(m, nn.ReLU) for m in sep) == 2 and sum(isinstance(m, nn.BatchNorm2d) for m in sep) == 2
    # dil_conv: ReLU, depthwise conv with dilation 2, pointwise conv, BN.
    dil = make_op("dil_conv_5x5", 6, 1, affine=True)
    assert [type(m) for m in dil] == [nn.ReLU, nn.Conv2d, nn.Conv2d, nn.BatchNorm2d]
    assert (dil[1].dilation, dil[1].padding, dil[1].groups) == ((2, 2), (4, 4), 6)
    with pytest.raises(ValueError, match="not a DARTS operation"):
        make_op("conv_7x1_1x7", 6, 1, affine=True)


def test_drop_path_is_sample_wise_and_unbiased():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 1, 16, 16), (2, 3, 18, 18), (2, 3, 16, 15)])
def test_build_rejects_bad_input_shapes(shape):
    net = DARTS().build(DARTS_V2, C=4, layers=5)
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\) with H and W divisible by 4"):
        net(torch.randn(*shape))


# ----------------------------------------------------------------------------------------------------
# Supernet
# ----------------------------------------------------------------------------------------------------

def test_supernet_structure(space):
    net = space.supernet()
    assert isinstance(net, DARTSSupernet) and net.space is space and len(net.cells) == 5
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]
    for cell in net.cells:
        assert len(cell.edges) == 14
        for edge in cell.edges:
            assert len(edge) == 8 and not list(edge["none"].parameters())
        bns = [m for m in cell.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(bn.affine for bn in bns)  # GeNAS's supernet: every cell BN affine
    assert isinstance(net.cells[0].edges[0]["avg_pool_3x3"][1], nn.BatchNorm2d)
    assert DARTS().supernet().C == 16 and len(DARTS().supernet(layers=3).cells) == 3
    # DARTS's search network: no affine BN inside the cells; the stem BN stays affine.
    for old in (DARTS(C=4, layers=5, affine=False).supernet(), space.supernet(affine=False)):
        assert not old.affine and old.stem[1].affine
        assert all(not bn.affine for cell in old.cells for bn in cell.modules() if isinstance(bn, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="unknown argument"):
        space.supernet(channels=4)
    with pytest.raises(ValueError, match="C=0"):
        space.supernet(C=0)


def test_supernet_forward_and_path_parameters_match_gradients(space):
    torch.manual_seed(0)
    net = space.supernet().train()
    rng = random.Random(5)
    names = [n for n, _ in net.named_parameters()]
    for _ in range(3):
        g = space.sample(rng)
        net.zero_grad(set_to_none=True)
        out = net(torch.randn(2, 3, 16, 16), g)
        assert out.shape == (2, 5)
        out.square().sum().backward()
        used = [n for n, p in net.named_parameters() if p.grad is not None]
        used_set = set(used)
        path = net.path_parameters(g)
        assert path == used
        assert path == [n for n in names if n in used_set] and len(set(path)) == len(path)
        assert "stem.0.weight" in path and "classifier.weight" in path
        assert len(path) < len(names) / 4


@pytest.mark.parametrize("affine", [True, False])
def test_path_parameters_hold_the_cell_bn_affine_pairs(space, affine):
    net = space.supernet(affine=affine).train()
    g = DARTS_V2  # reduction cells: max_pool_3x3 on inputs 0 and 1, skip_connect (FactorizedReduce)
    path = net.path_parameters(g)
    bn_names = {"cells.1.edges.0.max_pool_3x3.1.weight", "cells.1.edges.0.max_pool_3x3.1.bias",  # after pooling
                "cells.0.edges.0.sep_conv_3x3.3.weight", "cells.0.edges.0.sep_conv_3x3.7.bias",  # op BNs
                "cells.0.preprocess0.2.weight", "cells.2.preprocess0.bn.bias",  # preprocessing
                "cells.1.preprocess1.2.weight"}
    assert bn_names <= set(path) if affine else not bn_names & set(path)
    net.zero_grad(set_to_none=True)
    net(torch.randn(2, 3, 16, 16), g).square().sum().backward()
    assert [n for n, p in net.named_parameters() if p.grad is not None] == path
    n_bn = sum(p.numel() for n, p in net.named_parameters() if n.startswith("cells.") and n.endswith(".bias"))
    assert (n_bn > 0) == affine


def test_non_affine_supernet_extracts_and_exports():
    s = DARTS(C=4, layers=3, num_classes=3, resolution=8, affine=False)
    torch.manual_seed(1)
    net = s.supernet()
    g = s.sample(random.Random(4))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        net.train()(torch.randn(4, 3, 8, 8), g)
    net.eval()
    sub = net.extract(g)
    assert all(not bn.affine for cell in sub.cells for bn in cell.modules() if isinstance(bn, nn.BatchNorm2d))
    x = torch.randn(2, 3, 8, 8)
    namespace: dict = {}
    exec(compile(net.export_source(g), "<exported>", "exec"), namespace)
    model = namespace["Network"]()
    model.load_state_dict(sub.state_dict())
    with torch.no_grad():
        assert (sub(x) - net(x, g)).abs().max().item() < 1e-5
        assert (model.eval()(x) - net(x, g)).abs().max().item() < 1e-5


def test_supernet_shares_genotypes_between_cells_of_a_kind(space):
    net = space.supernet()
    g = DARTS_V2
    path = net.path_parameters(g)
    ops = {(n.split(".")[1], n.split(".")[3], n.split(".")[4]) for n in path if ".edges." in n}
    normal = {(e, op) for c, e, op in ops if c in ("0", "2", "4")}
    for c in ("0", "2", "4"):
        assert {(e, op) for cc, e, op in ops if cc == c} == normal
    # DARTS_V2's normal cell: node 3 takes dil_conv_3x3 from node 0 (input 2): edge 3 * 6 / 2 + 2 = 11.
    assert ("11", "dil_conv_3x3") in normal


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 4, 16, 16), (2, 3, 18, 18)])
def test_supernet_rejects_bad_input_shapes(space, shape):
    net = space.supernet()
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\) with H and W divisible by 4"):
        net(torch.randn(*shape), DARTS_V2)


def test_supernet_rejects_bad_architectures(space):
    net = space.supernet()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="unknown op"):
        net(x, DARTS_V2._replace(normal=(("conv", 0),) + DARTS_V2.normal[1:]))
    with pytest.raises(ValueError):
        net.path_parameters("not a genotype")
    assert net.eval()(x, space.format(DARTS_V2)).shape == (2, 5)


def test_extract_matches_supernet(space, trained_supernet):
    net = trained_supernet
    rng = random.Random(6)
    x = torch.randn(2, 3, 16, 16)
    for g in [DARTS_V1, DARTS_V2, space.sample(rng), space.sample(rng)]:
        sub = net.extract(g)
        assert isinstance(sub, NetworkCIFAR) and not sub.training
        with torch.no_grad():
            expected = net(x, g)
            got = sub(x)
        assert (got - expected).abs().max().item() < 1e-5
        # The standalone network holds exactly the path's parameters.
        path = set(net.path_parameters(g))
        n_path = sum(p.numel() for n, p in net.named_parameters() if n in path)
        assert sum(p.numel() for p in sub.parameters()) == n_path
    # Different architectures give different outputs (the comparison can fail).
    with torch.no_grad():
        assert (net(x, DARTS_V1) - net(x, DARTS_V2)).abs().max().item() > 1e-4


def test_export_source_runs_with_extracted_weights(space, trained_supernet):
    net = trained_supernet
    g = space.sample(random.Random(7))
    src = net.export_source(g, class_name="SearchedNet")
    assert "fastnas" not in src.split('"""', 2)[2]
    imports = {line.strip() for line in src.splitlines() if line.startswith(("import ", "from "))}
    assert imports == {"from collections import namedtuple", "import torch", "from torch import nn"}
    namespace: dict = {}
    exec(compile(src, "<exported>", "exec"), namespace)
    model = namespace["SearchedNet"]()
    model.load_state_dict(net.extract(g).state_dict())
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - net(x, g)).abs().max().item() < 1e-5
    assert space.parse(repr(namespace["GENOTYPE"])) == g
    for bad in ("NetworkCIFAR", "not valid", "class", ""):
        with pytest.raises(ValueError, match="class_name"):
            net.export_source(g, class_name=bad)


def test_recalibrate_path_statistics(space):
    torch.manual_seed(0)
    net = space.supernet()
    g = DARTS_V2
    batches = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    assert net.recalibrate(g, batches) == 3
    assert not net.training
    stem_bn = net.stem[1]
    assert int(stem_bn.num_batches_tracked) == 3
    # An op off the path keeps its reset-free statistics.
    assert int(net.cells[0].edges[0]["sep_conv_5x5"][3].num_batches_tracked) == 0


def test_other_cell_sizes():
    s = DARTS(C=4, layers=3, steps=3, multiplier=2, num_classes=3)
    rng = random.Random(8)
    g = s.sample(rng)
    assert len(g.normal) == 6 and g.normal_concat == (3, 4)
    assert s.parse(s.format(g)) == g
    with pytest.raises(ValueError, match="expected 6"):
        s.validate(DARTS_V2)
    net = s.supernet().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert (net.extract(g)(x) - net(x, g)).abs().max().item() < 1e-5
        assert s.build(g)(x).shape == (2, 3)
    assert s.params(g) == sum(p.numel() for p in net.extract(g).parameters())
    assert s.params(g, network="evaluation") == sum(p.numel() for p in s.build(g).parameters())


@pytest.mark.parametrize("kwargs", [dict(C=4, layers=5, num_classes=7, resolution=16),
                                    dict(C=6, layers=3, in_channels=1, resolution=8, affine=False),
                                    dict(C=4, layers=4, steps=3, multiplier=2, resolution=16)])
def test_params_count_the_searched_and_exported_network(kwargs):
    # params(arch) at the space's own size is the network `fastnas export` writes (BN after pooling, the
    # supernet's affine), not DARTS's 36-channel 20-cell count (params_benchmark)
    s = DARTS(**kwargs)
    sn = s.supernet()
    rng = random.Random(3)
    archs = [s.sample(rng) for _ in range(4)] + ([DARTS_V1, DARTS_V2] if s.steps == 4 else [])
    assert any(op.endswith("pool_3x3") for g in archs for op, _ in g.normal + g.reduce)
    for g in archs:
        assert s.params(g) == sum(p.numel() for p in sn.extract(g).parameters())
        assert s.params_benchmark(g) == s.params(g, C=36, layers=20, network="evaluation") != s.params(g)
    with pytest.raises(ValueError, match="network='eval'"):
        s.params(archs[0], network="eval")
