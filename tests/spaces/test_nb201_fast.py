"""The compiled NB201 forward equals the extracted module's forward and recalibration (to float rounding),
and its stem cache never serves other weights or other images."""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from fastnas.spaces import NB201
from fastnas.spaces.base import recalibrate_bn
from fastnas.spaces.nb201 import OPS
from fastnas.spaces.nb201_fast import CompiledNB201, StemCache, cell_schedule, not_supported_reasons

SPECIAL = [("none",) * 6, ("skip_connect",) * 6, ("avg_pool_3x3",) * 6, ("nor_conv_1x1",) * 6,
           ("none", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3"),
           ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "none", "none"),
           ("none", "none", "nor_conv_3x3", "nor_conv_1x1", "nor_conv_3x3", "nor_conv_3x3")]


def _archs(n: int, seed: int = 1):
    rng = random.Random(seed)
    return SPECIAL + [tuple(rng.choice(OPS) for _ in range(6)) for _ in range(n)]


def _supernet(affine: bool = False, seed: int = 0):
    """A supernet away from its initialisation, with BatchNorm statistics that are not the reset values
    (nonzero means: a zero node's convolutions do not vanish until recalibration)."""
    torch.manual_seed(seed)
    space = NB201(C=4, N=1, resolution=8)
    sn = space.supernet(affine_cells=affine)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in sn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return space, sn.eval()


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _batches(k=3, b=8, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 8, 8, generator=g) for _ in range(k)]


def _live_buffers(net, arch, affine=False):
    """``{name: buffer}`` of the BatchNorms the compiled forward recalibrates (edges it never runs keep
    their statistics: they feed no output)."""
    s = cell_schedule(arch, prune_zero=not affine)
    run = {e for edges in s.convs for e in edges} | set(s.zero_convs)
    out = {}
    for name, b in net.named_buffers():
        parts = name.split(".")
        if not (parts[0] == "cells" and parts[2] == "edges" and int(parts[3]) not in run):
            out[name] = b
    return out


def test_cell_schedule_hand_cases():
    s = cell_schedule(("none", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3"))
    # node 1 is zero (its only input is none): its convolutions 2 and 4 are skipped
    assert (s.convs, s.skips, s.pools, s.zero_convs, s.zero_output) == (
        ((1,), (), ()), ((3,), (), ()), ((), (), (5,)), (2, 4), False)
    s = cell_schedule(("none", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3"),
                      prune_zero=False)
    assert s.convs == ((1,), (2, 4), ()) and s.zero_convs == ()
    # node 2 has no way to the output (edge 3<-2 is none), so node 1 has none either: only edge 3<-0 runs
    s = cell_schedule(("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "none", "none"))
    assert s.convs == ((3,), (), ()) and s.zero_convs == () and not s.zero_output
    assert cell_schedule(("none",) * 6).zero_output
    assert cell_schedule(("skip_connect", "none", "none", "none", "none", "none")).zero_output


def test_dead_edges_change_no_output():
    """Independent check of the schedule: replacing an edge it does not run by ``none`` leaves the module's
    output bit-identical, and replacing one it runs changes it."""
    space, sn = _supernet()
    x = torch.randn(4, 3, 8, 8)
    for arch in _archs(25):
        s = cell_schedule(arch)
        run = {e for kind in (s.convs, s.skips, s.pools) for edges in kind for e in edges}
        with torch.no_grad():
            ref = sn.extract(arch).eval()(x)
            for e in range(6):
                if arch[e] == "none" or e in s.zero_convs:
                    continue  # zero convolutions vanish only with zero means (after recalibration)
                cut = arch[:e] + ("none",) + arch[e + 1:]
                out = sn.extract(cut).eval()(x)
                assert torch.equal(out, ref) == (e not in run), (arch, e)


@pytest.mark.parametrize("affine", [False, True])
def test_eval_equals_module_forward(affine):
    space, sn = _supernet(affine)
    x = torch.randn(6, 3, 8, 8)
    x_before = x.clone()
    for arch in _archs(30):
        net = sn.extract(arch).eval()
        with torch.no_grad():
            ref = net(x)
            program = CompiledNB201(copy.deepcopy(net))
            assert program.folded() == program.refresh()
            out = program(x)
            out_nchw = CompiledNB201(copy.deepcopy(net), channels_last=False)(x)
        assert _rel(out, ref) < 1e-5 and _rel(out_nchw, ref) < 1e-5, arch
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("mode", ["exact", "momentum"])
def test_recalibrate_equals_recalibrate_bn(affine, mode):
    space, sn = _supernet(affine)
    batches = _batches()
    kept = [b.clone() for b in batches]
    x = torch.randn(6, 3, 8, 8)
    for arch in _archs(12):
        ref = sn.extract(arch)
        assert recalibrate_bn(ref, ref, batches, mode=mode) == 3
        net = sn.extract(arch)
        program = CompiledNB201(net)
        assert program.recalibrate(batches, mode=mode) == 3
        want, got = _live_buffers(ref, arch, affine), _live_buffers(net, arch, affine)
        assert want.keys() == got.keys()
        for name, a in want.items():
            if name.endswith("num_batches_tracked"):
                assert torch.equal(a, got[name]), name
            else:
                assert torch.allclose(a, got[name], rtol=1e-4, atol=1e-6), (arch, name)
        with torch.no_grad():
            assert _rel(program(x), ref.eval()(x)) < 1e-4
            assert _rel(net.eval()(x), ref(x)) < 1e-4  # the written statistics serve the module too
    assert all(torch.equal(a, b) for a, b in zip(batches, kept))


def test_stem_cache_equals_no_cache_and_is_checked():
    space, sn = _supernet()
    batches = _batches()
    cache = StemCache()
    x = torch.randn(6, 3, 8, 8)

    def outputs(arch, cache, batches=batches):
        program = CompiledNB201(sn.extract(arch), stem_cache=cache)
        program.recalibrate(batches)
        with torch.no_grad():
            return program(x), dict(program.net.named_buffers())

    archs = _archs(4)
    for arch in archs:
        (a, sa), (b, sb) = outputs(arch, cache), outputs(arch, None)
        assert torch.equal(a, b) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (cache.hits, cache.misses) == (len(archs) - 1, 1)
    # new stem weights (a training step, a loaded checkpoint): recomputed, never served stale
    with torch.no_grad():
        sn.stem[0].weight.mul_(1.5)
    a, b = outputs(archs[0], cache)[0], outputs(archs[0], None)[0]
    assert torch.equal(a, b) and cache.misses == 2
    # other batches, or the same tensors written in place: recomputed
    other = _batches(seed=7)
    assert torch.equal(outputs(archs[1], cache, other)[0], outputs(archs[1], None, other)[0]) and cache.misses == 3
    with torch.no_grad():
        other[0].add_(1.0)
    assert torch.equal(outputs(archs[1], cache, other)[0], outputs(archs[1], None, other)[0]) and cache.misses == 4
    # another mode has its own entry
    p = CompiledNB201(sn.extract(archs[2]), stem_cache=cache)
    p.recalibrate(other, mode="momentum")
    ref = sn.extract(archs[2])
    recalibrate_bn(ref, ref, other, mode="momentum")
    assert torch.allclose(p.net.stem[1].running_var, ref.stem[1].running_var, rtol=1e-5)
    assert cache.misses == 5


def test_stem_cache_never_leaks_between_supernets():
    batches = _batches()
    cache = StemCache()
    x = torch.randn(6, 3, 8, 8)
    arch = _archs(0)[4]
    for seed in (0, 1, 0):
        _, sn = _supernet(seed=seed)
        got = CompiledNB201(sn.extract(arch), stem_cache=cache)
        got.recalibrate(batches)
        want = sn.extract(arch)
        recalibrate_bn(want, want, batches)
        with torch.no_grad():
            assert _rel(got(x), want.eval()(x)) < 1e-4
    assert cache.misses == 3  # seed 0 again after seed 1: its entry was replaced, not reused


def test_bf16_close_to_autocast_module():
    space, sn = _supernet()
    x = torch.randn(8, 3, 8, 8)
    batches = _batches()
    for arch in _archs(6):
        net = sn.extract(arch)
        recalibrate_bn(net, net, batches)
        with torch.no_grad():
            ref = net(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                auto = net(x).float()
            program = CompiledNB201(copy.deepcopy(net), dtype=torch.bfloat16)
            got = program(x)
        assert got.dtype == torch.bfloat16
        assert _rel(got.float(), ref) < max(3 * _rel(auto, ref), 2e-2), arch
        p = CompiledNB201(sn.extract(arch), dtype=torch.bfloat16)
        p.recalibrate(batches)  # bf16 recalibration: statistics close to fp32's
        want, got = _live_buffers(net, arch), _live_buffers(p.net, arch)
        for name, a in want.items():
            if a.dtype.is_floating_point:
                assert torch.allclose(a, got[name], rtol=5e-2, atol=5e-2), (arch, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (2, 2), (3, 7), (8, 8)])
def test_pool_equals_avg_pool2d(dtype, h, w):
    _, sn = _supernet()
    program = CompiledNB201(sn.extract(("avg_pool_3x3",) * 6), dtype=dtype)
    x = torch.randn(3, 4, h, w).to(dtype).contiguous(memory_format=torch.channels_last)
    want = F.avg_pool2d(x.float(), 3, 1, 1, count_include_pad=False)
    got = program._pool3(x)
    assert got.dtype == dtype and got.shape == x.shape
    assert _rel(got.float(), want) < (1e-6 if dtype == torch.float32 else 2e-2)


def test_not_supported_reasons():
    _, sn = _supernet()
    net = sn.extract(SPECIAL[4])
    assert not_supported_reasons(net) == []
    assert not_supported_reasons(torch.nn.Linear(2, 2)) == ["expected an NB201Network, got Linear"]
    hooked = copy.deepcopy(net)
    hooked.cells[0].register_forward_hook(lambda *a: None)
    assert "forward hooks" in not_supported_reasons(hooked)[0]
    double = copy.deepcopy(net).double()
    assert any("float32" in r for r in not_supported_reasons(double))
    with pytest.raises(ValueError, match="cannot run it: .*forward hooks"):
        CompiledNB201(hooked)
    with pytest.raises(ValueError, match="dtype=torch.float16"):
        CompiledNB201(net, dtype=torch.float16)
    with pytest.raises(ValueError, match="mode='fast'"):
        CompiledNB201(net).recalibrate(_batches(), mode="fast")


def test_every_two_edge_pattern_equals_module():
    """All 5**2 op pairs on the two edges into node 2 from node 0 and node 1 (the others fixed), with
    node 1 both live and zero: pruning, pooling and skips agree with the module everywhere."""
    _, sn = _supernet()
    x = torch.randn(4, 3, 8, 8)
    batches = _batches(k=2)
    for first, (a, b) in itertools.product(("none", "nor_conv_1x1"), itertools.product(OPS, OPS)):
        arch = (first, a, b, "skip_connect", "avg_pool_3x3", "nor_conv_3x3")
        ref = sn.extract(arch)
        recalibrate_bn(ref, ref, batches)
        program = CompiledNB201(sn.extract(arch))
        program.recalibrate(batches)
        with torch.no_grad():
            assert _rel(program(x), ref(x)) < 1e-4, arch
