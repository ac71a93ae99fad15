"""perturb_ / restore_ / perturbed / perturbed_copies: every backend against the reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import fastnas
from fastnas.ops.perturb import reference
from _ulp import ulp_distance

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
STATUS = fastnas.backends()
CPU_BACKENDS = [b for b in ("cpp", "triton") if STATUS[b].available and "cpu" in STATUS[b].devices]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x))


def odd_tensors(dtype, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    shapes = [(3,), (0,), (5, 7), (1,), (2, 3, 5), (1031,), (4, 4, 3, 3)]
    return [torch.randn(s, generator=g).to(dtype) for s in shapes]


def expected_after(tensors, sigma, seed, stream, offsets=None):
    """t + sigma * z written with the reference normals (independent of the reference kernel)."""
    out, pos = [], 0
    for k, t in enumerate(tensors):
        off = offsets[k] if offsets is not None else pos
        z = reference.normals(t.numel(), seed, stream, off).view(t.shape)
        if t.dtype == torch.float64:
            out.append(t + z.double() * sigma)
        else:
            out.append((t.float() + z * torch.tensor(sigma, dtype=torch.float32)).to(t.dtype))
        pos += t.numel()
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_perturb_values_and_exact_restore(backend, dtype):
    ts = odd_tensors(dtype)
    orig = [t.clone() for t in ts]
    want = expected_after(orig, 0.05, 3, 4)
    backup = fastnas.perturb_(ts, 0.05, seed=3, stream=4, backend=backend)
    for t, w in zip(ts, want):
        assert torch.equal(t, w)
    assert any(not torch.equal(t, o) for t, o in zip(ts, orig))
    fastnas.restore_(ts, backup, backend=backend)
    for t, o in zip(ts, orig):
        assert torch.equal(t.view(-1).view(torch.uint8) if t.numel() else t,
                           o.view(-1).view(torch.uint8) if o.numel() else o)


@pytest.mark.parametrize("dtype", DTYPES)
def test_1000_cycles_restore_bit_exact_on_a_cnn(dtype):
    torch.manual_seed(0)
    model = SmallCNN().to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    backup = None
    for i in range(1000):
        backup = fastnas.perturb_(model, 0.02 * (1 + i % 3), seed=i, stream=i % 7, backup=backup)
        if i == 0:
            assert not torch.equal(model.head.weight, before["head.weight"])
        fastnas.restore_(model, backup)
    for k, v in model.state_dict().items():
        assert torch.equal(v.reshape(-1).view(torch.uint8), before[k].reshape(-1).view(torch.uint8)), k


def test_split_into_tensors_does_not_change_values():
    flat = torch.randn(1000)
    parts = [p.clone() for p in flat.split([1, 2, 3, 94, 900])]
    fastnas.perturb_([flat], 0.1, seed=9, stream=1)
    fastnas.perturb_(parts, 0.1, seed=9, stream=1)
    assert torch.equal(torch.cat(parts), flat)


def test_thread_count_does_not_change_values():
    base = torch.randn(300_001)
    a, b = base.clone(), base.clone()
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fastnas.perturb_([a], 0.3, seed=1)
        torch.set_num_threads(2)
        fastnas.perturb_([b], 0.3, seed=1)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a, b)


def test_subset_with_layout_equals_full_model_restricted():
    torch.manual_seed(1)
    full, part = SmallCNN(), SmallCNN()
    part.load_state_dict(full.state_dict())
    layout = fastnas.ParamLayout.from_module(part)
    fastnas.perturb_(full, 0.1, seed=5, stream=2)
    subset_names = ["features.3.weight", "head.bias"]
    named = dict(part.named_parameters())
    fastnas.perturb_([(n, named[n]) for n in subset_names], 0.1, seed=5, stream=2, layout=layout)
    for name, p in part.named_parameters():
        if name in subset_names:
            assert torch.equal(p, dict(full.named_parameters())[name]), name
        else:
            assert not torch.equal(p, dict(full.named_parameters())[name]), name
    # Plain tensors are found in the layout by identity.
    again = SmallCNN()
    again.load_state_dict(part.state_dict())
    lay2 = fastnas.ParamLayout.from_module(again)
    fastnas.perturb_([again.head.weight], 0.1, seed=5, stream=2, layout=lay2)
    assert torch.equal(again.head.weight, dict(full.named_parameters())["head.weight"])


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_perturbed_copies_equal_separate_perturbations(backend):
    ts = odd_tensors(torch.float32, 3)
    orig = [t.clone() for t in ts]
    sigmas = [0.001, 0.01, 0.1]
    outs = fastnas.perturbed_copies(ts, sigmas, seed=2, stream=10, backend=backend)
    for t, o in zip(ts, orig):
        assert torch.equal(t, o)  # masters untouched
    for k, s in enumerate(sigmas):
        want = expected_after(orig, s, 2, 10 + k)
        for j, w in enumerate(want):
            assert outs[j].shape == (len(sigmas),) + tuple(orig[j].shape)
            assert torch.equal(outs[j][k], w)
    shared = fastnas.perturbed_copies(ts, sigmas, seed=2, stream=[4, 4, 4], backend=backend)
    d1 = shared[-1][1] - orig[-1]
    d2 = shared[-1][2] - orig[-1]
    assert torch.allclose(d2, d1 * 10, rtol=1e-4, atol=1e-6)  # one direction scaled by each sigma


def test_context_manager_restores_on_error():
    torch.manual_seed(0)
    model = SmallCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with fastnas.perturbed(model, 0.5, seed=1):
            assert not torch.equal(model.head.weight, before["head.weight"])
            raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_inplace_change_is_visible_to_autograd():
    lin = nn.Linear(4, 3)
    out = (lin.weight * 2).sum() + (lin.weight ** 2).sum()
    backup = fastnas.perturb_([lin.weight], 0.1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()
    fastnas.restore_([lin.weight], backup)


# ---- bad input -----------------------------------------------------------------------------------

def _unchanged(ts, orig):
    return all(torch.equal(t, o) for t, o in zip(ts, orig))


@pytest.mark.parametrize("sigma,exc,pattern", [
    (-0.1, ValueError, "sigma=-0.1"), (float("nan"), ValueError, "sigma=nan"),
    (float("inf"), ValueError, "sigma=inf"), (True, TypeError, "sigma"), ("0.1", TypeError, "sigma"),
])
def test_bad_sigma(sigma, exc, pattern):
    ts = [torch.randn(5)]
    orig = [t.clone() for t in ts]
    with pytest.raises(exc, match=pattern):
        fastnas.perturb_(ts, sigma)
    assert _unchanged(ts, orig)


def test_bad_tensors_leave_nothing_perturbed():
    a, b = torch.randn(10), torch.randn(4, 4)
    orig = [a.clone(), b.clone()]
    with pytest.raises(TypeError, match=r"params\[1\] has dtype torch.int64"):
        fastnas.perturb_([a, torch.arange(3)], 0.1)
    with pytest.raises(ValueError, match=r"params\[1\].*not contiguous"):
        fastnas.perturb_([a, b.t()], 0.1)
    with pytest.raises(ValueError, match=r"overlap"):
        fastnas.perturb_([a, b, a], 0.1)
    with pytest.raises(ValueError, match=r"overlap"):
        fastnas.perturb_([b[:2], b[1:]], 0.1)
    with pytest.raises(ValueError, match=r"params\[1\] is on meta"):
        fastnas.perturb_([a, torch.empty(3, device="meta")], 0.1)
    with pytest.raises(TypeError, match="single Tensor"):
        fastnas.perturb_(a, 0.1)
    assert _unchanged([a, b], orig)


def test_backup_must_belong_to_the_tensors():
    a, b = torch.randn(10), torch.randn(10)
    backup = fastnas.perturb_([a], 0.1)
    with pytest.raises(ValueError, match="does not belong"):
        fastnas.restore_([b], backup)
    with pytest.raises(ValueError, match="holds 1 tensors but 2"):
        fastnas.restore_([a, b], backup)
    with pytest.raises(TypeError, match="backup"):
        fastnas.restore_([a], "not a backup")
    fastnas.restore_([a], backup)


def test_layout_errors():
    model = SmallCNN()
    layout = fastnas.ParamLayout.from_module(model)
    with pytest.raises(ValueError, match="did you mean 'head.weight'"):
        fastnas.perturb_([("head.weigth", model.head.weight)], 0.1, layout=layout)
    with pytest.raises(ValueError, match="is not a tensor of the given layout"):
        fastnas.perturb_([torch.randn(3)], 0.1, layout=layout)
    with pytest.raises(ValueError, match="elements but the layout has"):
        fastnas.perturb_([("head.weight", torch.randn(3))], 0.1, layout=layout)


def test_perturbed_copies_bad_streams():
    with pytest.raises(ValueError, match="one per sigma"):
        fastnas.perturbed_copies([torch.randn(3)], [0.1, 0.2], stream=[1])
    with pytest.raises(ValueError, match="at least one"):
        fastnas.perturbed_copies([torch.randn(3)], [])
    with pytest.raises(ValueError, match=r"sigmas\[1\]"):
        fastnas.perturbed_copies([torch.randn(3)], [0.1, -1])


def test_env_override_and_unavailable_backend(monkeypatch):
    monkeypatch.setenv("FASTNAS_BACKEND", "reference")
    a = torch.randn(7)
    b = fastnas.perturb_([a], 0.1)
    assert b.backend == "reference"
    monkeypatch.setenv("FASTNAS_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTNAS_BACKEND='nope'"):
        fastnas.perturb_([a], 0.1)
    monkeypatch.delenv("FASTNAS_BACKEND")
    if not STATUS["cuda"].available:
        with pytest.raises(NotImplementedError, match="backend 'cuda' cannot run here"):
            fastnas.perturb_([a], 0.1, backend="cuda")


def test_import_without_extension_warns_once_and_falls_back():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules['fastnas._C'] = None  # makes `from fastnas import _C` fail
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            import fastnas, torch
            status = fastnas.backends()
            t = torch.randn(10); orig = t.clone()
            b = fastnas.perturb_([t], 0.1); fastnas.restore_([t], b)
        msgs = [str(w.message) for w in caught if 'fastnas._C' in str(w.message)]
        print(len(msgs), status['cpp'].available, b.backend, torch.equal(t, orig))
        print(status['cpp'].reason)
    """)
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    first, reason = out.stdout.strip().splitlines()
    assert first == "1 False reference True"
    assert "not loaded" in reason


def test_backends_reports_reasons():
    status = fastnas.backends()
    assert status["reference"].available and status["reference"].reason is None
    for s in status.values():
        assert s.available == (s.reason is None)
        assert "perturb" in s.ops


# ---- GPU -----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_backends_match_reference(backend, dtype):
    if not STATUS[backend].available:
        pytest.skip(f"{backend}: {STATUS[backend].reason}")
    ts = [t.cuda() for t in odd_tensors(dtype, 7)]
    orig = [t.clone() for t in ts]
    want = [w.cuda() for w in expected_after([o.cpu() for o in orig], 0.07, 8, 3)]
    backup = fastnas.perturb_(ts, 0.07, seed=8, stream=3, backend=backend)
    torch.cuda.synchronize()
    for t, w in zip(ts, want):
        if dtype == torch.float32:
            # float32 normals may differ by a few ulp across devices; values by the same relative amount
            assert torch.allclose(t, w, rtol=1e-6, atol=1e-7)
        else:
            assert (t.double() - w.double()).abs().max().item() <= 2 * torch.finfo(dtype).eps * max(
                1.0, w.double().abs().max().item())
    fastnas.restore_(ts, backup, backend=backend)
    for t, o in zip(ts, orig):
        assert torch.equal(t, o)
    words = fastnas.philox_words(999, 3, 4, 2**32 - 7, device="cuda", backend=backend).cpu()
    assert torch.equal(words, reference.philox_words(torch.arange(2**32 - 7, 2**32 - 7 + 999), 3, 4))
    z = fastnas.noise(10_001, 3, 4, offset=5, device="cuda", backend=backend).cpu()
    assert ulp_distance(z, reference.normals(10_001, 3, 4, 5)).max().item() <= 4


@pytest.mark.skipif(not hasattr(os, "fork") or not STATUS["cpp"].available, reason="needs fork and fastnas._C")
def test_kernels_work_in_a_forked_child():
    # The C++ kernels keep a thread pool; a forked child (e.g. a DataLoader worker) must get its own.
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = [torch.randn(300_000)]
        fastnas.restore_(x, fastnas.perturb_(x, 0.1))  # starts the pool in the parent
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            ok = False
            try:
                orig = x[0].clone()
                fastnas.restore_(x, fastnas.perturb_(x, 0.1))
                ok = torch.equal(x[0], orig)
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        torch.set_num_threads(old)
