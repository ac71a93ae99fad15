"""loss_correct_: every backend against the torch reference and against a hand-computed case, with and without
the negative-flip count."""

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


@pytest.mark.gpu
def test_gpu_flips_match_reference():
    if not STATUS["triton"].available:
        pytest.skip(STATUS["triton"].reason)
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(4 * 300 + 17, 100, generator=g), torch.randint(0, 100, (300,), generator=g)
    ref = torch.rand(300, generator=g) < 0.6
    logits[3, :] = 1.0  # a tie
    want = _accs(6)
    loss_correct_(logits, labels, *want[:2], slot=1, ref_correct=ref, flips_acc=want[2], backend="reference")
    got = [a.cuda() for a in _accs(6)]
    loss_correct_(logits.cuda(), labels.cuda(), *got[:2], slot=1, ref_correct=ref.cuda(), flips_acc=got[2],
                  backend="triton")
    assert torch.allclose(got[0].cpu(), want[0], rtol=1e-5)
    assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[2].cpu(), want[2])
    assert want[2].sum() > 0


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


# --- negative flips: rows the reference got right and the candidate gets wrong -----------------------------


def _accs(n, loss0=0.0, count0=0):
    return [torch.full((n,), loss0, dtype=torch.float64), torch.full((n,), count0, dtype=torch.int64),
            torch.full((n,), count0, dtype=torch.int64)]


def _flip_case(rows, rows_per_slot, classes, seed, ref_dtype):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=g) * 2
    if classes > 1:
        logits[1, :] = 0.5  # a full tie: class 0 (the first maximum) is the prediction
        logits[2, : classes // 2 + 1] = 3.0  # a tie between the first half: still the first maximum
    labels = torch.randint(0, classes, (rows_per_slot,), generator=g)
    labels[1 % rows_per_slot] = classes - 1  # the tied row 1 is wrong unless there is one class
    ref = torch.rand(rows_per_slot, generator=g) < 0.7
    ref[1 % rows_per_slot] = True  # the tied, wrong row 1 is a flip
    ref = ref if ref_dtype == torch.bool else ref.to(torch.uint8) * torch.randint(1, 255, (rows_per_slot,),
                                                                                   generator=g, dtype=torch.uint8)
    return logits, labels, ref


def _plain_flips(logits, labels, ref, slot, rows_per_slot, n):
    # The definition, one row at a time: reference right and first-maximum prediction wrong.
    flips = [0] * n
    for r in range(logits.shape[0]):
        row = logits[r].tolist()
        pred = row.index(max(row))
        i = r % rows_per_slot
        flips[slot + r // rows_per_slot] += int(bool(ref[i]) and pred != int(labels[i]))
    return flips


def test_flips_hand_computed_case():
    logits = torch.tensor([[0.0, 1.0], [2.0, 2.0], [3.0, 0.0], [0.0, 3.0]])  # row 1: tie -> class 0
    labels = torch.tensor([1, 1])  # rows_per_slot 2: rows 0, 1 in slot 0; rows 2, 3 in slot 1
    ref = torch.tensor([True, True])
    loss, correct, flips = _accs(2)
    loss_correct_(logits, labels, loss, correct, ref_correct=ref, flips_acc=flips)
    # slot 0: row 0 right, row 1 wrong (a flip); slot 1: row 2 wrong (a flip), row 3 right
    assert correct.tolist() == [1, 1] and flips.tolist() == [1, 1]
    loss_correct_(logits, labels, loss, correct, ref_correct=torch.tensor([False, True]), flips_acc=flips)
    assert flips.tolist() == [2, 1]  # only row 1 of each slot counts now: slot 0 adds one, slot 1 none


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ref_dtype", [torch.bool, torch.uint8])
@pytest.mark.parametrize("rows, rows_per_slot, classes",
                         [(23, 7, 5),      # 4 slots, the last one partial
                          (3 * 11, 11, 10),  # whole slots
                          (41, 3, 2),      # many slots (14), 2 classes
                          (9, 4, 1),       # one class: always right, never a flip
                          (5, 8, 33)])     # fewer rows than one slot
def test_flips_match_reference_and_definition(backend, ref_dtype, rows, rows_per_slot, classes):
    logits, labels, ref = _flip_case(rows, rows_per_slot, classes, seed=rows + classes, ref_dtype=ref_dtype)
    slots = (rows + rows_per_slot - 1) // rows_per_slot
    n = slots + 3
    want = _accs(n, 0.25, 2)
    loss_correct_(logits, labels, *want[:2], slot=2, rows_per_slot=rows_per_slot, ref_correct=ref,
                  flips_acc=want[2], backend="reference")
    got = _accs(n, 0.25, 2)
    loss_correct_(logits, labels, *got[:2], slot=2, rows_per_slot=rows_per_slot, ref_correct=ref, flips_acc=got[2],
                  backend=backend)
    assert torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    assert [f - 2 for f in want[2].tolist()] == _plain_flips(logits, labels, ref, 2, rows_per_slot, n)
    untouched = [0, 1] + list(range(2 + slots, n))  # slots outside this call's range keep their start values
    assert all(want[2][i] == 2 and got[2][i] == 2 and got[0][i] == 0.25 for i in untouched)
    if classes == 1:
        assert got[2].tolist() == [2] * n
    else:
        assert sum(want[2].tolist()) > 2 * n  # the case has flips to count


@pytest.mark.parametrize("backend", BACKENDS)
def test_flips_do_not_change_loss_and_correct(backend):
    logits, labels, ref = _flip_case(29, 6, 7, seed=3, ref_dtype=torch.bool)
    plain, with_flips = _accs(5), _accs(5)
    loss_correct_(logits, labels, *plain[:2], backend=backend)
    loss_correct_(logits, labels, *with_flips[:2], ref_correct=ref, flips_acc=with_flips[2], backend=backend)
    assert torch.equal(plain[0], with_flips[0]) and torch.equal(plain[1], with_flips[1])  # bit for bit
    assert plain[2].tolist() == [0] * 5  # never passed: untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_flips_accumulate_across_calls_and_repeat_bit_identically(backend):
    # Three batches of one slot's samples (the evaluator's pattern: one call per batch per sigma level),
    # then the same in one call: the counts are equal, and a second run is bit-identical.
    logits, labels, ref = _flip_case(3 * 10, 10, 6, seed=4, ref_dtype=torch.uint8)

    def batched():
        acc = _accs(3)
        for k in range(3):
            for lo in (0, 4, 7):
                hi = {0: 4, 4: 7, 7: 10}[lo]
                loss_correct_(logits[10 * k + lo:10 * k + hi], labels[lo:hi], *acc[:2], slot=k,
                              ref_correct=ref[lo:hi], flips_acc=acc[2], backend=backend)
        return acc

    first, second = batched(), batched()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    whole = _accs(3)
    loss_correct_(logits, labels, *whole[:2], ref_correct=ref, flips_acc=whole[2], backend=backend)
    assert torch.equal(first[1], whole[1]) and torch.equal(first[2], whole[2])
    assert torch.allclose(first[0], whole[0], rtol=1e-12)
    again = _accs(3)
    loss_correct_(logits, labels, *again[:2], ref_correct=ref, flips_acc=again[2], backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(whole, again))


def test_flips_bad_input():
    logits, labels = torch.randn(6, 3), torch.zeros(3, dtype=torch.int64)
    ref = torch.ones(3, dtype=torch.bool)
    loss, correct, flips = _accs(2)
    cases = [
        (dict(ref_correct=ref), "ref_correct was given without flips_acc"),
        (dict(flips_acc=flips), "flips_acc was given without ref_correct"),
        (dict(ref_correct=ref.long(), flips_acc=flips), r"ref_correct: expected bool or uint8 of shape \(3,\)"),
        (dict(ref_correct=ref.float(), flips_acc=flips), "ref_correct: expected bool or uint8"),
        (dict(ref_correct=torch.ones(4, dtype=torch.bool), flips_acc=flips), r"ref_correct: .* got torch.bool \(4,\)"),
        (dict(ref_correct=torch.ones(1, 3, dtype=torch.bool), flips_acc=flips), "ref_correct: expected"),
        (dict(ref_correct=ref, flips_acc=flips.int()), r"flips_acc: expected int64 accumulators of shape \(2,\)"),
        (dict(ref_correct=ref, flips_acc=_accs(3)[2]), r"flips_acc: .* got torch.int64 \(3,\)"),
        (dict(ref_correct=torch.ones(3, dtype=torch.bool, device="meta"), flips_acc=flips),
         "ref_correct: expected a contiguous tensor on cpu, got one on meta"),
        (dict(ref_correct=ref, flips_acc=torch.zeros(2, dtype=torch.int64, device="meta")),
         "flips_acc: expected a contiguous tensor on cpu"),
        (dict(ref_correct=torch.ones(6, dtype=torch.bool)[::2], flips_acc=flips), r"ref_correct: .*not contiguous"),
        (dict(ref_correct=ref, flips_acc=torch.zeros(4, dtype=torch.int64)[::2]), r"flips_acc: .*not contiguous"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            loss_correct_(logits, labels, loss, correct, **kwargs)
    assert loss.tolist() == [0, 0] and correct.tolist() == [0, 0] and flips.tolist() == [0, 0]  # nothing added


def test_cpp_availability_names_a_build_without_flips(monkeypatch):
    # The lead's tree may still hold a _C built before the flip count: the cpp backend then declares
    # itself unavailable (so the dispatcher falls back to the reference) instead of failing mid-call.
    from fastnas.ops.reduce import cpp

    class OldBuild:
        restore_cpu = None

        @staticmethod
        def loss_correct_cpu():
            """loss_correct_cpu(logits: int, labels: int, rows: int, classes: int, rows_per_slot: int, slot0: int,
            loss_acc: int, correct_acc: int) -> None"""

    monkeypatch.setattr(cpp, "C", OldBuild)
    monkeypatch.setattr("fastnas.ops.perturb.cpp.C", OldBuild)
    assert "older build (loss_correct without negative flips)" in cpp.availability()
