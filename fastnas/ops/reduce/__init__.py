"""Per-sample cross-entropy, correct and negative-flip counts, summed into per-slot accumulators on the device.

Feeds the scores: every (sigma level, sample) of a candidate is a slot; validation batches add into
their slot without a host synchronisation, and one ``.tolist()`` at the end reads all slots.
A *negative flip* (the REG-NAS reward) is a sample a fixed reference model classifies correctly and
the candidate gets wrong; with ``ref_correct`` and ``flips_acc`` the same pass counts them per slot.
Equivalent plain PyTorch, for logits ``(rows, classes)`` whose row ``r`` is in slot
``slot + r // rows_per_slot`` with label ``labels[r % rows_per_slot]``::

    y = labels.repeat(slots)[:rows]
    idx = slot + torch.arange(rows) // rows_per_slot
    right = logits.argmax(1) == y                      # the first maximum wins a tie
    loss_acc.index_add_(0, idx, F.cross_entropy(logits.double(), y, reduction="none"))
    correct_acc.index_add_(0, idx, right.long())
    if flips_acc is not None:                          # ref_correct: (rows_per_slot,) bool or uint8
        ref = ref_correct.bool().repeat(slots)[:rows]
        flips_acc.index_add_(0, idx, (ref & ~right).long())

Memory traffic: read ``rows * classes`` float32 logits once (max, log-sum-exp, argmax and the
label's logit in one pass over each row), plus one int64 label per row and, with flips, one byte of
``ref_correct`` per row (both cached: ``rows_per_slot`` distinct values); write nothing but the
accumulators (the C++ backend adds once per slot per call, the Triton one atomically per row).
Without ``flips_acc`` there is no extra read, write or work (a null pointer in C++, a compile-time
flag in Triton).
"""

from __future__ import annotations

import torch

from fastnas.ops._dispatch import Backend, Dispatcher
from fastnas.ops.reduce import cpp as _cpp
from fastnas.ops.reduce import reference as _reference
from fastnas.ops.reduce import triton as _triton

__all__ = ["loss_correct_", "DISPATCH"]

DISPATCH = Dispatcher(
    "loss_correct",
    [
        Backend("reference", ("cpu", "cuda"), (torch.float32,), lambda: None, _reference),
        Backend("cpp", ("cpu",), (torch.float32,), _cpp.availability, _cpp),
        Backend("triton", ("cuda", "cpu"), (torch.float32,), _triton.availability, _triton,
                devices_fn=_triton.devices, limits=_triton.limits),
    ],
    priority={"cpu": ["cpp", "reference"], "cuda": ["triton", "reference"]},
)


def loss_correct_(logits: torch.Tensor, labels: torch.Tensor, loss_acc: torch.Tensor, correct_acc: torch.Tensor,
                  *, slot: int = 0, rows_per_slot: int | None = None, backend: str | None = None,
                  check_labels: bool = True, ref_correct: torch.Tensor | None = None,
                  flips_acc: torch.Tensor | None = None) -> None:
    """Adds each row's cross-entropy to ``loss_acc[slot(r)]`` and its correctness to ``correct_acc[slot(r)]``.

    With ``ref_correct`` and ``flips_acc``, also adds 1 to ``flips_acc[slot(r)]`` for each row whose
    reference was right (``ref_correct[r % rows_per_slot]``) and whose argmax is not the label.

    Args:
        logits: float32 ``(rows, classes)``; ``(K, B, classes)`` is taken as ``K * B`` rows.
        labels: int64 ``(rows_per_slot,)``.
        loss_acc: float64 accumulators ``(slots,)``; correct_acc: int64 accumulators ``(slots,)``.
        slot: the slot of row 0; rows_per_slot: rows per slot (default: ``len(labels)``).
        backend: ``None`` (automatic) or "cpp", "triton", "reference".
        check_labels: check that every label is in ``[0, classes)`` (one small reduction; on a GPU, one
            host synchronisation). A caller that checked its labels once may pass False.
        ref_correct: bool or uint8 ``(rows_per_slot,)``, on the logits' device: whether the reference
            model classified sample ``i`` correctly (uint8: nonzero is right). Pass with ``flips_acc``.
        flips_acc: int64 accumulators ``(slots,)`` (the shape of ``correct_acc``) of negative flips.
            Pass with ``ref_correct``; when neither is given nothing else is read or written.

    Raises:
        ValueError: bad shapes, dtypes or devices, or a label outside ``[0, classes)`` (checked here,
            the same for every backend).
    """
    if logits.dim() == 3:
        logits = logits.reshape(-1, logits.shape[-1])
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected (rows, classes) or (K, B, classes)")
    if logits.dtype != torch.float32:
        logits = logits.float()
    logits = logits.contiguous()
    rows_per_slot = labels.shape[0] if rows_per_slot is None else int(rows_per_slot)
    if labels.dim() != 1 or labels.dtype != torch.int64 or labels.shape[0] != rows_per_slot or rows_per_slot <= 0:
        raise ValueError(f"labels: expected int64 of shape ({rows_per_slot},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    slots = (logits.shape[0] + rows_per_slot - 1) // rows_per_slot
    if slot < 0 or slot + slots > loss_acc.shape[0] or loss_acc.shape != correct_acc.shape:
        raise ValueError(f"slot={slot}: {slots} slot(s) from there do not fit accumulators of shape "
                         f"{tuple(loss_acc.shape)} / {tuple(correct_acc.shape)}")
    if loss_acc.dtype != torch.float64 or correct_acc.dtype != torch.int64:
        raise ValueError("loss_acc, correct_acc: expected float64 and int64 accumulators")
    if (ref_correct is None) != (flips_acc is None):
        given, missing = ("ref_correct", "flips_acc") if flips_acc is None else ("flips_acc", "ref_correct")
        raise ValueError(f"{given} was given without {missing}: pass both (to count negative flips) or neither")
    checked = [("labels", labels), ("loss_acc", loss_acc), ("correct_acc", correct_acc)]
    if flips_acc is not None:
        if ref_correct.dtype not in (torch.bool, torch.uint8) or tuple(ref_correct.shape) != (rows_per_slot,):
            raise ValueError(f"ref_correct: expected bool or uint8 of shape ({rows_per_slot},) (one per sample, "
                             f"like labels), got {ref_correct.dtype} {tuple(ref_correct.shape)}")
        if flips_acc.dtype != torch.int64 or flips_acc.shape != correct_acc.shape:
            raise ValueError(f"flips_acc: expected int64 accumulators of shape {tuple(correct_acc.shape)} (like "
                             f"correct_acc), got {flips_acc.dtype} {tuple(flips_acc.shape)}")
        checked += [("ref_correct", ref_correct), ("flips_acc", flips_acc)]
    for name, t in checked:
        if t.device != logits.device or not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor on {logits.device}, got one on {t.device}"
                             f"{'' if t.is_contiguous() else ' (not contiguous)'}")
    classes = logits.shape[1]
    if check_labels:
        lo, hi = torch.aminmax(labels)
        lo, hi = torch.stack([lo, hi]).tolist()  # one host synchronisation
        if lo < 0 or hi >= classes:
            raise ValueError(f"labels: values from {lo} to {hi}; expected class indices in [0, {classes}) for "
                             f"logits with {classes} classes")
    chosen = DISPATCH.pick(logits.device, {torch.float32}, backend,
                           sizes={"rows": logits.shape[0], "classes": classes})
    if ref_correct is not None:
        ref_correct = ref_correct.view(torch.uint8)  # same bytes (0/1 for bool); one pointer type for every backend
    chosen.impl.loss_correct_(logits, labels.contiguous(), loss_acc, correct_acc, int(slot), rows_per_slot,
                              ref_correct, flips_acc)
