"""The evaluator's compiled route (NB201's CompiledNB201) gives the losses of the generic routes, and its
stem cache never outlives the weights or images it was computed from."""

from __future__ import annotations

import io
import random

import pytest
import torch
from torch import nn

from fastnas.metrics import FlatnessConfig, MultiSigmaEvaluator, make_score_fn
from fastnas.spaces.base import BatchedForward
from fastnas.spaces.darts import DARTS
from fastnas.spaces.nb201 import NB201, NB201Supernet


class _PlainBatched(NB201Supernet):
    """A supernet whose batched forward declares no compile(): the protocol's default compiles nothing."""

    def batched_forward(self):
        return BatchedForward()


def _supernet(seed=0):
    torch.manual_seed(seed)
    sn = NB201(C=4, N=1, resolution=8).supernet()
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return sn


def _data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def _archs(space, n=6, seed=3):
    rng = random.Random(seed)
    return [("none", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3")] + \
        [space.sample(rng) for _ in range(n)]


@pytest.mark.parametrize("noise,bn_mode", [("independent", "exact"), ("cumulative", "momentum"), ("shared", "exact")])
def test_compiled_route_equals_generic_routes(noise, bn_mode):
    sn = _supernet()
    x, y = _data()
    calib = torch.randn(40, 3, 8, 8)
    before = _bytes(sn)
    kw = dict(sigmas=(0.01, 0.05, 0.2), samples=2, noise=noise, seed=4, calib_x=calib, bn_batches=3,
              bn_batch_size=8, bn_mode=bn_mode)
    compiled = MultiSigmaEvaluator(sn, x, y, **kw)
    generic = MultiSigmaEvaluator(sn, x, y, compiled=False, **kw)
    supernet_route = MultiSigmaEvaluator(sn, x, y, extract=False, **kw)
    archs = _archs(sn.space)
    for arch in archs:
        got = compiled.evaluate(arch, clean=True)
        assert compiled.report()["compiled"] and "compiled forward" in compiled.report()["route_reason"]
        for ref in (generic.evaluate(arch, clean=True), supernet_route.evaluate(arch, clean=True)):
            assert got.clean_loss == pytest.approx(ref.clean_loss, rel=1e-5)
            for a, b in zip(got.losses, ref.losses):
                assert list(a) == pytest.approx(list(b), rel=1e-5)
            assert got.accuracies == ref.accuracies
        assert not generic.report()["compiled"] and "compiled=False" in generic.report()["route_reason"]
    assert compiled.report()["stem_cache"] == {"hits": len(archs) - 1, "misses": 1}
    assert _bytes(sn) == before  # the supernet's weights and statistics are untouched


def test_stem_cache_follows_weight_changes():
    """A training step between evaluations (in-place updates of every parameter, the stem's included)
    gives the losses of a fresh evaluator: the cached stem output is never reused for other weights."""
    sn = _supernet()
    x, y = _data()
    calib = torch.randn(40, 3, 8, 8)
    kw = dict(sigmas=(0.01, 0.1), calib_x=calib, bn_batches=3, bn_batch_size=8)
    ev = MultiSigmaEvaluator(sn, x, y, **kw)
    arch = _archs(sn.space)[1]
    first = ev.evaluate(arch).losses
    with torch.no_grad():
        for p in sn.parameters():
            p.mul_(0.9).add_(0.05)
    second = ev.evaluate(arch).losses
    fresh = MultiSigmaEvaluator(sn, x, y, **kw).evaluate(arch).losses
    generic = MultiSigmaEvaluator(sn, x, y, compiled=False, **kw).evaluate(arch).losses
    assert second == fresh and second != first
    for a, b in zip(second, generic):
        assert list(a) == pytest.approx(list(b), rel=1e-5)
    assert ev.report()["stem_cache"]["misses"] == 2
    # a second supernet with another stem has its own cache and its own results
    other = _supernet(seed=1)
    got = MultiSigmaEvaluator(other, x, y, **kw).evaluate(arch).losses
    want = MultiSigmaEvaluator(other, x, y, compiled=False, **kw).evaluate(arch).losses
    for a, b in zip(got, want):
        assert list(a) == pytest.approx(list(b), rel=1e-5)


def test_compiled_bf16_close_to_fp32():
    sn = _supernet()
    x, y = _data(48)
    kw = dict(sigmas=(0.01, 0.1), calib_x=torch.randn(40, 3, 8, 8), bn_batches=3, bn_batch_size=8)
    fp32 = MultiSigmaEvaluator(sn, x, y, **kw)
    bf16 = MultiSigmaEvaluator(sn, x, y, precision="bf16", **kw)
    for arch in _archs(sn.space, 3):
        a, b = fp32.evaluate(arch).mean_losses, bf16.evaluate(arch).mean_losses
        assert bf16.report()["compiled"]
        assert list(b) == pytest.approx(list(a), rel=2e-2)


def test_compiled_choices_are_checked():
    x, y = _data()
    sn = _supernet()
    with pytest.raises(ValueError, match="compiled='yes'"):
        MultiSigmaEvaluator(sn, x, y, compiled="yes")
    torch.manual_seed(0)
    darts = DARTS(C=4, layers=3, resolution=8).supernet()
    with pytest.raises(ValueError, match="compiled=True: DARTSSupernet has no compiled forward"):
        MultiSigmaEvaluator(darts, x, y, compiled=True)
    ev = MultiSigmaEvaluator(darts, x, y, sigmas=(0.1,))  # 'auto': the generic route, and why
    ev.evaluate(DARTS(C=4, layers=3, resolution=8).sample(random.Random(0)))
    assert not ev.report()["compiled"] and "no compiled forward" in ev.report()["route_reason"]
    with pytest.raises(ValueError, match="compiled=True needs fold_bn=True"):
        MultiSigmaEvaluator(sn, x, y, sigmas=(0.1,), compiled=True, fold_bn=False).evaluate(_archs(sn.space)[0])
    ev = MultiSigmaEvaluator(sn, x, y, sigmas=(0.1,), fold_bn=False)
    ev.evaluate(_archs(sn.space)[0])
    assert not ev.report()["compiled"] and "fold_bn=False" in ev.report()["route_reason"]
    plain = _PlainBatched(NB201(C=4, N=1, resolution=8))
    with pytest.raises(ValueError, match="compiled=True: _PlainBatched has no compiled forward"):
        MultiSigmaEvaluator(plain, x, y, compiled=True)
    ev = MultiSigmaEvaluator(plain, x, y, sigmas=(0.1,))
    ev.evaluate(_archs(sn.space)[0])
    assert not ev.report()["compiled"] and "has no compiled forward" in ev.report()["route_reason"]


def test_score_fn_uses_the_compiled_route():
    sn = _supernet()
    x, y = _data()
    cfg = FlatnessConfig(sigmas=(0.01, 0.1), bn_batches=2, bn_batch_size=8)
    fn = make_score_fn("flatness", sn, valid=(x, y), calib_x=torch.randn(32, 3, 8, 8), flatness_config=cfg)
    fn(_archs(sn.space)[2])
    report = fn.stats()["evaluator"]
    assert report["compiled"] and report["route"] == "extracted" and report["stem_cache"]["misses"] == 1
