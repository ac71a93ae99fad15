"""C++ CPU backend of the loss/correct/negative-flip reduction: one pass over each row of logits."""

from __future__ import annotations

import torch

from fastnas._native import C
from fastnas.ops.perturb.cpp import availability as _native_availability

__all__ = ["availability", "loss_correct_"]


def availability() -> str | None:
    why = _native_availability()
    if why:
        return why
    # pybind11 writes the argument names into the docstring; a build before the flip count lacks them.
    if "flips_acc" not in (getattr(C.loss_correct_cpu, "__doc__", None) or ""):
        return "fastnas._C is an older build (loss_correct without negative flips); rebuild it (pip install .)"
    return None


def loss_correct_(logits: torch.Tensor, labels: torch.Tensor, loss_acc: torch.Tensor, correct_acc: torch.Tensor,
                  slot0: int, rows_per_slot: int, ref_correct: torch.Tensor | None = None,
                  flips_acc: torch.Tensor | None = None) -> None:
    # 0 (a null pointer) for both when no flips are counted: the C++ loop then skips that work.
    ref_ptr = 0 if ref_correct is None else ref_correct.data_ptr()
    flips_ptr = 0 if flips_acc is None else flips_acc.data_ptr()
    C.loss_correct_cpu(logits.data_ptr(), labels.data_ptr(), logits.shape[0], logits.shape[1], rows_per_slot, slot0,
                       loss_acc.data_ptr(), correct_acc.data_ptr(), ref_ptr, flips_ptr)
