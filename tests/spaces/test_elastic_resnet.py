"""The elastic ResNet family (``create_space("elastic_resnet")``): its architectures, the family protocol and
the exact containment of members (a smaller member's weights are slices of a larger one's), checked against
hand-written values. The conformance suite (test_conformance.py) covers the generic protocol."""

from __future__ import annotations

import copy
import random
from collections import Counter

import pytest
import torch

import fastnas
from fastnas.ops import ParamSlice, path_params
from fastnas.ops.layout import ParamLayout
from fastnas.spaces import ElasticResNet, NB201, create_space
from fastnas.spaces.elastic_resnet import ENUMERATE_LIMIT
from fastnas.train.steps import single_path_step


def tiny(**kw) -> ElasticResNet:
    """Stages (4, 8, 16), depths 1..2, widths {2, 3, 4} / {4, 6, 8} / {8, 12, 16}, kernels 3, 5; 8x8 inputs."""
    return create_space("elastic_resnet", **{"channels": 4, "cells": 2, "num_classes": 3, "resolution": 8, **kw})


BIG_TEXT = "4k5,3k5|8k5,6k3|16k5,16k5"
SMALL_TEXT = "2k3,3k3|8k3|12k5,8k3"
X = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def moved_supernet(space: ElasticResNet, seed: int = 0) -> fastnas.spaces.Supernet:
    """A supernet with weights moved off their initial values and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    sn = space.supernet()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        sn.train()
        sn(torch.randn(16, 3, 8, 8, generator=g), space.largest())
    return sn.eval()


def nested_pairs(space: ElasticResNet, n: int, seed: int = 0):
    """``n`` random ``(big, small)`` pairs with ``contains(big, small)``, the family's extremes first."""
    pairs = [(space.largest(), space.smallest()), (space.parse(BIG_TEXT), space.parse(SMALL_TEXT))]
    rng = random.Random(seed)
    while len(pairs) < n:
        a, b = space.sample(rng), space.sample(rng)
        if space.contains(a, b) and a != b:
            pairs.append((a, b))
        elif space.contains(b, a) and a != b:
            pairs.append((b, a))
    return pairs


# ---- construction -----------------------------------------------------------------------------------

def test_generic_keywords_and_config_round_trip():
    s = create_space("elastic_resnet", channels=8, cells=3, num_classes=7, in_channels=1, resolution=16)
    assert s.stage_channels == (8, 16, 32) and s.depths == (1, 2, 3) and s.max_depth == 3
    assert (s.num_classes, s.in_channels, s.resolution) == (7, 1, 16)
    assert s.widths == ((4, 6, 8), (8, 12, 16), (16, 24, 32)) and s.kernels == (3, 5)
    assert create_space("elastic_resnet", **s.config()).config() == s.config()
    d = create_space("elastic_resnet")
    assert d.stage_channels == (16, 32, 64) and d.depths == (1, 2, 3) and d.resolution == 32
    custom = ElasticResNet(stage_channels=(6, 10), depths=(2, 4), widths=((3, 6), (5, 10)), kernels=(1, 3, 5))
    assert custom.max_depth == 4 and custom.widths == ((3, 6), (5, 10))
    assert ElasticResNet(**custom.config()).config() == custom.config()
    assert ElasticResNet(C=4, width_ratios=(0.1, 0.5, 0.6)).widths[0] == (1, 2)  # rounded, at least 1, once


@pytest.mark.parametrize("kw, pattern", [
    ({"C": 0}, r"C=0: expected a positive integer"),
    ({"C": 4, "channels": 8}, r"C=4 and channels=8 disagree"),
    ({"C": 4, "stage_channels": (4, 8)}, r"give one of them"),
    ({"stage_channels": (4, 0)}, r"stage_channels=\(4, 0\): 0 is not a positive integer"),
    ({"stages": 2, "stage_channels": (4, 8, 16)}, r"stages=2 and stage_channels"),
    ({"max_depth": 2, "depths": (1, 3)}, r"max_depth=2 \(cells\) and depths=\(1, 3\) disagree"),
    ({"depths": (1, 1)}, r"distinct"),
    ({"kernels": (3, 4)}, r"kernels=\(3, 4\): 4 is not one of the positive odd integers"),
    ({"width_ratios": (0.5, -1)}, r"width_ratios"),
    ({"widths": ((2, 4),)}, r"one sequence of channel counts per stage \(3\)"),
    ({"widths": ((2, 4),) * 3, "width_ratios": (1.0,)}, r"give one of them"),
    ({"sampling": "unifrom"}, r"sampling='unifrom'.*did you mean 'uniform'"),
])
def test_bad_arguments_are_named(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        ElasticResNet(**kw)


# ---- architectures ------------------------------------------------------------------------------------

def test_text_form_by_hand():
    s = tiny()
    arch = s.parse(" 4k5,3k5 | 8k5,6k3 | 16k5,16k5 ")
    assert arch == (((4, 5), (3, 5)), ((8, 5), (6, 3)), ((16, 5), (16, 5)))
    assert s.format(arch) == BIG_TEXT
    assert s.format(s.smallest()) == "2k3|4k3|8k3" and s.format(s.largest()) == "4k5,4k5|8k5,8k5|16k5,16k5"
    assert s.validate([[[2, 3]], [(4, 3)], [(8, 3)]]) == s.smallest()  # lists become tuples


@pytest.mark.parametrize("text, pattern", [
    ("2k3|4k3", r"2 stage\(s\) separated by '\|'; expected 3"),
    ("2k3|4x3|8k3", r"stage 2 block '4x3' is not '<width>k<kernel>'"),
    ("2k3|4k3,|8k3", r"stage 2 block '' is not"),
    ("2k3|5k3|8k3", r"stage 2 block 1: width 5 is not one of \[4, 6, 8\]"),
    ("2k3|4k7|8k3", r"stage 2 block 1: kernel 7 is not one of \[3, 5\]"),
    ("2k3|4k3,4k3,4k3|8k3", r"stage 2 is .*expected a tuple of 1 or 2"),
])
def test_parse_errors_are_one_line(text, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        tiny().parse(text)
    assert "\n" not in str(info.value) and repr(text) in str(info.value)


def test_validate_rejects_other_values():
    s = tiny()
    for bad, pattern in [("2k3|4k3|8k3", "use parse"), ((((2, 3),),) * 2, "3 stages"),
                         ((((2, True),), ((4, 3),), ((8, 3),)), "pair of integers"),
                         ((((2, 3), (2, 3), (2, 3)), ((4, 3),), ((8, 3),)), "stage 1")]:
        with pytest.raises(ValueError, match=pattern):
            s.validate(bad)


def test_size_and_enumerate_by_hand():
    s = tiny()
    # 3 widths x 2 kernels = 6 genes per block; a stage of depth 1 or 2: 6 + 36 options; 3 stages
    assert s.size() == 42 ** 3
    one = ElasticResNet(stage_channels=(4, 8), depths=(1, 2), widths=((2, 4), (8,)), kernels=(3,))
    assert one.size() == (2 + 4) * (1 + 1)
    every = list(one.enumerate())
    assert len(every) == len(set(every)) == one.size() and all(one.validate(a) == a for a in every)
    assert every[0] == (((2, 3),), ((8, 3),)) and every[-1] == (((4, 3), (4, 3)), ((8, 3), (8, 3)))
    assert len(set(tiny(cells=1).enumerate())) == 6 ** 3
    default = create_space("elastic_resnet")
    assert default.size() == (6 + 36 + 216) ** 3 > ENUMERATE_LIMIT
    with pytest.raises(NotImplementedError, match="17,173,512 architectures"):
        default.enumerate()


def test_uniform_sampling_is_uniform_and_ofa_sampling_draws_depth_first():
    kw = dict(stage_channels=(4,), depths=(1, 2), widths=((2, 4),), kernels=(3,))
    uniform, ofa = ElasticResNet(**kw), ElasticResNet(**kw, sampling="ofa")
    rng = random.Random(0)
    counts = Counter(uniform.sample(rng) for _ in range(6000))
    assert len(counts) == 6 and all(800 < c < 1200 for c in counts.values())  # 1000 each
    depth = Counter(len(ofa.sample(rng)[0]) for _ in range(4000))
    assert 1800 < depth[1] < 2200  # depth uniform first: half are of depth 1 (uniform: a third)


def test_mutate_and_crossover():
    s = tiny()
    rng = random.Random(1)
    a, b = s.parse(BIG_TEXT), s.parse(SMALL_TEXT)
    assert s.mutate(a, 0.0, rng) == a and s.crossover(a, a, rng) == a
    assert len({s.mutate(a, 1.0, rng) for _ in range(20)}) > 10
    for _ in range(50):
        c = s.crossover(a, b, rng)
        for sa, sb, sc in zip(a, b, c):
            assert len(sc) in (len(sa), len(sb))
            for i, (w, k) in enumerate(sc):
                assert w in {x[i][0] for x in (sa, sb) if i < len(x)}
                assert k in {x[i][1] for x in (sa, sb) if i < len(x)}
    with pytest.raises(ValueError, match="prob=1.5"):
        s.mutate(a, 1.5, rng)


def test_cell_graph_by_hand():
    s = tiny()
    g1, g2, g3 = s.cell_graph(s.parse(SMALL_TEXT))
    assert g1.title == "stage 1: 4 channels, stride 1, depth 2" and g1.nodes == ["in", "1", "out"]
    assert g1.edges == [("in", "1", "2k3"), ("1", "out", "3k3")]
    assert g2.nodes == ["in", "out"] and g2.edges == [("in", "out", "8k3")] and "stride 2" in g2.title


# ---- cost ----------------------------------------------------------------------------------------------

def test_params_and_flops_by_hand():
    s = ElasticResNet(stage_channels=(4, 8), depths=(1, 2), widths=((2, 4), (4, 8)), num_classes=3,
                      resolution=8)
    arch = (((2, 3), (4, 5)), ((4, 5),))
    stem = 3 * 4 * 9 + 8
    s1b1 = 9 * 4 * 2 + 4 + 9 * 2 * 4 + 8  # conv1 + bn1, conv2 + bn2; identity shortcut
    s1b2 = 25 * 4 * 4 + 8 + 25 * 4 * 4 + 8
    s2b1 = 25 * 4 * 4 + 8 + 25 * 4 * 8 + 16 + 4 * 8 + 16  # the 1x1 projection (stride 2, 4 -> 8 channels)
    head = 8 * 3 + 3
    assert s.params(arch) == stem + s1b1 + s1b2 + s2b1 + head == sum(p.numel() for p in s.build(arch).parameters())
    macs = (3 * 4 * 9 * 64 + (9 * 4 * 2 + 9 * 2 * 4) * 64 + (25 * 4 * 4 * 2) * 64
            + (25 * 4 * 4 + 25 * 4 * 8 + 4 * 8) * 16 + 8 * 3 + 3)
    assert s.flops(arch) == pytest.approx(macs / 1e6, rel=1e-12)
    odd = ElasticResNet(stage_channels=(4, 8), depths=(1,), widths=((4,), (8,)), kernels=(3,), resolution=7)
    a = (((4, 3),), ((8, 3),))  # 7 -> 4 (ceil) in the stride-2 stage
    assert odd.flops(a) == pytest.approx((3 * 4 * 9 * 49 + 2 * 9 * 16 * 49 + (9 * 4 * 8 + 9 * 64 + 32) * 16 + 80 + 10)
                                         / 1e6)


# ---- the family ----------------------------------------------------------------------------------------

def test_largest_smallest_contains_by_hand():
    s = tiny()
    big, small = s.parse(BIG_TEXT), s.parse(SMALL_TEXT)
    assert s.contains(big, small) and not s.contains(small, big)
    assert s.contains(s.largest(), big) and s.contains(small, s.smallest()) and s.contains(big, big)
    assert not s.contains(big, s.parse("2k3|8k5,6k5|8k3"))  # a larger kernel in stage 2 block 2
    assert not s.contains(big, s.parse("2k3|8k3,8k3|8k3"))  # wider in stage 2 block 2
    assert not s.contains(s.parse("4k5|8k5|16k5"), s.parse("2k3,2k3|4k3|8k3"))  # deeper in stage 1
    rng = random.Random(0)
    for _ in range(30):
        a = s.sample(rng)
        assert s.contains(s.largest(), a) and s.contains(a, s.smallest())


def test_contains_across_spaces_names_the_argument():
    s = tiny()
    nb = ("nor_conv_3x3",) * 6
    with pytest.raises(ValueError, match=r"^big=\('nor_conv_3x3'.*is not an architecture of this elastic_resnet space"):
        s.contains(nb, s.smallest())
    other = tiny(channels=8)  # another size of the same family: its widths are not this space's
    with pytest.raises(ValueError, match=r"^small=.*not an architecture .*width 8 is not one of \[2, 3, 4\]"):
        s.contains(s.largest(), other.largest()[:1] + s.smallest()[1:])
    with pytest.raises(ValueError, match="big="):
        s.contains(NB201().format(nb), s.smallest())
    with pytest.raises(ValueError, match="is not contained in big"):
        s.embedding(s.smallest(), s.largest())


def test_embedding_by_hand():
    s = tiny()
    e = s.embedding(s.parse(BIG_TEXT), s.parse(SMALL_TEXT))
    assert e["stem.0.weight"] == "stem.0.weight" and e["classifier.weight"] == "classifier.weight"
    # stage 1 block 1: width 2 of 4, kernel 3 in 5 -> weight[:2, :, 1:4, 1:4]; block 2: width 3 of 3, 3 in 5
    assert e["stages.0.0.conv1.0.weight"] == ParamSlice("stages.0.0.conv1.0.weight", ((0, 2), (0, 4), (1, 4), (1, 4)))
    assert e["stages.0.0.conv1.1.running_var"] == ParamSlice("stages.0.0.conv1.1.running_var", ((0, 2),))
    assert e["stages.0.0.conv2.0.weight"] == ParamSlice("stages.0.0.conv2.0.weight", ((0, 4), (0, 2), (1, 4), (1, 4)))
    assert e["stages.0.0.conv2.1.weight"] == "stages.0.0.conv2.1.weight"
    assert e["stages.0.1.conv1.0.weight"] == ParamSlice("stages.0.1.conv1.0.weight", ((0, 3), (0, 4), (1, 4), (1, 4)))
    assert e["stages.1.0.conv1.0.weight"] == ParamSlice("stages.1.0.conv1.0.weight", ((0, 8), (0, 4), (1, 4), (1, 4)))
    assert e["stages.1.0.shortcut.0.weight"] == "stages.1.0.shortcut.0.weight"
    assert not any(k.startswith("stages.1.1.") for k in e)  # stage 2 of the small member has one block
    assert e["stages.2.0.conv1.0.weight"] == ParamSlice("stages.2.0.conv1.0.weight", ((0, 12),))  # kernel 5 of 5
    assert e["stages.2.1.conv1.0.weight"] == ParamSlice("stages.2.1.conv1.0.weight", ((0, 8), (0, 16), (1, 4), (1, 4)))


def _check_contained(s, sn, pairs):
    for big, small in pairs:
        big_state, small_state = sn.extract(big).state_dict(), sn.extract(small).state_dict()
        for k, e in s.embedding(big, small).items():
            want = e.view(big_state[e.name]) if isinstance(e, ParamSlice) else big_state[e]
            assert torch.equal(small_state[k], want), (s.format(big), s.format(small), k)


def test_smaller_members_are_slices_of_larger_ones_before_and_after_training():
    s = tiny()
    sn = moved_supernet(s)
    pairs = nested_pairs(s, 8)
    _check_contained(s, sn, pairs)
    # a hand-written slice, independent of embedding(): small's first conv is big's [:2, :, 1:4, 1:4]
    big, small = s.parse(BIG_TEXT), s.parse(SMALL_TEXT)
    w_big = sn.extract(big).stages[0][0].conv1[0].weight
    assert torch.equal(sn.extract(small).stages[0][0].conv1[0].weight, w_big[:2, :, 1:4, 1:4])
    # a few SGD steps (momentum, weight decay) on the sandwich and random members
    g = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(sn.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sn.train()
    rng = random.Random(2)
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    for step in range(4):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        for arch in (s.largest(), s.smallest(), s.sample(rng)):
            single_path_step(sn, arch, x, y, opt, grad_clip=5.0)
    sn.eval()
    assert not torch.equal(before["stages.0.0.conv1.0.weight"], sn.state_dict()["stages.0.0.conv1.0.weight"])
    _check_contained(s, sn, pairs)


def test_shrink_of_the_larger_member_is_the_smaller_member():
    s = tiny()
    sn = moved_supernet(s, seed=4)
    with torch.no_grad():
        for big, small in nested_pairs(s, 5, seed=1):
            net = s.shrink(sn.extract(big), big, small)
            assert not net.training
            torch.testing.assert_close(net(X), sn(X, small), rtol=0, atol=0)
            built = s.shrink(s.build(big), big, small)  # any network of big's
            assert {k: v.shape for k, v in built.state_dict().items()} == \
                {k: v.shape for k, v in s.build(small).state_dict().items()}


def test_exported_source_holds_the_same_slices():
    s = tiny()
    sn = moved_supernet(s, seed=5)
    big, small = s.parse(BIG_TEXT), s.parse(SMALL_TEXT)
    nets = {}
    for name, arch in (("Big", big), ("Small", small)):
        src = sn.export_source(arch, class_name=name)
        imports = [ln.strip() for ln in src.splitlines() if ln.startswith(("import ", "from "))]
        assert imports == ["from __future__ import annotations", "import torch", "from torch import nn"]
        ns = {"__name__": f"exported_{name}"}
        exec(compile(src, f"{name}.py", "exec"), ns)
        net = ns[name]()
        net.load_state_dict(sn.extract(arch).state_dict())
        nets[name] = net.eval()
    big_state, small_state = nets["Big"].state_dict(), nets["Small"].state_dict()
    for k, e in s.embedding(big, small).items():
        want = e.view(big_state[e.name]) if isinstance(e, ParamSlice) else big_state[e]
        assert torch.equal(small_state[k], want), k
    with torch.no_grad():
        torch.testing.assert_close(nets["Small"](X), sn(X, small), rtol=0, atol=0)
        torch.testing.assert_close(s.shrink(nets["Big"], big, small)(X), sn(X, small), rtol=0, atol=0)
    with pytest.raises(ValueError, match="class_name='ResNet'"):
        sn.export_source(big, class_name="ResNet")


# ---- the supernet --------------------------------------------------------------------------------------

def test_train_mode_forward_equals_extracted_and_updates_the_same_statistics():
    s = tiny()
    sn = moved_supernet(s, seed=6).train()
    for arch in (s.parse(SMALL_TEXT), s.smallest(), s.largest()):
        net = sn.extract(arch)
        assert net.training
        out_net, out_sn = net(X), sn(X, arch)
        torch.testing.assert_close(out_net, out_sn, rtol=0, atol=0)
        sn_state = sn.state_dict()
        for k, e in sn._map(arch).items():  # the running statistics moved the same way
            got = e.view(sn_state[e.name]) if isinstance(e, ParamSlice) else sn_state[e]
            assert torch.equal(net.state_dict()[k], got), k


def test_gradients_stay_inside_the_path():
    # every parameter the forward touches is on the path, and its gradient is zero outside the slice
    s = tiny()
    sn = moved_supernet(s, seed=7).train()
    for arch in (s.parse(SMALL_TEXT), s.smallest()):
        sn.zero_grad(set_to_none=True)
        sn(X, arch).square().sum().backward()
        path = {e.name if isinstance(e, ParamSlice) else e: e for e in sn.path_parameters(arch)}
        for name, p in sn.named_parameters():
            if name not in path:
                assert p.grad is None, name
                continue
            e = path[name]
            outside = p.grad.clone()
            if isinstance(e, ParamSlice):
                assert e.view(p.grad).abs().sum() > 0, name
                e.view(outside).zero_()
            else:
                outside.zero_()
            assert torch.count_nonzero(outside) == 0, name
        assert len(arch[1]) == 1 and not any(n.startswith("stages.1.1.") for n in path)  # beyond the depth


def test_member_noise_equals_the_largest_members_noise_on_shared_weights():
    # Noise on a slice is keyed by the element's index in the full tensor: perturbing a member's slices
    # gives every shared weight the noise that perturbing the largest member (whole tensors) gives it.
    s = tiny()
    sn = moved_supernet(s, seed=8)
    layout = ParamLayout.from_module(sn)
    member, whole = copy.deepcopy(sn), copy.deepcopy(sn)
    small = s.parse(SMALL_TEXT)
    fastnas.perturb_(path_params(member, member.path_parameters(small)), 0.05, seed=9, stream=1, layout=layout)
    fastnas.perturb_(path_params(whole, whole.path_parameters(s.largest())), 0.05, seed=9, stream=1, layout=layout)
    assert all(isinstance(e, str) for e in sn.path_parameters(s.largest()))  # the largest member: whole tensors
    m, w, orig = dict(member.named_parameters()), dict(whole.named_parameters()), dict(sn.named_parameters())
    on_path = 0
    for e in sn.path_parameters(small):
        name = e.name if isinstance(e, ParamSlice) else e
        view = e.view if isinstance(e, ParamSlice) else (lambda t: t)
        assert torch.equal(view(m[name]), view(w[name])), name
        assert not torch.equal(view(m[name]), view(orig[name])), name
        mask = torch.zeros_like(m[name], dtype=torch.bool)
        view(mask).fill_(True)
        assert torch.equal(m[name][~mask], orig[name][~mask]), name  # outside the slice: untouched
        on_path += 1
    assert on_path == len(sn.path_parameters(small))
    # the same on the extracted networks: the member's perturbed network is a slice of the largest's
    big_state = whole.extract(s.largest()).state_dict()
    small_state = member.extract(small).state_dict()
    for k, e in s.embedding(s.largest(), small).items():
        want = e.view(big_state[e.name]) if isinstance(e, ParamSlice) else big_state[e]
        assert torch.equal(small_state[k], want), k
