"""The one training loop, with two plug points: a sampler and a step strategy.

:func:`train` runs epochs of SGD (momentum, optional Nesterov, weight decay) under a cosine schedule,
clips gradients, writes a checkpoint at the end of every epoch and resumes from it, and reports
progress through a callback. What a step trains is decided by two small objects:

* a :class:`Sampler` says *which* architecture(s) step ``s`` trains: ``sampler.sample(s)``
  (:class:`~fastnas.train.samplers.UniformSampler` draws one path per step -- SPOS;
  :class:`~fastnas.train.samplers.FixedSampler` always gives the same one -- retraining);
* a :class:`StepStrategy` says *how* one batch trains it: ``strategy.step(model, choice, x, y,
  optimizer, ...)`` (:class:`~fastnas.train.steps.SinglePath`: forward and update one path of a
  supernet; :class:`~fastnas.train.steps.Standalone`: a plain step on a built network).

The sandwich rule and in-place distillation (REG-NAS, BigNAS) are one new class each: a sampler that
returns ``(largest, smallest, random...)`` and a strategy that accumulates their gradients (the
smaller ones distilled from the largest's logits) before one optimizer step; see
:mod:`fastnas.train.steps` for the example.

Reproducibility: a sampler must be a function of the step, the batches a function of the epoch, and
the global torch RNG (dropout and the like inside the model) is forked and seeded per epoch with
``rng_seed(epoch)``. All randomness is then a function of the seed, the epoch and the step, so a run
resumed from an end-of-epoch checkpoint -- after a kill anywhere in the next epoch -- ends bit-identical
to an uninterrupted one (on the CPU; on CUDA, only with deterministic kernels), and the caller's global
RNG state is left as it was.

Speed settings of ``config``: ``precision="bf16"`` is handed to the strategy (``step(...,
precision="bf16")``: forward under bf16 autocast, see :mod:`fastnas.train.precision`);
``channels_last=True`` converts the model's 4-D weights and every 4-D batch to channels-last for the
run, and the model back to the default layout when training ends (values are unchanged by either).

Distributed (``torchrun``; the caller initialises ``torch.distributed``): every rank trains the same
path on its contiguous slice of the single-process batch, the path's gradients are averaged over the
ranks in one bucket before clipping and the optimizer step (the strategy calls ``reduce_grads(params)``,
passed only then), BatchNorm uses the global batch's statistics (``config.sync_bn``), the epoch's loss
and accuracy are the global ones, and rank 0 alone writes the checkpoint; see
:mod:`fastnas.train.distributed`. One process runs exactly as without it.

Schedule: :class:`torch.optim.lr_scheduler.CosineAnnealingLR` with ``T_max=epochs`` and
``eta_min=lr_min``, stepped once per epoch as in the DARTS and GeNAS trainers: epoch ``e`` (0-based)
trains at ``lr_min + (lr - lr_min) * (1 + cos(pi * e / epochs)) / 2``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Protocol, Tuple,
                    Union, runtime_checkable)

import torch
from torch import nn

from fastnas.seeds import derive_seed
from fastnas.train import distributed as dist
from fastnas.train.checkpoint import load_checkpoint, save_checkpoint
from fastnas.train.config import TrainConfig
from fastnas.train.precision import check_precision
from fastnas.train.sync_batchnorm import synced_batchnorm

__all__ = ["train", "Sampler", "StepStrategy", "StepResult", "TrainResult", "Checkpointing", "cosine_lr",
           "seeded_global_rng"]

logger = logging.getLogger(__name__)

Batch = Tuple[torch.Tensor, torch.Tensor]
ProgressFn = Callable[[str, Dict[str, Any]], None]


class StepResult(NamedTuple):
    """Detached per-step values, left on the device (reading them synchronizes)."""

    loss: torch.Tensor  # () mean cross-entropy of the batch
    correct: torch.Tensor  # () number of top-1 hits in the batch
    grad_norm: Optional[torch.Tensor]  # () total gradient norm before clipping; None if not clipped


@runtime_checkable
class Sampler(Protocol):
    """Which architecture(s) a step trains."""

    def sample(self, step: int) -> Any:
        """The choice of step ``step`` (0-based, counted over the whole run, resumed epochs included).

        Whatever is returned is handed to the step strategy and shown as ``info["arch"]`` of the
        ``"step"`` event: one architecture (SPOS, retraining) or, for strategies that train several
        per step, a tuple of them. Must depend on ``step`` only (and the sampler's own settings), so
        that a resumed run draws what an uninterrupted one drew.
        """
        ...


@runtime_checkable
class StepStrategy(Protocol):
    """How one batch trains the sampler's choice: forward, backward, clipping and one optimizer step."""

    def step(self, model: nn.Module, choice: Any, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0,
             label_smoothing: float = 0.0) -> StepResult:
        """Trains ``choice`` on the batch ``(x, y)`` (on the model's device); returns detached values.

        A strategy that also takes ``precision`` (``"bf16"``: forward under autocast) can train with
        ``TrainConfig.precision="bf16"``; :func:`train` passes it only when it is not ``"fp32"``. One that
        takes ``reduce_grads`` can train under ``torch.distributed``: :func:`train` passes it only with more
        than one rank, and the strategy calls ``reduce_grads(params)`` on the parameters it is about to
        update, after ``backward`` and before clipping (the same list on every rank).
        """
        ...


@dataclass(frozen=True)
class Checkpointing:
    """Where and how :func:`train` checkpoints (end of every epoch) and resumes.

    Args:
        path: the checkpoint file (written atomically).
        kind: the file's ``kind`` (:func:`fastnas.train.load_checkpoint` refuses other kinds).
        fingerprint: hash of the settings the file belongs to; a checkpoint with another fingerprint
            is refused (``ValueError``) instead of being mixed into this run.
        meta: extra entries stored in the file (the settings, the space), for people and for ``mismatch``.
        resume: continue from an existing checkpoint; ``False`` starts over and overwrites it.
        mismatch: ``mismatch(payload) -> message`` of the ``ValueError`` for a checkpoint of other settings.
    """

    path: Path
    kind: str
    fingerprint: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    resume: bool = True
    mismatch: Optional[Callable[[Dict[str, Any]], str]] = None


@dataclass
class TrainResult:
    """What :func:`train` (and :func:`fastnas.train.train_supernet`) returns.

    Attributes:
        epoch_loss: mean training cross-entropy per epoch (over samples, each with its step's choice).
        epoch_accuracy: training top-1 accuracy per epoch, in ``[0, 1]``.
        epoch_time: seconds per epoch (epochs before a resume: as measured by the earlier run).
        epoch_lr: learning rate each epoch trained at.
        steps: optimizer steps taken in total (including those before a resume).
        resumed_from_epoch: epochs already done in the checkpoint this call resumed from (0 if none).
        initial_state: CPU copy of the supernet's ``state_dict`` before the first step (for the angle;
            filled by :func:`fastnas.train.train_supernet`, empty from :func:`train`).
    """

    epoch_loss: List[float] = field(default_factory=list)
    epoch_accuracy: List[float] = field(default_factory=list)
    epoch_time: List[float] = field(default_factory=list)
    epoch_lr: List[float] = field(default_factory=list)
    steps: int = 0
    resumed_from_epoch: int = 0
    initial_state: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        """Everything except ``initial_state`` (JSON-ready)."""
        return {"epoch_loss": list(self.epoch_loss), "epoch_accuracy": list(self.epoch_accuracy),
                "epoch_time": list(self.epoch_time), "epoch_lr": list(self.epoch_lr), "steps": self.steps,
                "resumed_from_epoch": self.resumed_from_epoch}


def cosine_lr(epoch: int, *, lr: float, lr_min: float, epochs: int) -> float:
    """The closed form of the schedule: learning rate of (0-based) ``epoch``."""
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: Union[str, torch.device]) -> Iterator[None]:
    """Forks the global torch RNG (CPU and, for CUDA, the device's) and seeds it; restores it afterwards."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield


def _takes(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _check_plugs(strategy: Any, sampler: Any, precision: str, world_size: int = 1) -> None:
    if not callable(getattr(strategy, "step", None)):
        raise ValueError(f"strategy: {type(strategy).__name__} has no step(model, choice, x, y, optimizer); "
                         "expected a StepStrategy such as SinglePath() or Standalone()")
    if not callable(getattr(sampler, "sample", None)):
        raise ValueError(f"sampler: {type(sampler).__name__} has no sample(step); expected a Sampler such "
                         "as UniformSampler(space, seed) or FixedSampler(arch)")
    if world_size > 1 and not _takes(strategy.step, "reduce_grads"):
        raise ValueError(f"strategy {type(strategy).__name__}.step takes no reduce_grads argument, so it cannot train "
                         f"under torch.distributed (world size {world_size}): it must call reduce_grads(params) "
                         "after backward and before clipping (see SinglePath, MultiPath, Sandwich, Standalone)")
    if precision != "fp32":
        if not _takes(strategy.step, "precision"):
            raise ValueError(f"precision={precision!r}: strategy {type(strategy).__name__}.step takes no precision "
                             "argument; use precision='fp32' or a strategy that takes it (SinglePath, MultiPath, "
                             "Standalone)")


def _check_same_weights(model: nn.Module, epoch: int, device: torch.device) -> None:
    """Debug check: every rank holds the same parameters (a float64 checksum, compared bit for bit)."""
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i, p in enumerate(model.parameters()):
            total += p.detach().double().sum() * (i + 1)  # weighted: a swap of two tensors shows too
    bits = int(total.cpu().view(torch.int64))
    dist.check_same_value(bits, f"weights after epoch {epoch} (bits of a checksum; the ranks have diverged)",
                          device=device)


def train(model: nn.Module, strategy: StepStrategy, sampler: Sampler,
          batches: Callable[[int], Iterable[Batch]], config: TrainConfig, *,
          device: Union[str, torch.device] = "cpu", checkpoint: Optional[Checkpointing] = None,
          progress: Optional[ProgressFn] = None, steps_per_epoch: Optional[int] = None,
          rng_seed: Optional[Callable[[int], int]] = None,
          on_start: Optional[Callable[[Optional[Dict[str, Any]]], None]] = None,
          on_epoch_end: Optional[Callable[[int], Optional[Dict[str, Any]]]] = None,
          name: str = "training", log_level: int = logging.INFO,
          debug_dist: Optional[bool] = None) -> TrainResult:
    """Trains ``model`` for ``config.epochs`` epochs; step ``s`` trains ``sampler.sample(s)`` with ``strategy``.

    Per step: the batch moved to ``device``, ``strategy.step(model, sampler.sample(s), x, y, optimizer,
    grad_clip=config.grad_clip, label_smoothing=config.label_smoothing)``. Per epoch: the cosine
    learning-rate step, then a checkpoint (when ``checkpoint`` is given).

    Args:
        model: the network (moved to ``device`` in place; left in the training mode it had).
        strategy: how a step trains (:class:`StepStrategy`).
        sampler: what a step trains (:class:`Sampler`).
        batches: ``batches(epoch) -> iterable of (x, y)``, e.g. a :class:`fastnas.data.Batches`; it must
            be deterministic in ``epoch`` for resumes to reproduce a run.
        config: optimizer, schedule and clipping settings (``batch_size``, ``augment``, ``drop_last`` are
            the batches' business and not read here).
        device: where the model trains.
        checkpoint: end-of-epoch checkpoint and resume (see :class:`Checkpointing`); ``None``: none.
        progress: ``progress(event, info)`` with events ``"start"`` (``epochs``, ``start_epoch``,
            ``steps_per_epoch``, ``resumed``), ``"step"`` (``epoch``, ``step``, ``global_step``,
            ``steps_per_epoch``, ``loss``, ``lr``, ``arch``), ``"epoch"`` (``epoch``, ``epochs``, ``loss``,
            ``accuracy``, ``lr``, ``time``, ``steps``) and ``"end"`` (:meth:`TrainResult.to_dict`). With a
            callback each step reads its loss (one device synchronization per step). An exception raised
            by the callback stops training (the last end-of-epoch checkpoint stays valid).
        steps_per_epoch: shown in the events (``None``: unknown).
        rng_seed: ``rng_seed(epoch)`` seeds the global torch RNG for the epoch (default
            ``derive_seed(config.seed, "torch", epoch)``).
        on_start: ``on_start(payload)`` is called once before any state is loaded or any step taken,
            with the checkpoint being resumed from, or ``None`` for a fresh start.
        on_epoch_end: ``on_epoch_end(epoch) -> dict or None`` runs after each epoch's training (and its
            learning-rate step), before the checkpoint; what it returns is stored in the checkpoint as
            ``payload["extra"]`` (read it back in ``on_start``). NAR's controller updates run here, so the
            shared weights and the controller are saved together, in one file, at every epoch end.
        name: what is trained, in log messages.
        log_level: level of the per-epoch and resume log lines.
        debug_dist: under ``torch.distributed``, check at every step that all ranks train the same choice
            and reduce the same gradients, and at every epoch end that their weights agree
            (:class:`~fastnas.train.distributed.DistributedMismatchError` otherwise); ``None``: the
            environment variable ``FASTNAS_DEBUG_DIST``.

    Under ``torch.distributed`` with ``W > 1`` ranks (see :mod:`fastnas.train.distributed`): ``config.batch_size``
    is the global batch (``ValueError`` unless ``W`` divides it); the model is first broadcast from rank 0;
    ``progress`` runs on every rank with the rank's own per-step loss, and the ``"epoch"`` event and the
    result carry the global loss and accuracy; ``on_start`` and ``on_epoch_end`` run on every rank (they
    must do the same on each); rank 0 writes the checkpoint, then all ranks wait for it.

    Returns:
        A :class:`TrainResult` (``initial_state`` empty).
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    rank, world_size = dist.world()
    _check_plugs(strategy, sampler, config.precision, world_size)
    if world_size > 1:
        dist.check_batch_size(config.batch_size, world_size)
    debug = world_size > 1 and dist.debug_enabled(debug_dist)
    device = torch.device(device)
    check_precision(config.precision, device)
    # Passed only when not fp32, so strategies written before precision existed keep working.
    step_kwargs: Dict[str, Any] = {} if config.precision == "fp32" else {"precision": config.precision}
    memory_format = torch.channels_last if config.channels_last else None
    model.to(device)
    if world_size > 1:
        dist.broadcast_module(model)  # every rank starts from rank 0's weights, as DDP does
    was_training = model.training
    if rng_seed is None:
        def rng_seed(epoch: int) -> int:
            return derive_seed(config.seed, "torch", epoch)

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.lr_min)
    result = TrainResult()
    start_epoch = 0

    ckpt = checkpoint
    if ckpt is not None and ckpt.resume and Path(ckpt.path).exists():
        payload = load_checkpoint(ckpt.path, expected_kind=ckpt.kind)
        if payload.get("fingerprint") != ckpt.fingerprint:
            raise ValueError(ckpt.mismatch(payload) if ckpt.mismatch is not None else
                             f"checkpoint {str(ckpt.path)!r} belongs to other settings; use another checkpoint "
                             "path or start over")
        if on_start is not None:
            on_start(payload)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        history = payload["history"]
        start_epoch = result.resumed_from_epoch = int(payload["epoch"])
        result.epoch_loss = list(history["loss"])
        result.epoch_accuracy = list(history["accuracy"])
        result.epoch_time = list(history["time"])
        # Files of fastnas <= 0.1 retraining kept no learning rates: the closed form stands in for them.
        result.epoch_lr = list(history["lr"]) if "lr" in history else \
            [cosine_lr(e, lr=config.lr, lr_min=config.lr_min, epochs=config.epochs) for e in range(start_epoch)]
        result.steps = int(payload.get("step", 0))
        logger.log(log_level, "resuming %s from %s at epoch %d/%d", name, ckpt.path, start_epoch, config.epochs)
    else:
        if ckpt is not None and Path(ckpt.path).exists() and rank == 0:
            logger.warning("resume=False: overwriting the checkpoint %s", ckpt.path)
        if on_start is not None:
            on_start(None)
    if world_size > 1:
        dist.check_same_value(start_epoch, "epoch to resume from (do all ranks see the same checkpoint file?)",
                              device=device)

    if progress is not None:
        progress("start", {"epochs": config.epochs, "start_epoch": start_epoch, "steps_per_epoch": steps_per_epoch,
                           "resumed": start_epoch > 0})

    model.train()
    if memory_format is not None:
        model.to(memory_format=memory_format)  # after loading: the checkpoint's values, in this layout
    sync_bn = world_size > 1 and config.sync_bn
    restore = contextlib.ExitStack()  # the BatchNorm classes, back after training (scoring never syncs)
    restore.enter_context(synced_batchnorm(model, enabled=sync_bn))
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            epoch_batches = batches(epoch)
            with seeded_global_rng(rng_seed(epoch), device):
                for i, (xb, yb) in enumerate(epoch_batches):
                    choice = sampler.sample(result.steps)
                    kwargs = step_kwargs
                    if world_size > 1:
                        if debug:
                            dist.check_same_choice(choice, result.steps, device=device)
                        n_global = yb.shape[0]
                        xb, yb = dist.shard_batch(xb, yb, rank=rank, world_size=world_size)  # views
                        # weight = share of the global batch: the sum over ranks is the global mean's gradient
                        kwargs = {**step_kwargs, "reduce_grads": functools.partial(
                            dist.allreduce_gradients, weight=yb.shape[0] / n_global, debug=debug, what=choice)}
                    xb = xb.to(device, non_blocking=True)
                    if memory_format is not None and xb.dim() == 4:
                        xb = xb.contiguous(memory_format=memory_format)
                    yb = yb.to(device, non_blocking=True)
                    step = strategy.step(model, choice, xb, yb, optimizer, grad_clip=config.grad_clip,
                                         label_smoothing=config.label_smoothing, **kwargs)
                    b = yb.shape[0]
                    loss_sum += step.loss.double() * b
                    correct += step.correct
                    seen += b
                    result.steps += 1
                    if progress is not None:
                        progress("step", {"epoch": epoch, "step": i, "global_step": result.steps,
                                          "steps_per_epoch": steps_per_epoch, "loss": float(step.loss),
                                          "lr": lr, "arch": choice})
            if world_size > 1:
                # the global values: one all-reduce of (loss sum, hits, samples) per epoch
                totals = dist.all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                                          torch.tensor(float(seen), dtype=torch.float64,
                                                                       device=device)]))
                loss_sum, correct, seen = totals[0], int(totals[1].round()), int(totals[2].round())
                if not sync_bn:
                    dist.average_buffers(model)  # per-rank running statistics would drift apart
                if debug:
                    _check_same_weights(model, epoch, device)
            if seen == 0:
                raise ValueError(f"epoch {epoch} produced no batches (check the batches / the training data)")
            scheduler.step()
            epoch_loss = float(loss_sum) / seen
            epoch_acc = int(correct) / seen
            if not math.isfinite(epoch_loss):
                logger.warning("%s epoch %d: training loss is %s (diverged? try a lower lr)", name, epoch, epoch_loss)
            result.epoch_loss.append(epoch_loss)
            result.epoch_accuracy.append(epoch_acc)
            result.epoch_time.append(time.perf_counter() - t0)
            result.epoch_lr.append(lr)
            extra = on_epoch_end(epoch) if on_epoch_end is not None else None
            if ckpt is not None and rank == 0:
                save_checkpoint(ckpt.path, {
                    "kind": ckpt.kind, "fingerprint": ckpt.fingerprint, **ckpt.meta,
                    "epoch": epoch + 1, "step": result.steps,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    # All randomness is derived from (seed, epoch, step): nothing else to restore.
                    "rng": {"scheme": "derive_seed(seed, purpose, *index)", "seed": config.seed},
                    "history": {"loss": result.epoch_loss, "accuracy": result.epoch_accuracy,
                                "time": result.epoch_time, "lr": result.epoch_lr},
                    **({"extra": extra} if extra is not None else {}),
                    **({"world_size": world_size} if world_size > 1 else {}),
                })
            if ckpt is not None:
                dist.barrier()  # no rank runs ahead of the file it would resume from
            logger.log(log_level, "epoch %d/%d: loss %.4f, train acc %.4f, lr %.5g, %.1f s", epoch + 1,
                       config.epochs, epoch_loss, epoch_acc, lr, result.epoch_time[-1])
            if progress is not None:
                progress("epoch", {"epoch": epoch, "epochs": config.epochs, "loss": epoch_loss,
                                   "accuracy": epoch_acc, "lr": lr, "time": result.epoch_time[-1],
                                   "steps": result.steps})
    finally:
        restore.close()
        model.train(was_training)
        if memory_format is not None:
            # Scores, noise layouts and exports expect the default (contiguous) layout.
            model.to(memory_format=torch.contiguous_format)
    if progress is not None:
        progress("end", result.to_dict())
    return result
