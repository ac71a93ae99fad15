"""Step strategies of the training loop: how one batch trains the sampler's choice.

* :class:`SinglePath` -- SPOS: forward and backward through one path of a supernet, update only that
  path (:func:`single_path_step`).
* :class:`MultiPath` -- several paths per batch, gradients summed, one optimizer step (FairNAS's strict
  fairness, with :class:`~fastnas.train.samplers.FairSampler`).
* :class:`Standalone` -- a plain step on a built network (retraining a found architecture).

A strategy is any object with ``step(model, choice, x, y, optimizer, *, grad_clip, label_smoothing)
-> StepResult`` (:class:`fastnas.train.loop.StepStrategy`); one that also takes ``precision="bf16"``
can train under bf16 autocast. The sandwich rule with in-place distillation
(BigNAS; REG-NAS's nested families) is one more class of this shape, paired with a sampler that returns
``(largest, smallest, random_1, ..., random_k)``; a sketch::

    class Sandwich:
        def __init__(self, distill: bool = True, temperature: float = 1.0):
            self.distill, self.t = distill, temperature

        def step(self, model, archs, x, y, optimizer, *, grad_clip=0.0, label_smoothing=0.0):
            optimizer.zero_grad(set_to_none=True)
            teacher = None
            for k, arch in enumerate(archs):            # largest first
                logits = model(x, arch)
                if k == 0 or not self.distill:
                    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                else:                                     # in-place distillation from the largest
                    loss = F.kl_div(F.log_softmax(logits / self.t, 1), teacher, reduction="batchmean")
                if k == 0:
                    teacher = F.softmax(logits.detach() / self.t, 1)
                    first, hits = loss.detach(), (logits.detach().argmax(1) == y).sum()
                loss.backward()                           # gradients accumulate over the archs
            on_paths = {getattr(e, "name", e) for a in archs for e in model.path_parameters(a)}
            for name, p in model.named_parameters():
                if name not in on_paths:
                    p.grad = None                         # off every path: no decay, no momentum
            params = [p for n, p in model.named_parameters() if p.grad is not None]
            norm = nn.utils.clip_grad_norm_(params, grad_clip).detach() if grad_clip > 0 else None
            optimizer.step()                              # one optimizer step per batch
            return StepResult(first, hits, norm)

    train(supernet, Sandwich(), SandwichSampler(space, k=2, seed=0), batches, config)
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.train.loop import StepResult
from fastnas.train.precision import autocast_for

__all__ = ["SinglePath", "MultiPath", "Standalone", "single_path_step"]

logger = logging.getLogger(__name__)

_warned_unlisted: set = set()


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # (B, K); auxiliary outputs are ignored


def _entry_name(entry: Any) -> str:
    return entry if isinstance(entry, str) else entry.name


def _forward_loss(model: nn.Module, args: tuple, y: torch.Tensor, label_smoothing: float,
                  precision: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits, loss)`` of ``model(*args)``; with bf16 the forward runs under autocast and the loss is
    taken in fp32 of the bf16 logits (backward runs outside the autocast region, as torch advises)."""
    if precision == "fp32":
        logits = _logits(model(*args))
        return logits, F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    with autocast_for(precision, y.device):
        logits = _logits(model(*args))
    logits = logits.float()
    return logits, F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def _update_paths(supernet: nn.Module, on_path: set, what: Any, optimizer: torch.optim.Optimizer,
                  grad_clip: float) -> Optional[torch.Tensor]:
    """Gradients off ``on_path`` (parameter names) set to ``None``, clipping over the rest, one optimizer
    step; returns the gradient norm before clipping (``None`` without clipping)."""
    params: List[torch.Tensor] = []
    matched = 0
    stray: List[str] = []
    for name, p in supernet.named_parameters():
        if name in on_path:
            matched += 1
            if p.grad is not None:
                params.append(p)
        elif p.grad is not None:
            p.grad = None
            stray.append(name)
    if matched != len(on_path):
        unknown = sorted(on_path - {n for n, _ in supernet.named_parameters()})
        raise ValueError(f"path_parameters({what!r}) names parameters the supernet does not have: {unknown[:5]}")
    if stray and type(supernet) not in _warned_unlisted:
        # The forward used parameters that path_parameters() does not list: a bug in the space.
        _warned_unlisted.add(type(supernet))
        logger.warning("%s: forward(x, arch) used parameters not listed by path_parameters(arch) (e.g. %s); "
                       "they are not updated", type(supernet).__name__, stray[:3])

    grad_norm = None
    if grad_clip > 0 and params:
        grad_norm = nn.utils.clip_grad_norm_(params, grad_clip).detach()
    optimizer.step()
    return grad_norm


def single_path_step(supernet: nn.Module, arch: Any, x: torch.Tensor, y: torch.Tensor,
                     optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0, label_smoothing: float = 0.0,
                     path: Optional[Sequence[str]] = None, precision: str = "fp32") -> StepResult:
    """One SPOS step: forward and backward through the path of ``arch``, update only that path.

    After ``backward`` the gradient of every parameter not in ``path`` is set to ``None``, which makes
    SGD skip it entirely (no weight decay, no momentum-buffer update). Clipping, when enabled, uses the
    total norm over the path's gradients. A path entry that is a slice of a parameter (a nested
    family's member) makes the whole parameter take the step: its gradient is zero outside the slice,
    but weight decay and momentum act on all of it.

    Args:
        supernet: a supernet with ``forward(x, arch)`` and ``path_parameters(arch)``.
        arch: the sampled architecture (or a :class:`~fastnas.spaces.CellwiseArch` where the supernet
            takes one).
        x: ``(B, C, H, W)`` inputs on the supernet's device.
        y: ``(B,)`` int64 labels.
        optimizer: optimizer over the supernet's parameters.
        grad_clip: maximum total gradient norm; ``0`` disables clipping.
        label_smoothing: cross-entropy label smoothing.
        path: the path's entries, parameter names or slices (default ``supernet.path_parameters(arch)``).
        precision: ``"fp32"`` or ``"bf16"`` (forward under autocast; see :mod:`fastnas.train.precision`).

    Returns:
        A :class:`~fastnas.train.loop.StepResult` of tensors (no device synchronization).
    """
    optimizer.zero_grad(set_to_none=True)
    logits, loss = _forward_loss(supernet, (x, arch), y, label_smoothing, precision)
    loss.backward()

    # A path entry is a parameter name or a slice of one (``ParamSlice``, which has ``.name``).
    on_path = {_entry_name(e) for e in (supernet.path_parameters(arch) if path is None else path)}
    grad_norm = _update_paths(supernet, on_path, arch, optimizer, grad_clip)
    with torch.no_grad():
        correct = (logits.detach().argmax(dim=1) == y).sum()
    return StepResult(loss.detach(), correct, grad_norm)


class SinglePath:
    """SPOS: step on ``supernet(x, arch)``; only the path of ``arch`` is updated (:func:`single_path_step`)."""

    def step(self, model: nn.Module, choice: Any, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
             label_smoothing: float = 0.0, precision: str = "fp32") -> StepResult:
        return single_path_step(model, choice, x, y, optimizer, grad_clip=grad_clip,
                                label_smoothing=label_smoothing, precision=precision)

    def __repr__(self) -> str:
        return "SinglePath()"


class MultiPath:
    """Several paths per batch (FairNAS): each architecture of the choice forward and backward on the
    whole batch, their gradients summed, then one optimizer step.

    Semantics of the one step (:class:`torch.optim.SGD`):

    * gradient: a parameter gets the *sum* of the gradients of the paths that use it (FairNAS
      accumulates, it does not average): under strict fairness an op's weights get exactly one path's
      gradient, the parts every path shares (stem, residual blocks, classifier) the sum of ``K``;
    * weight decay and momentum act once per step, on every parameter on at least one of the paths
      (weight decay adds ``weight_decay * w`` once, not ``K`` times); a parameter on none of them has its
      gradient set to ``None`` and is skipped entirely, as in :func:`single_path_step` -- as is one on a
      path whose backward never reaches it (an op feeding a node that nothing reads);
    * clipping: the total norm of the summed gradients, over the union of the paths;
    * BatchNorm running statistics move once per path (``K`` updates per step);
    * reported: the mean loss of the ``K`` paths and their mean number of hits (rounded down).
    """

    def step(self, model: nn.Module, choice: Any, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
             label_smoothing: float = 0.0, precision: str = "fp32") -> StepResult:
        archs = tuple(choice)
        if not archs:
            raise ValueError("choice: MultiPath needs a non-empty sequence of architectures")
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float32, device=y.device)
        hits = torch.zeros((), dtype=torch.int64, device=y.device)
        for arch in archs:
            logits, loss = _forward_loss(model, (x, arch), y, label_smoothing, precision)
            loss.backward()
            with torch.no_grad():
                loss_sum += loss.detach()
                hits += (logits.detach().argmax(dim=1) == y).sum()
        on_paths = {_entry_name(e) for arch in archs for e in model.path_parameters(arch)}
        grad_norm = _update_paths(model, on_paths, archs, optimizer, grad_clip)
        return StepResult(loss_sum / len(archs), torch.div(hits, len(archs), rounding_mode="floor"), grad_norm)

    def __repr__(self) -> str:
        return "MultiPath()"


class Standalone:
    """A plain step on a built network ``model(x)``: every parameter is trained; ``choice`` is ignored.

    Cross-entropy, backward, clipping of the total gradient norm over all parameters, one optimizer step.
    """

    def step(self, model: nn.Module, choice: Any, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
             label_smoothing: float = 0.0, precision: str = "fp32") -> StepResult:
        optimizer.zero_grad(set_to_none=True)
        logits, loss = _forward_loss(model, (x,), y, label_smoothing, precision)
        loss.backward()
        grad_norm = None
        if grad_clip > 0:
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip).detach()
        optimizer.step()
        with torch.no_grad():
            correct = (logits.detach().argmax(dim=1) == y).sum()
        return StepResult(loss.detach(), correct, grad_norm)

    def __repr__(self) -> str:
        return "Standalone()"
