"""The Triton launchers: no device allocation per call, unsupported inputs rejected before launching."""

from __future__ import annotations

import pytest
import torch

import fastnas
from fastnas.ops.layout import resolve_params
from fastnas.ops.perturb import reference
from fastnas.ops.perturb import triton as tr

pytestmark = pytest.mark.skipif(not fastnas.backends()["triton"].available,
                                reason=str(fastnas.backends()["triton"].reason))
DEVICE = "cpu" if "cpu" in fastnas.backends()["triton"].devices else "cuda"


def test_float64_sigma_tensor_is_reused(monkeypatch):
    tr._SIGMA64.clear()
    x = torch.randn(37, dtype=torch.float64, device=DEVICE)
    made = []
    real_tensor = torch.tensor

    def counting_tensor(*args, **kw):
        if kw.get("dtype") is torch.float64:
            made.append(args)
        return real_tensor(*args, **kw)

    monkeypatch.setattr(tr.torch, "tensor", counting_tensor)
    for _ in range(3):
        fastnas.restore_([x], fastnas.perturb_([x], 0.25, seed=1, backend="triton"))
    assert len(made) == 1  # one float64 sigma tensor for three calls with that sigma
    assert tr._sigma64(0.25, x.device) is tr._sigma64(0.25, x.device)


def test_float64_values_still_match_the_reference():
    x = torch.randn(37, dtype=torch.float64, device=DEVICE)
    want = x.cpu() + reference.normals(37, 4, 2, 0).double() * 0.3
    fastnas.perturb_([x], 0.3, seed=4, stream=2, backend="triton")
    assert torch.allclose(x.cpu(), want, rtol=0, atol=1e-6 if DEVICE == "cuda" else 0)


def test_unsupported_dtype_is_rejected_before_any_launch():
    good, bad = torch.randn(5, device=DEVICE), torch.arange(4, device=DEVICE, dtype=torch.int32)
    orig = good.clone()
    segments = resolve_params([good, bad], None)
    with pytest.raises(NotImplementedError, match=r"triton perturb: dtype torch.int32 not supported"):
        tr.perturb(segments, None, None, 0.1, 0, 0)
    assert torch.equal(good, orig)  # the first tensor was not perturbed either


def test_grid_limit_is_checked_before_any_launch(monkeypatch):
    a, b = torch.randn(8, device=DEVICE), torch.randn(50_000, device=DEVICE)
    orig = [a.clone(), b.clone()]
    monkeypatch.setattr(tr, "_MAX_GRID_X", 3)  # b needs ceil(12500 / 1024) = 13 programs
    with pytest.raises(NotImplementedError, match=r"13 programs exceed the grid limit 3"):
        fastnas.perturb_([a, b], 0.1, backend="triton")
    assert torch.equal(a, orig[0]) and torch.equal(b, orig[1])
    with pytest.raises(NotImplementedError, match="grid limit"):
        fastnas.noise(50_000, backend="triton", device=DEVICE)


@pytest.mark.parametrize("block", [1, 1024])
def test_slice_with_many_runs_in_one_launch(monkeypatch, block):
    # 40 runs of 3 elements in one launch; with BLOCK=1 each run takes two programs (program -> run, block).
    monkeypatch.setattr(tr, "_BLOCK", block)
    w = torch.randn(40, 9, device=DEVICE)
    s = fastnas.ParamSlice("w", ((0, 40), (5, 8)))
    p = w.clone()
    fastnas.perturb_([(s, p)], 0.2, seed=5, backend="triton")
    want = w.cpu().clone()
    fastnas.perturb_([(s, want)], 0.2, seed=5, backend="reference")
    assert torch.allclose(p.cpu(), want, rtol=1e-6, atol=1e-7) if DEVICE == "cuda" else torch.equal(p, want)


def test_words_need_no_staging_buffer():
    out = torch.empty((9, 4), dtype=torch.int64, device=DEVICE)
    tr.words(out, 2**32 - 3, 7, 8)
    assert torch.equal(out.cpu(), reference.philox_words(torch.arange(2**32 - 3, 2**32 + 6), 7, 8))
    with pytest.raises(NotImplementedError, match="dtype torch.int32"):
        tr.words(torch.empty((9, 4), dtype=torch.int32, device=DEVICE), 0, 0, 0)
