"""loss_correct_: every backend against the torch reference and against a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

import fastnas
from fastnas.ops.reduce import loss_correct_

STATUS = fastnas.backends()
BACKENDS = ["reference"] + [b for b in ("cpp", "triton") if STATUS[b].available and "cpu" in STATUS[b].devices]


def test_hand_computed_case():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])  # row 1: a tie -> index 0 (first maximum)
    labels = torch.tensor([1, 1])
    loss, correct = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)
    loss_correct_(logits, labels, loss, correct)
    # row 0: -log(3/4); row 1: -log(1/2); only row 0 is right
    assert loss.item() == pytest.approx(-math.log(0.75) - math.log(0.5), rel=1e-6)
    assert correct.item() == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_match_reference_with_slots(backend):
    g = torch.Generator().manual_seed(0)
    k, b, c = 3, 37, 10
    logits = torch.randn(k, b, c, generator=g) * 3
    logits[0, 5, :] = 1.0  # ties everywhere: the first index wins
    labels = torch.randint(0, c, (b,), generator=g)
    want_loss, want_correct = torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.int64)
    for j in range(k):
        want_loss[1 + j] = torch.nn.functional.cross_entropy(logits[j].double(), labels, reduction="sum")
        want_correct[1 + j] = (logits[j].argmax(1) == labels).sum()
    loss, correct = torch.full((5,), 0.5, dtype=torch.float64), torch.ones(5, dtype=torch.int64)
    loss_correct_(logits, labels, loss, correct, slot=1, backend=backend)
    assert torch.allclose(loss - 0.5, want_loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(correct - 1, want_correct)


def test_bad_input():
    loss, correct = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="logits has shape"):
        loss_correct_(torch.randn(4), torch.zeros(4, dtype=torch.int64), loss, correct)
    with pytest.raises(ValueError, match="labels"):
        loss_correct_(torch.randn(4, 3), torch.zeros(4, dtype=torch.int32), loss, correct)
    with pytest.raises(ValueError, match="do not fit"):
        loss_correct_(torch.randn(3, 4, 3), torch.zeros(4, dtype=torch.int64), loss, correct)
    with pytest.raises(ValueError, match="float64 and int64"):
        loss_correct_(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64), loss.float(), correct)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton"])
def test_gpu_matches_reference(backend):
    if not STATUS[backend].available:
        pytest.skip(STATUS[backend].reason)
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(4, 300, 100, generator=g), torch.randint(0, 100, (300,), generator=g)
    acc = [torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)]
    loss_correct_(logits, labels, *acc, backend="reference")
    gpu = [a.cuda() for a in (torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.int64))]
    loss_correct_(logits.cuda(), labels.cuda(), *gpu, backend=backend)
    assert torch.allclose(gpu[0].cpu(), acc[0], rtol=1e-5) and torch.equal(gpu[1].cpu(), acc[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [-1, 3, 99])
def test_label_range_is_checked_once_for_every_backend(backend, bad):
    # The Triton kernel would read class 0 for a label past the end, the C++ one threw its own error:
    # the public function rejects it first, with one message.
    loss, correct = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)
    labels = torch.tensor([0, bad, 1])
    with pytest.raises(ValueError, match=rf"labels: values from {min(bad, 0)} to {max(bad, 1)}; expected class "
                                         r"indices in \[0, 3\)"):
        loss_correct_(torch.randn(3, 3), labels, loss, correct, backend=backend)
    assert loss.item() == 0 and correct.item() == 0  # nothing accumulated


def test_triton_class_limit_is_a_declared_reason():
    from fastnas.ops.reduce import DISPATCH
    from fastnas.ops.reduce import triton as tr

    assert tr.limits({"rows": 10, "classes": 10}) == []
    assert "classes exceed" in tr.limits({"rows": 10, "classes": tr._MAX_CLASSES + 1})[0]
    if STATUS["triton"].available and "cpu" in STATUS["triton"].devices:
        big = {"rows": 4, "classes": tr._MAX_CLASSES + 1}
        with pytest.raises(NotImplementedError, match="classes exceed"):
            DISPATCH.pick(torch.device("cpu"), {torch.float32}, "triton", sizes=big)
        with pytest.raises(NotImplementedError, match="classes exceed"):
            tr.loss_correct_(torch.zeros(4, tr._MAX_CLASSES + 1), torch.zeros(4, dtype=torch.int64),
                             torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.int64), 0, 4)
