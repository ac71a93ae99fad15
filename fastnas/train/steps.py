"""Step strategies of the training loop: how one batch trains the sampler's choice.

* :class:`SinglePath` -- SPOS: forward and backward through one path of a supernet, update only that
  path (:func:`single_path_step`).
* :class:`MultiPath` -- several paths per batch, gradients summed, one optimizer step (FairNAS's strict
  fairness, with :class:`~fastnas.train.samplers.FairSampler`).
* :class:`Standalone` -- a plain step on a built network (retraining a found architecture).
* :class:`Sandwich` -- the sandwich rule of a nested family (slimmable networks, BigNAS; REG-NAS): the
  largest member, the smallest and ``k`` random ones per batch (the choice of
  :class:`~fastnas.train.samplers.SandwichSampler`), gradients accumulated, one optimizer step, with
  optional in-place distillation from the largest member (:func:`distillation_loss`).

A strategy is any object with ``step(model, choice, x, y, optimizer, *, grad_clip, label_smoothing)
-> StepResult`` (:class:`fastnas.train.loop.StepStrategy`); one that also takes ``precision="bf16"``
can train under bf16 autocast, and one that takes ``reduce_grads`` under torch.distributed (it calls
``reduce_grads(params)`` once per step, after the last backward and before clipping: the sandwich and
multi-path steps accumulate their members locally and all-reduce once).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.train.loop import StepResult
from fastnas.train.precision import autocast_for

__all__ = ["SinglePath", "MultiPath", "Sandwich", "Standalone", "single_path_step", "distillation_loss"]

logger = logging.getLogger(__name__)

_warned_unlisted: set = set()

#: ``reduce_grads(params)``: averages the gradients of ``params`` over the ranks (passed by the loop under
#: torch.distributed; see :func:`fastnas.train.distributed.allreduce_gradients`).
ReduceGrads = Callable[[List[torch.Tensor]], None]


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # (B, K); auxiliary outputs are ignored


def _entry_name(entry: Any) -> str:
    return entry if isinstance(entry, str) else entry.name


def _forward_logits(model: nn.Module, args: tuple, precision: str) -> torch.Tensor:
    """``model(*args)``'s logits, in fp32 (with bf16 the forward runs under autocast)."""
    if precision == "fp32":
        return _logits(model(*args))
    with autocast_for(precision, args[0].device):
        logits = _logits(model(*args))
    return logits.float()


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
                  grad_clip: float, reduce_grads: Optional[ReduceGrads] = None) -> Optional[torch.Tensor]:
    """Gradients off ``on_path`` (parameter names) set to ``None``, the rest all-reduced (``reduce_grads``,
    under torch.distributed), clipping over them, one optimizer step; returns the gradient norm before
    clipping (``None`` without clipping)."""
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

    if reduce_grads is not None:
        reduce_grads(params)  # one bucket: the path's gradients only, in named_parameters order
    grad_norm = None
    if grad_clip > 0 and params:
        grad_norm = nn.utils.clip_grad_norm_(params, grad_clip).detach()
    optimizer.step()
    return grad_norm


def single_path_step(supernet: nn.Module, arch: Any, x: torch.Tensor, y: torch.Tensor,
                     optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0, label_smoothing: float = 0.0,
                     path: Optional[Sequence[str]] = None, precision: str = "fp32",
                     reduce_grads: Optional[ReduceGrads] = None) -> StepResult:
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
        reduce_grads: under torch.distributed, ``reduce_grads(params)`` averages the path's gradients over
            the ranks before clipping (the loop passes it); ``None``: one process.

    Returns:
        A :class:`~fastnas.train.loop.StepResult` of tensors (no device synchronization).
    """
    optimizer.zero_grad(set_to_none=True)
    logits, loss = _forward_loss(supernet, (x, arch), y, label_smoothing, precision)
    loss.backward()

    # A path entry is a parameter name or a slice of one (``ParamSlice``, which has ``.name``).
    on_path = {_entry_name(e) for e in (supernet.path_parameters(arch) if path is None else path)}
    grad_norm = _update_paths(supernet, on_path, arch, optimizer, grad_clip, reduce_grads)
    with torch.no_grad():
        correct = (logits.detach().argmax(dim=1) == y).sum()
    return StepResult(loss.detach(), correct, grad_norm)


class SinglePath:
    """SPOS: step on ``supernet(x, arch)``; only the path of ``arch`` is updated (:func:`single_path_step`)."""

    def step(self, model: nn.Module, choice: Any, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
             label_smoothing: float = 0.0, precision: str = "fp32",
             reduce_grads: Optional[ReduceGrads] = None) -> StepResult:
        return single_path_step(model, choice, x, y, optimizer, grad_clip=grad_clip,
                                label_smoothing=label_smoothing, precision=precision, reduce_grads=reduce_grads)

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
             label_smoothing: float = 0.0, precision: str = "fp32",
             reduce_grads: Optional[ReduceGrads] = None) -> StepResult:
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
        grad_norm = _update_paths(model, on_paths, archs, optimizer, grad_clip, reduce_grads)
        return StepResult(loss_sum / len(archs), torch.div(hits, len(archs), rounding_mode="floor"), grad_norm)

    def __repr__(self) -> str:
        return "MultiPath()"


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """In-place distillation: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean.

    The teacher's logits are detached (no gradient reaches the teacher through this term). The ``T^2``
    factor (Hinton et al.) keeps the gradient's scale independent of the temperature; at ``T = 1`` it is
    the plain KL divergence. Plain PyTorch::

        p = softmax(teacher / T, 1); q = log_softmax(student / T, 1)
        T**2 * (p * (log(p) - q)).sum(1).mean()

    Args:
        student_logits: ``(B, K)``.
        teacher_logits: ``(B, K)``.
        temperature: ``T > 0``.

    Returns:
        A scalar tensor.
    """
    t = float(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits has shape {tuple(student_logits.shape)} but teacher_logits "
                         f"{tuple(teacher_logits.shape)}; expected the same (B, K)")
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def _coverage(model: nn.Module, archs: Sequence[Any]) -> Tuple[set, Dict[str, List[Tuple[Tuple[int, int], ...]]]]:
    """``(names, partial)``: every parameter some member uses, and for those that every member uses only
    through slices, the slices' index boxes."""
    whole: set = set()
    boxes: Dict[str, List[Tuple[Tuple[int, int], ...]]] = {}
    for arch in archs:
        for e in model.path_parameters(arch):
            if isinstance(e, str):
                whole.add(e)
            else:
                boxes.setdefault(e.name, []).append(tuple(e.index))
    return whole | set(boxes), {n: b for n, b in boxes.items() if n not in whole}


class Sandwich:
    """The sandwich rule: every member of the choice forward and backward on the whole batch, gradients
    accumulated, one optimizer step; optional in-place distillation from the first member.

    The choice is ``(largest, smallest, random_1, ..., random_k)``
    (:class:`~fastnas.train.samplers.SandwichSampler`); the first member is the teacher. Loss per member:
    the first, cross-entropy with the labels (with ``label_smoothing``); the others, with ``distill=True``,
    :func:`distillation_loss` against the first member's detached logits at ``temperature`` (scaled by
    ``T^2``), else cross-entropy too. Semantics of the one step:

    * gradient: the *sum* over the members (each member's loss backpropagated in turn, as BigNAS and
      slimmable networks do, not averaged); members share weights through slices, so the gradients of a
      shared block accumulate on the one full tensor;
    * a parameter no member uses has its gradient set to ``None`` and is skipped by the optimizer (no weight
      decay, no momentum), as in :func:`single_path_step`; so is one whose backward never reaches;
    * finer than :class:`SinglePath` / :class:`MultiPath` (where a slice makes its whole tensor take the
      step): the elements of a tensor outside every member's slice are left untouched too -- they and
      their optimizer state (momentum buffer; any state tensor of the parameter's shape) are put back
      after the step, so weight decay and momentum act only on what some member of the step used. With
      the sandwich sampler the largest member uses whole tensors, so this concerns only tensors the
      largest member lacks (e.g. projections of members whose width changes);
    * clipping: the total norm of the summed gradients over the members' parameters;
    * BatchNorm running statistics move once per member (their slices of the statistics);
    * reported: the first (largest) member's cross-entropy and top-1 hits -- the distillation terms are
      not cross-entropies.

    Args:
        distill: in-place distillation of the other members from the first.
        temperature: the distillation temperature ``T > 0``.
    """

    def __init__(self, distill: bool = True, temperature: float = 1.0) -> None:
        if not isinstance(distill, bool):
            raise ValueError(f"distill={distill!r}: expected True or False")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature={temperature!r}: expected a number > 0")
        self.distill = distill
        self.temperature = float(temperature)

    def step(self, model: nn.Module, choice: Any, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
             label_smoothing: float = 0.0, precision: str = "fp32",
             reduce_grads: Optional[ReduceGrads] = None) -> StepResult:
        archs = tuple(choice) if isinstance(choice, (tuple, list)) else ()
        if not archs:
            raise ValueError(f"choice={choice!r}: Sandwich needs a non-empty tuple of architectures, the teacher "
                             "(largest) first")
        optimizer.zero_grad(set_to_none=True)
        teacher: Optional[torch.Tensor] = None
        first_loss = hits = None
        for k, arch in enumerate(archs):
            logits = _forward_logits(model, (x, arch), precision)
            if k == 0 or not self.distill:
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            else:
                loss = distillation_loss(logits, teacher, self.temperature)
            if k == 0:
                teacher = logits.detach()
                first_loss = loss.detach()
                with torch.no_grad():
                    hits = (teacher.argmax(dim=1) == y).sum()
            loss.backward()  # gradients accumulate over the members; each graph is freed in turn

        names, partial = _coverage(model, archs)
        held = []
        if partial:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, index_boxes in partial.items():
                    p = params.get(name)
                    if p is None or p.grad is None:
                        continue
                    mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
                    for box in index_boxes:
                        mask[tuple(slice(a, b) for a, b in box)] = True
                    if bool(mask.all()):
                        continue
                    state = {k: v.clone() for k, v in optimizer.state.get(p, {}).items()
                             if torch.is_tensor(v) and v.shape == p.shape}
                    held.append((p, mask, p.detach().clone(), state))
        grad_norm = _update_paths(model, names, archs, optimizer, grad_clip, reduce_grads)  # one all-reduce
        with torch.no_grad():
            for p, mask, old, state in held:
                p.copy_(torch.where(mask, p, old))
                for key, v in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.copy_(torch.where(mask, v, state[key] if key in state else torch.zeros_like(v)))
        return StepResult(first_loss, hits, grad_norm)

    def __repr__(self) -> str:
        return f"Sandwich(distill={self.distill}, temperature={self.temperature:g})"


class Standalone:
    """A plain step on a built network ``model(x)``: every parameter is trained; ``choice`` is ignored.

    Cross-entropy, backward, clipping of the total gradient norm over all parameters, one optimizer step.
    """

    def step(self, model: nn.Module, choice: Any, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
             label_smoothing: float = 0.0, precision: str = "fp32",
             reduce_grads: Optional[ReduceGrads] = None) -> StepResult:
        optimizer.zero_grad(set_to_none=True)
        logits, loss = _forward_loss(model, (x,), y, label_smoothing, precision)
        loss.backward()
        if reduce_grads is not None:
            reduce_grads([p for p in model.parameters() if p.grad is not None])
        grad_norm = None
        if grad_clip > 0:
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip).detach()
        optimizer.step()
        with torch.no_grad():
            correct = (logits.detach().argmax(dim=1) == y).sum()
        return StepResult(loss.detach(), correct, grad_norm)

    def __repr__(self) -> str:
        return "Standalone()"
