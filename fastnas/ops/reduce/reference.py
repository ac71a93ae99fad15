"""Plain-torch reference of the loss/correct/negative-flip reduction: the specification."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["loss_correct_"]


def loss_correct_(logits: torch.Tensor, labels: torch.Tensor, loss_acc: torch.Tensor, correct_acc: torch.Tensor,
                  slot0: int, rows_per_slot: int, ref_correct: torch.Tensor | None = None,
                  flips_acc: torch.Tensor | None = None) -> None:
    rows = logits.shape[0]
    slots = (rows + rows_per_slot - 1) // rows_per_slot
    y = labels.repeat(slots)[:rows]
    idx = slot0 + torch.arange(rows, device=logits.device) // rows_per_slot
    right = logits.argmax(1) == y  # torch.argmax: the first maximum wins a tie
    loss_acc.index_add_(0, idx, F.cross_entropy(logits.double(), y, reduction="none"))
    correct_acc.index_add_(0, idx, right.to(correct_acc.dtype))
    if flips_acc is not None:  # a negative flip: the reference was right, this row is wrong
        ref = ref_correct.bool().repeat(slots)[:rows]
        flips_acc.index_add_(0, idx, (ref & ~right).to(flips_acc.dtype))
