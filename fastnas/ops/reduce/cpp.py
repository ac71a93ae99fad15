"""C++ CPU backend of the loss/correct reduction: one pass over each row of logits."""

from __future__ import annotations

import torch

from fastnas._native import C
from fastnas.ops.perturb.cpp import availability

__all__ = ["availability", "loss_correct_"]


def loss_correct_(logits: torch.Tensor, labels: torch.Tensor, loss_acc: torch.Tensor, correct_acc: torch.Tensor,
                  slot0: int, rows_per_slot: int) -> None:
    C.loss_correct_cpu(logits.data_ptr(), labels.data_ptr(), logits.shape[0], logits.shape[1], rows_per_slot, slot0,
                       loss_acc.data_ptr(), correct_acc.data_ptr())
