"""fold_conv_bn: the C++ kernel against the torch reference, and the fold against BatchNorm itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastnas
from fastnas.ops.fold import FoldSpec, fold_conv_bn

HAS_CPP = fastnas.backends()["cpp"].available


def _spec(g, c_out=5, c_in=3, ks=3, kd=3, bn=True, affine=True, weight=True, conv_bias=False):
    return FoldSpec(
        torch.full((c_out, c_in, kd, kd), 7.0), torch.full((c_out,), 7.0),
        torch.randn(c_out, c_in, ks, ks, generator=g) if weight else None,
        torch.randn(c_out, generator=g) if bn else None,
        torch.rand(c_out, generator=g) + 0.1 if bn else None,
        torch.randn(c_out, generator=g) if bn and affine else None,
        torch.randn(c_out, generator=g) if bn and affine else None, 1e-5,
        torch.randn(c_out, generator=g) if conv_bias else None)


def _clone(s):
    return FoldSpec(**{**s.__dict__, "dst": s.dst.clone(), "bias": s.bias.clone()})


CASES = [dict(ks=1, kd=3), dict(), dict(bn=False), dict(ks=1, kd=1, affine=False), dict(weight=False),
         dict(c_out=17, c_in=1), dict(ks=3, kd=5), dict(conv_bias=True), dict(conv_bias=True, bn=False)]


@pytest.mark.skipif(not HAS_CPP, reason="fastnas._C not built")
def test_cpp_bit_exact_vs_reference():
    g = torch.Generator().manual_seed(0)
    specs = [_spec(g, **kw) for kw in CASES]
    a, b = [_clone(s) for s in specs], [_clone(s) for s in specs]
    fold_conv_bn(a, backend="cpp")
    fold_conv_bn(b, backend="reference")
    for x, y in zip(a, b):
        assert torch.equal(x.dst, y.dst) and torch.equal(x.bias, y.bias)


@pytest.mark.parametrize("kw", CASES)
def test_folded_conv_equals_conv_then_batchnorm(kw):
    g = torch.Generator().manual_seed(1)
    s = _spec(g, **kw)
    fold_conv_bn([s])
    x = torch.randn(2, s.dst.shape[1], 9, 9, generator=g)
    got = F.conv2d(x, s.dst, s.bias, padding=s.dst.shape[-1] // 2)
    if s.weight is None:
        assert torch.count_nonzero(got) == 0
        return
    want = F.conv2d(x, s.weight, s.conv_bias, padding=s.weight.shape[-1] // 2)
    if s.mean is not None:
        want = F.batch_norm(want, s.mean, s.var, s.gamma, s.beta, training=False, eps=s.eps)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bad_specs():
    g = torch.Generator().manual_seed(2)
    s = _spec(g)
    with pytest.raises(ValueError, match=r"items\[0\].weight shape"):
        fold_conv_bn([FoldSpec(s.dst, s.bias, torch.randn(5, 3, 2, 2))])
    with pytest.raises(ValueError, match="both mean and var"):
        fold_conv_bn([FoldSpec(s.dst, s.bias, s.weight, mean=s.mean)])
    with pytest.raises(ValueError, match="float32"):
        fold_conv_bn([FoldSpec(s.dst.double(), s.bias, s.weight)])
    with pytest.raises(TypeError, match="FoldSpec"):
        fold_conv_bn([("not", "a spec")])


@pytest.mark.gpu
def test_cuda_matches_reference():
    if not fastnas.backends()["cuda"].available:
        pytest.skip(fastnas.backends()["cuda"].reason)
    g = torch.Generator().manual_seed(3)
    specs = [_spec(g, **kw) for kw in CASES]
    on_gpu = [FoldSpec(**{k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in s.__dict__.items()})
              for s in specs]
    fold_conv_bn(on_gpu, backend="cuda")
    fold_conv_bn(specs, backend="reference")
    for a, b in zip(on_gpu, specs):
        assert torch.allclose(a.dst.cpu(), b.dst, rtol=1e-6, atol=0) and torch.allclose(a.bias.cpu(), b.bias, rtol=1e-6,
                                                                                        atol=1e-7)
