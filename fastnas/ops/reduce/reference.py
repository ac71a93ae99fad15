"""Plain-torch reference of the loss/correct reduction: the specification."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["loss_correct_"]


def loss_correct_(logits: torch.Tensor, labels: torch.Tensor, loss_acc: torch.Tensor, correct_acc: torch.Tensor,
                  slot0: int, rows_per_slot: int) -> None:
    rows = logits.shape[0]
    slots = (rows + rows_per_slot - 1) // rows_per_slot
    y = labels.repeat(slots)[:rows]
    idx = slot0 + torch.arange(rows, device=logits.device) // rows_per_slot
    loss_acc.index_add_(0, idx, F.cross_entropy(logits.double(), y, reduction="none"))
    correct_acc.index_add_(0, idx, (logits.argmax(1) == y).to(correct_acc.dtype))
