"""The accuracy score (SPOS "PBS"): top-1 of a candidate on held-out data after BatchNorm recalibration.

The supernet's running statistics are averages over many paths, wrong for any single one, so each
candidate's BatchNorm statistics are re-estimated on its own path first (SPOS: 200 batches of 128;
GeNAS: ceil(850 / 64) = 14 batches of 64, the default here) from the supernet-train split, with the same
images for every candidate. The candidate runs as its extracted standalone module, so the supernet's own
statistics are never changed.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from fastnas.metrics.evaluator import MultiSigmaEvaluator

__all__ = ["accuracy", "DEFAULT_BN_BATCHES", "DEFAULT_BN_BATCH_SIZE"]

#: GeNAS: ceil(850 / 64) recalibration batches of 64 images.
DEFAULT_BN_BATCHES = 14
DEFAULT_BN_BATCH_SIZE = 64


def accuracy(supernet: nn.Module, arch: Any, valid_x: torch.Tensor, valid_y: torch.Tensor, *,
             calib_x: Optional[torch.Tensor] = None, bn_batches: int = DEFAULT_BN_BATCHES,
             bn_batch_size: int = DEFAULT_BN_BATCH_SIZE, batch_size: Optional[int] = None,
             bn_mode: str = "exact", seed: int = 0, precision: str = "fp32", device=None) -> float:
    """Top-1 accuracy (a fraction) of ``arch`` on ``(valid_x, valid_y)`` after BatchNorm recalibration.

    Args:
        supernet: a supernet (``forward(x, arch)``, ``path_parameters``, ``extract``).
        arch: the candidate.
        valid_x, valid_y: the fixed validation subset (images, int64 labels).
        calib_x: images for recalibration, normally the supernet-train split (``None``: ``valid_x``).
        bn_batches: recalibration batches (``0``: keep the supernet's statistics).
        bn_batch_size: images per recalibration batch.
        batch_size: validation batch size (``None``: automatic).
        bn_mode: ``"exact"`` (plain average of batch statistics) or ``"momentum"`` (the reference code).
        seed: chooses the recalibration images (the same for every candidate with the same seed).
        precision: ``"fp32"`` or ``"bf16"``.

    Returns:
        The fraction of ``valid_y`` predicted correctly (argmax of the logits).

    Equivalent plain PyTorch::

        supernet.recalibrate(arch, calibration_batches(calib_x, bn_batches, bn_batch_size, seed))
        supernet.eval()
        with torch.no_grad():
            acc = (supernet(valid_x, arch).argmax(1) == valid_y).float().mean().item()
    """
    ev = MultiSigmaEvaluator(supernet, valid_x, valid_y, sigmas=(), precision=precision, batch_size=batch_size,
                             device=device, calib_x=calib_x, bn_batches=bn_batches, bn_batch_size=bn_batch_size,
                             bn_mode=bn_mode, bn_seed=seed)
    return float(ev.evaluate(arch, clean=True, perturbed=False).clean_accuracy)
