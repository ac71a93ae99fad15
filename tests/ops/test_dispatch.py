"""Backend choice: explicit names, the FASTNAS_BACKEND override and its fallback for ops without it."""

from __future__ import annotations

import logging

import pytest
import torch

import fastnas
from fastnas.ops import _dispatch, override_routes
from fastnas.ops.fold import DISPATCH as FOLD
from fastnas.ops.fold import FoldSpec, fold_conv_bn
from fastnas.ops.reduce import DISPATCH as REDUCE
from fastnas.ops.reduce import loss_correct_

STATUS = fastnas.backends()


def _fold_spec():
    g = torch.Generator().manual_seed(0)
    return FoldSpec(torch.zeros(2, 3, 3, 3), torch.zeros(2), torch.randn(2, 3, 3, 3, generator=g))


def _reduce_args():
    return (torch.randn(4, 3), torch.tensor([0, 2, 1, 1]), torch.zeros(1, dtype=torch.float64),
            torch.zeros(1, dtype=torch.int64))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_override_falls_back_for_ops_without_that_backend(monkeypatch):
    # loss_correct has no "cuda" backend and fold_conv_bn no "triton": they choose automatically.
    monkeypatch.setenv("FASTNAS_BACKEND", "cuda")
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    log, handler = logging.getLogger("fastnas.ops._dispatch"), _Records()
    old = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)  # (the CLI may stop fastnas loggers from propagating to pytest's capture)
    try:
        loss_correct_(*_reduce_args())
        loss_correct_(*_reduce_args())
    finally:
        log.removeHandler(handler)
        log.setLevel(old)
    assert REDUCE.pick(torch.device("cpu"), {torch.float32}).name in ("cpp", "reference")
    lines = [m for m in handler.messages if "loss_correct has no 'cuda' backend" in m]
    assert len(lines) == 1  # said once
    monkeypatch.setenv("FASTNAS_BACKEND", "triton")
    spec = _fold_spec()
    fold_conv_bn([spec])
    assert FOLD.pick(torch.device("cpu"), {torch.float32}).name in ("cpp", "reference")
    assert spec.dst.abs().sum() > 0


def test_override_applies_to_ops_that_have_it(monkeypatch):
    monkeypatch.setenv("FASTNAS_BACKEND", "reference")
    t = [torch.randn(5)]
    assert fastnas.perturb_(t, 0.1).backend == "reference"
    assert REDUCE.pick(torch.device("cpu"), {torch.float32}).name == "reference"
    assert FOLD.pick(torch.device("cpu"), {torch.float32}).name == "reference"
    if not STATUS["cuda"].available:
        # perturb has a cuda backend: forced, it is used or rejected with the reason, never swapped.
        monkeypatch.setenv("FASTNAS_BACKEND", "cuda")
        with pytest.raises(NotImplementedError, match="backend 'cuda' cannot run here"):
            fastnas.perturb_(t, 0.1)


def test_explicit_backend_beats_the_override(monkeypatch):
    monkeypatch.setenv("FASTNAS_BACKEND", "reference")
    if STATUS["cpp"].available:
        assert fastnas.perturb_([torch.randn(3)], 0.1, backend="cpp").backend == "cpp"
    with pytest.raises(ValueError, match="backend='cuda' is not a backend of loss_correct"):
        loss_correct_(*_reduce_args(), backend="cuda")


def test_unknown_override_is_an_error_with_a_hint(monkeypatch):
    monkeypatch.setenv("FASTNAS_BACKEND", "trition")
    with pytest.raises(ValueError, match=r"FASTNAS_BACKEND='trition' is not a backend of any op.*'triton'"):
        loss_correct_(*_reduce_args())


def test_override_routes_report(monkeypatch):
    monkeypatch.delenv("FASTNAS_BACKEND", raising=False)
    assert override_routes() == {}
    monkeypatch.setenv("FASTNAS_BACKEND", "cuda")
    routes = override_routes()
    assert routes["perturb"] == "cuda" and routes["fold_conv_bn"] == "cuda"
    assert routes["loss_correct"] == "automatic (no 'cuda' backend)"
