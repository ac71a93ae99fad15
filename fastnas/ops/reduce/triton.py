"""Triton backend of the loss/correct/negative-flip reduction: one program per block of rows, atomics per slot.

Traffic: read the logits once (a label and, with flips, a reference byte per row); atomic adds per row
into the slot accumulators. Without flips the ``FLIPS`` constexpr compiles the flip code out. Runs on
CPU under ``TRITON_INTERPRET=1`` (slowly).
"""

from __future__ import annotations

import torch

from fastnas.ops.perturb.triton import availability, devices, triton, tl

__all__ = ["availability", "devices", "limits", "loss_correct_"]

_ROWS = 16
_MAX_BLOCK = 2**20  # Triton's largest block (elements); one program holds _ROWS rows of all classes
_MAX_CLASSES = _MAX_BLOCK // _ROWS
_MAX_PROGRAMS = 2**31 - 1


def limits(sizes) -> list[str]:
    """Why these sizes are beyond this kernel (empty when they are fine): read by the dispatcher."""
    reasons = []
    classes, rows = sizes.get("classes", 1), sizes.get("rows", 0)
    if classes > _MAX_CLASSES:
        reasons.append(f"{classes} classes exceed the kernel's {_MAX_CLASSES} (one block holds a row)")
    if (rows + _ROWS - 1) // _ROWS > _MAX_PROGRAMS:
        reasons.append(f"{rows} rows exceed the grid limit")
    return reasons

if triton is not None:

    @triton.jit
    def _loss_correct_kernel(logits_ptr, labels_ptr, loss_ptr, correct_ptr, ref_ptr, flips_ptr, rows, classes,
                             rows_per_slot, slot0, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                             FLIPS: tl.constexpr):
        # ref_ptr: uint8 (rows_per_slot,), flips_ptr: int64 per slot; read only when FLIPS.
        pid = tl.program_id(0).to(tl.int64)
        r = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        c = tl.arange(0, BLOCK_C)
        row_ok = r < rows
        mask = row_ok[:, None] & (c[None, :] < classes)
        z = tl.load(logits_ptr + r[:, None] * classes + c[None, :], mask=mask, other=float("-inf"))
        z = tl.where(row_ok[:, None], z, 0.0)  # rows past the end: finite, and never accumulated
        m = tl.max(z, axis=1)
        e = tl.where(c[None, :] < classes, tl.exp(z - m[:, None]), 0.0)
        lse = tl.log(tl.sum(e, axis=1)) + m
        y = tl.load(labels_ptr + r % rows_per_slot, mask=row_ok, other=0)
        zy = tl.sum(tl.where(c[None, :] == y[:, None], z, 0.0), axis=1)
        best = tl.argmax(z, axis=1, tie_break_left=True)
        slot = slot0 + r // rows_per_slot
        tl.atomic_add(loss_ptr + slot, (lse - zy).to(tl.float64), mask=row_ok)
        tl.atomic_add(correct_ptr + slot, (best == y).to(tl.int64), mask=row_ok)
        if FLIPS:  # a negative flip: the reference was right and this row is wrong
            ref = tl.load(ref_ptr + r % rows_per_slot, mask=row_ok, other=0)
            tl.atomic_add(flips_ptr + slot, ((ref != 0) & (best != y)).to(tl.int64), mask=row_ok)


def loss_correct_(logits: torch.Tensor, labels: torch.Tensor, loss_acc: torch.Tensor, correct_acc: torch.Tensor,
                  slot0: int, rows_per_slot: int, ref_correct: torch.Tensor | None = None,
                  flips_acc: torch.Tensor | None = None) -> None:
    rows, classes = logits.shape
    if rows == 0:
        return
    why = limits({"rows": rows, "classes": classes})
    if why:  # the dispatcher checks this; a direct call is rejected here, before launching
        raise NotImplementedError(f"triton loss_correct: {'; '.join(why)}")
    if logits.dtype != torch.float32 or labels.dtype != torch.int64:
        raise NotImplementedError(f"triton loss_correct: expected float32 logits and int64 labels, got "
                                  f"{logits.dtype} and {labels.dtype}")
    flips = flips_acc is not None
    if flips and ref_correct.dtype != torch.uint8:
        ref_correct = ref_correct.view(torch.uint8)  # a bool tensor's bytes are 0/1
    block_c = triton.next_power_of_2(classes)
    # Without flips the two pointers are placeholders (correct_acc) the compiled kernel never touches.
    _loss_correct_kernel[(triton.cdiv(rows, _ROWS),)](
        logits, labels, loss_acc, correct_acc, ref_correct if flips else correct_acc,
        flips_acc if flips else correct_acc, rows, classes, rows_per_slot, slot0, BLOCK_R=_ROWS, BLOCK_C=block_c,
        FLIPS=flips)
