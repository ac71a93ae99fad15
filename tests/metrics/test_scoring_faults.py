"""A fault inside scoring leaves the supernet exactly as it was and the score function usable.

Faults are injected at the k-th call of ``torch.nn.functional.conv2d`` (what every convolution module
calls, and what the compiled and batched forwards call directly, so one injection point reaches every
route, recalibration and every perturbed pass included), and with a forward hook on the supernet's own
modules where the route runs them. Each fault is one of: an exception, ``torch.OutOfMemoryError`` (how an
out-of-memory shows on CPU), ``KeyboardInterrupt``, and SIGTERM sent to this process while the CLI's
handler (:func:`fastnas.cli.interrupt_signals`) is installed. After each: the exception comes out with its
type, every parameter and buffer of the supernet (BatchNorm running statistics and counters included) is
bit-identical, its train/eval flags and BatchNorm momenta are as before, and scoring the same candidate
again gives exactly the score of a run without the fault.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from _scoring_setup import modes, search_score_fn, state_bytes, tiny_setup
from fastnas.cli import Interrupted, interrupt_signals
from fastnas.metrics import MultiSigmaEvaluator

ARCH = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "none", "nor_conv_3x3")

#: Evaluator settings that select each route (report()["route"], compiled).
ROUTES = {
    "compiled": ({}, ("extracted", True)),
    "generic": ({"compiled": False}, ("extracted", False)),
    "supernet": ({"extract": False}, ("supernet", False)),
    "supernet-cumulative": ({"extract": False, "noise": "cumulative"}, ("supernet", False)),
    "batched": ({"batched": True}, ("batched", False)),
}
IN_PLACE = ("supernet", "supernet-cumulative", "batched")  # routes that recalibrate the supernet's own BN


class Injected(Exception):
    pass


def _raise(exc):
    def fault():
        raise exc

    return fault


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode: still inside the forward


FAULTS = {
    "exception": (lambda: _raise(Injected("injected")), Injected),
    "out-of-memory": (lambda: _raise(torch.OutOfMemoryError("CUDA out of memory (injected)")), torch.OutOfMemoryError),
    "keyboard-interrupt": (lambda: _raise(KeyboardInterrupt()), KeyboardInterrupt),
    "sigterm": (lambda: _sigterm, Interrupted),
}


@pytest.fixture
def setup():  # per test: a broken restore fails the test that breaks it, not those after it
    return tiny_setup()


def _score_fn(setup, route: str):
    """The search's score function, its evaluator replaced by one of the same settings on ``route``."""
    space, sn, init, data = setup
    fn = search_score_fn(space, sn, init, data)
    kw, _ = ROUTES[route]
    if kw:
        inner = fn.fn
        ev = inner.evaluator
        vx, vy, cx = data
        settings = dict(sigmas=ev.sigmas, samples=ev.samples, noise=ev.noise, seed=ev.seed, calib_x=cx,
                        bn_batches=ev.bn_batches, bn_batch_size=ev.bn_batch_size, bn_mode=ev.bn_mode)
        settings.update(kw)
        inner.evaluator = MultiSigmaEvaluator(sn, vx, vy, **settings)
    return fn


class ConvCalls:
    """``torch.nn.functional.conv2d`` counting its calls and running ``fault()`` at call ``at``; ``seen``
    records, at that moment, whether the supernet's parameters (and BatchNorm buffers) differed from
    ``before`` (so a test knows the restore machinery had something to undo)."""

    def __init__(self, monkeypatch, at=None, fault=None, sn=None, before=None):
        self.calls, self.at, self.fault, self.sn, self.before = 0, at, fault, sn, before
        self.changed = None
        real = torch.nn.functional.conv2d

        def conv2d(*args, **kwargs):
            self.calls += 1
            if self.calls == self.at:
                if self.sn is not None:
                    self.changed = state_bytes(self.sn) != self.before
                self.fault()
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)


def _count_calls(setup, route, monkeypatch) -> int:
    fn = _score_fn(setup, route)
    with monkeypatch.context() as m:
        counter = ConvCalls(m)
        fn(ARCH)
    return counter.calls


@pytest.fixture
def pristine():
    """The supernet's state and flags before any scoring (``tiny_setup`` is deterministic)."""
    sn = tiny_setup()[1]
    return state_bytes(sn), modes(sn)


@pytest.fixture
def reference(pristine):
    """The score of ARCH per route, without faults, from a fresh score function on its own supernet,
    which a finished scoring leaves as it was, on every route."""
    out = {}
    for route, (_, expected) in ROUTES.items():
        own = tiny_setup()
        fn = _score_fn(own, route)
        out[route] = fn(ARCH)
        report = fn.fn.evaluator.report()
        assert (report["route"], report["compiled"]) == expected, (route, report["route_reason"])
        assert (state_bytes(own[1]), modes(own[1])) == pristine, f"{route}: a finished scoring changed the supernet"
    return out


def _fault_then_check(setup, pristine, reference, route, fault_name, k, monkeypatch):
    space, sn, init, data = setup
    before, flags = pristine
    fn = _score_fn(setup, route)
    make, exc_type = FAULTS[fault_name]
    with monkeypatch.context() as m:
        counter = ConvCalls(m, at=k, fault=make(), sn=sn, before=before)
        with interrupt_signals(), pytest.raises(exc_type):
            fn(ARCH)
    assert counter.calls >= k
    assert state_bytes(sn) == before, f"{route}: {fault_name} at conv call {k} left the supernet changed"
    assert modes(sn) == flags, f"{route}: {fault_name} at conv call {k} left train flags or BN momenta changed"
    again = fn(ARCH)  # the same score function goes on, with the same result as without the fault
    assert again == reference[route], (route, fault_name, k)
    return counter.changed


@pytest.mark.parametrize("route", list(ROUTES))
def test_an_exception_at_convolutions_throughout_scoring_restores_the_supernet(setup, pristine, reference, route, monkeypatch):
    n = _count_calls(setup, route, monkeypatch)
    assert n > 4
    points = sorted(set(range(1, n + 1, 3)) | {n})  # every third convolution of the scoring, and the last
    changed = [_fault_then_check(setup, pristine, reference, route, "exception", k, monkeypatch) for k in points]
    if route in IN_PLACE:
        # The supernet's own tensors were modified at the moment of some faults (BatchNorm statistics
        # being recalibrated, parameters perturbed): the restore had real work to do.
        assert any(changed), route
    else:
        assert not any(changed), f"{route}: the extracted route must never touch the supernet"


@pytest.mark.parametrize("fault", ["out-of-memory", "keyboard-interrupt", "sigterm"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_oom_interrupt_and_sigterm_inside_scoring_restore_the_supernet(setup, pristine, reference, route, fault, monkeypatch):
    n = _count_calls(setup, route, monkeypatch)
    # the first convolution (recalibration), one in the middle, the last one (the last perturbed pass)
    for k in sorted({1, n // 2, n}):
        _fault_then_check(setup, pristine, reference, route, fault, k, monkeypatch)


def test_the_last_convolution_runs_with_the_supernet_perturbed(setup, monkeypatch):
    # So the faults at call n above really hit a perturbed supernet on the in-place route.
    space, sn, init, data = setup
    before = state_bytes(sn)
    n = _count_calls(setup, "supernet", monkeypatch)
    with monkeypatch.context() as m:
        counter = ConvCalls(m, at=n, fault=lambda: None, sn=sn, before=before)
        _score_fn(setup, "supernet")(ARCH)
    assert counter.changed is True


@pytest.mark.parametrize("route", IN_PLACE)
def test_a_forward_hook_that_raises_on_the_kth_call_restores_the_supernet(setup, pristine, reference, route):
    space, sn, init, data = setup
    before, flags = pristine
    fn = _score_fn(setup, route)
    calls = []

    def hook(module, inputs, output):
        calls.append(module)

    handles = [m.register_forward_hook(hook) for m in sn.modules() if m is not sn]
    try:
        fn(ARCH)
        n = len(calls)
    finally:
        for h in handles:
            h.remove()
    assert (state_bytes(sn), modes(sn)) == pristine
    if route == "batched":  # the mixed-op forward runs no module of the supernet for the scored passes
        assert n > 0
    fn = _score_fn(setup, route)
    for k in sorted({1, n // 3, n // 2, n}):
        calls.clear()

        def raising(module, inputs, output, k=k):
            calls.append(module)
            if len(calls) == k:
                raise Injected(f"hook call {k}")

        handles = [m.register_forward_hook(raising) for m in sn.modules() if m is not sn]
        try:
            with pytest.raises(Injected):
                fn(ARCH)
        finally:
            for h in handles:
                h.remove()
        assert state_bytes(sn) == before, (route, k)
        assert modes(sn) == flags, (route, k)
    assert fn(ARCH) == reference[route]
