"""Training a nested ("weight-contained") family: the sandwich rule, and per-member BatchNorm statistics.

:func:`train_family` is :func:`~fastnas.train.train_supernet` with ``sampler="sandwich"``: each step
trains the family's largest member, its smallest and ``sandwich_k`` random ones
(:class:`~fastnas.train.samplers.SandwichSampler`), accumulates their gradients -- the members share
weights through slices, so a shared block's gradients add up on the one full tensor -- and takes one
optimizer step; with ``distill=True`` the largest member learns from the labels and the others from its
detached outputs (:class:`~fastnas.train.steps.Sandwich`, :func:`~fastnas.train.steps.distillation_loss`).
Checkpoints and resume are the supernet trainer's: a run killed anywhere resumes from its last
end-of-epoch checkpoint and ends bit-identical to an uninterrupted one (on the CPU).

The members share BatchNorm statistics as they share weights, and sandwich training moves them once per
member per step, so before a member is evaluated its statistics are re-estimated on its own
(:func:`recalibrate_member`, as once-for-all does per sub-network).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import nn

from fastnas.spaces.base import recalibrate_bn
from fastnas.train.config import TrainConfig
from fastnas.train.loop import TrainResult
from fastnas.train.spos import train_supernet

__all__ = ["train_family", "recalibrate_member"]

Batch = Tuple[torch.Tensor, torch.Tensor]
ProgressFn = Callable[[str, Dict[str, Any]], None]


def train_family(supernet: nn.Module, space: Any, train_x: Optional[torch.Tensor], train_y: Optional[torch.Tensor],
                 config: TrainConfig, *, sandwich_k: int = 2, distill: bool = True, temperature: float = 1.0,
                 device: Union[str, torch.device] = "cpu", checkpoint_path: Union[str, Path, None] = None,
                 resume: bool = True, progress: Optional[ProgressFn] = None,
                 batch_fn: Optional[Callable[[int], Iterable[Batch]]] = None) -> TrainResult:
    """Trains a nested family's supernet with the sandwich rule (and in-place distillation).

    Args:
        supernet: the family's supernet (moved to ``device`` in place).
        space: a family space: ``largest()``, ``smallest()``, ``sample(rng)`` (``ValueError`` otherwise).
        train_x: ``(N, C, H, W)`` float images, or ``None`` with ``batch_fn``.
        train_y: ``(N,)`` int64 labels, or ``None`` with ``batch_fn``.
        config: the training settings; its ``sampler`` must be ``"sandwich"`` or the default ``"uniform"``
            (which this function replaces by ``"sandwich"``; the saved config says ``"sandwich"``).
        sandwich_k: random members per step besides the largest and the smallest (BigNAS: 2).
        distill: the members other than the largest learn from the largest's detached outputs (KL
            divergence at ``temperature``, scaled by ``T^2``) instead of the labels.
        temperature: the distillation temperature.
        device, checkpoint_path, resume, progress, batch_fn: as :func:`~fastnas.train.train_supernet`.

    Returns:
        A :class:`~fastnas.train.TrainResult`; its per-epoch loss and accuracy are the largest member's.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if config.sampler not in ("uniform", "sandwich"):
        raise ValueError(f"config.sampler={config.sampler!r}: train_family trains with the sandwich sampler; "
                         "use sampler='sandwich' (or leave the default)")
    config = dataclasses.replace(config, sampler="sandwich")
    return train_supernet(supernet, space, train_x, train_y, config, device=device, checkpoint_path=checkpoint_path,
                          resume=resume, progress=progress, batch_fn=batch_fn, sandwich_k=sandwich_k,
                          distill=distill, temperature=temperature)


def recalibrate_member(supernet: nn.Module, arch: Any, batches: Iterable[Any], mode: str = "exact") -> nn.Module:
    """The member ``arch`` as a standalone module with BatchNorm statistics of its own.

    ``supernet.extract(arch)`` (the member's weights copied), then every BatchNorm of it reset and
    re-estimated in train mode over ``batches`` (:func:`~fastnas.spaces.recalibrate_bn`; ``mode="exact"``:
    the plain mean of the per-batch statistics, ``"momentum"``: the reference code's momentum 0.1). The
    supernet is left untouched, so members can be recalibrated one after another; compare
    :meth:`~fastnas.spaces.Supernet.recalibrate`, which re-estimates the supernet's shared statistics in
    place (the same values on the member's slice).

    Args:
        supernet: a supernet with ``extract(arch)``.
        arch: the member.
        batches: input tensors (or ``(x, y)`` pairs) on the supernet's device.
        mode: ``"exact"`` or ``"momentum"``.

    Returns:
        The module, in eval mode.
    """
    if not callable(getattr(supernet, "extract", None)):
        raise ValueError(f"supernet: {type(supernet).__name__} has no extract(arch); expected a Supernet")
    net = supernet.extract(arch)
    count = recalibrate_bn(net, net, batches, mode=mode)
    if count == 0:
        raise ValueError("batches: no batches to recalibrate the member's BatchNorm statistics with")
    return net
