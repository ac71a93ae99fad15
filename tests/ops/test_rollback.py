"""A perturb_ call that fails leaves every tensor exactly as it was, written or not."""

from __future__ import annotations

import pytest
import torch

import fastnas
from fastnas.ops.perturb import reference

STATUS = fastnas.backends()
BACKENDS = ["reference"] + [b for b in ("cpp", "triton") if STATUS[b].available and "cpu" in STATUS[b].devices]


def test_failure_midway_restores_the_written_tensors_and_leaves_the_rest(monkeypatch):
    ts = [torch.randn(9), torch.randn(4, 3), torch.randn(5), torch.randn(6)]
    orig = [t.clone() for t in ts]
    real = reference._perturbed_value
    calls = []

    def fail_on_third(x, sigma, z):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(x, sigma, z)

    monkeypatch.setattr(reference, "_perturbed_value", fail_on_third)
    with pytest.raises(RuntimeError, match="boom"):
        fastnas.perturb_(ts, 0.5, seed=1, backend="reference")
    for t, o in zip(ts, orig):  # the first two were written and put back; the others never touched
        assert torch.equal(t, o)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejected_input_writes_nothing(backend):
    # A tensor the layout does not know is rejected before any kernel runs; a reused backup buffer
    # holding other values must not be copied into the tensors.
    a, b = torch.randn(8), torch.randn(8)
    backup = fastnas.perturb_([b], 0.1, backend=backend)  # buffer now holds b's values
    orig = a.clone()
    with pytest.raises(TypeError):
        fastnas.perturb_([a, torch.arange(3)], 0.1, backend=backend, backup=backup)
    assert torch.equal(a, orig)
