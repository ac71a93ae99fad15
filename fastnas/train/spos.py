"""Supernet training: the training loop with the sampler of ``TrainConfig.sampler`` -- by default single-path
one-shot (SPOS), a uniform sampler and single-path steps; per-cell (RLNAS), strictly fair (FairNAS) and
sandwich sampling of a nested family (:mod:`fastnas.train.family`) are the other choices
(:mod:`fastnas.train.samplers`).

With the default sampler, each step samples one architecture uniformly
(:class:`~fastnas.train.samplers.UniformSampler`), runs the whole batch through that path only, and
updates only the path's parameters (:class:`~fastnas.train.steps.SinglePath`). As in the SPOS reference trainer, the gradients of every
parameter off the path are set to ``None`` after ``backward``; :class:`torch.optim.SGD` (loop and
``foreach`` alike) skips such parameters entirely, so they get no weight decay and their momentum
buffers do not move. Plain "zero gradients" would not do: SGD would still decay them and push them along
their momentum.

Reproducibility (see :mod:`fastnas.seeds`): the architecture of step ``s`` comes from ``random.Random``
seeded with ``derive_seed(config.seed, "arch", s)``, the batch order of epoch ``e`` from a
``torch.Generator`` seeded with ``derive_seed(config.seed, "batches", e)``, and the global torch RNG
(dropout and the like inside the supernet) is forked and seeded with ``derive_seed(config.seed,
"torch", e)`` for each epoch. All randomness is thus a function of the seed, the epoch and the step, so a
run resumed from an end-of-epoch checkpoint ends bit-identical to an uninterrupted one (on the CPU; on
CUDA, only with deterministic kernels), and the caller's global RNG state is left as it was.

Schedule: see :mod:`fastnas.train.loop` (cosine, stepped per epoch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import nn

from fastnas.data.batches import Batches
from fastnas.seeds import derive_seed
from fastnas.train import distributed as dist
from fastnas.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from fastnas.train.config import LATER_FIELDS, TrainConfig
from fastnas.train.loop import Checkpointing, StepResult, TrainResult, cosine_lr, train
from fastnas.train.samplers import sandwich_options, supernet_plan
from fastnas.train.steps import single_path_step

__all__ = ["TrainConfig", "TrainResult", "StepResult", "train_supernet", "train_step", "cosine_lr",
           "CHECKPOINT_KIND", "INIT_KIND", "INIT_FILENAME"]

CHECKPOINT_KIND = "spos_supernet"
INIT_KIND = "spos_supernet_init"
INIT_FILENAME = "supernet_init.pt"

Batch = Tuple[torch.Tensor, torch.Tensor]
ProgressFn = Callable[[str, Dict[str, Any]], None]

train_step = single_path_step  # the SPOS step, under its historical name


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, config: TrainConfig, epoch: int) -> Batches:
    return Batches(x, y, config.batch_size, order_seed=derive_seed(config.seed, "batches", epoch),
                   drop_last=config.drop_last)


def _check_data(train_x: Optional[torch.Tensor], train_y: Optional[torch.Tensor],
                batch_fn: Optional[Callable[[int], Iterable[Batch]]]) -> None:
    if batch_fn is not None:
        return
    if not isinstance(train_x, torch.Tensor) or not isinstance(train_y, torch.Tensor):
        raise ValueError("train_x and train_y must be tensors (or pass batch_fn); got "
                         f"{type(train_x).__name__} and {type(train_y).__name__}")
    if not train_x.is_floating_point() or train_x.dim() < 2:
        raise ValueError(f"train_x: expected a floating-point (N, C, H, W) tensor, got dtype {train_x.dtype} "
                         f"shape {tuple(train_x.shape)}")
    if train_y.dtype != torch.int64 or train_y.dim() != 1:
        raise ValueError(f"train_y: expected an int64 (N,) tensor of class indices, got dtype {train_y.dtype} "
                         f"shape {tuple(train_y.shape)}")
    if train_x.shape[0] != train_y.shape[0]:
        raise ValueError(f"train_x has {train_x.shape[0]} samples but train_y has {train_y.shape[0]}")
    if train_x.shape[0] == 0:
        raise ValueError("train_x is empty (N=0)")
    if train_x.device != train_y.device:
        raise ValueError(f"train_x is on {train_x.device} but train_y on {train_y.device}")


def _space_identity(space: Any) -> Dict[str, Any]:
    cfg = space.config() if hasattr(space, "config") else {}
    return {"name": getattr(space, "name", type(space).__name__), "config": cfg}


def _run_fingerprint(config: TrainConfig, space: Any, supernet: nn.Module,
                     sandwich: Optional[Dict[str, Any]] = None, controller: Any = None) -> str:
    layout = [[k, list(v.shape)] for k, v in supernet.state_dict().items()]
    identity: Dict[str, Any] = {"config": config.identity(), "space": _space_identity(space), "layout": layout}
    if sandwich is not None:  # only for sampler="sandwich": the other samplers' fingerprints stay as they were
        identity["sandwich"] = sandwich
    if controller is not None:
        identity["controller"] = controller
    return fingerprint(identity)


def _cpu_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _mismatch_hint(payload: Dict[str, Any], config: TrainConfig, space: Any,
                   sandwich: Optional[Dict[str, Any]] = None) -> str:
    saved_cfg = {**LATER_FIELDS, **(payload.get("config", {}) or {})}  # files of fastnas 0.1 lack them
    diffs = [f"{k}: checkpoint {saved_cfg.get(k)!r} vs now {v!r}" for k, v in config.to_dict().items()
             if saved_cfg.get(k) != v]
    saved_sandwich = payload.get("sandwich") or {}
    if sandwich is not None and saved_cfg.get("sampler") == "sandwich":
        diffs += [f"{k}: checkpoint {saved_sandwich.get(k)!r} vs now {v!r}" for k, v in sandwich.items()
                  if saved_sandwich.get(k) != v]
    saved_space = payload.get("space", {}) or {}
    now_space = _space_identity(space)
    if saved_space.get("name") != now_space["name"]:
        diffs.append(f"space: checkpoint {saved_space.get('name')!r} vs now {now_space['name']!r}")
    elif fingerprint(saved_space.get("config")) != fingerprint(now_space["config"]):
        diffs.append(f"space config: checkpoint {saved_space.get('config')!r} vs now {now_space['config']!r}")
    return "; ".join(diffs) if diffs else "the supernet's parameter layout differs"


def train_supernet(supernet: nn.Module, space: Any, train_x: Optional[torch.Tensor],
                   train_y: Optional[torch.Tensor], config: TrainConfig, *,
                   device: Union[str, torch.device] = "cpu",
                   checkpoint_path: Union[str, Path, None] = None, resume: bool = True,
                   progress: Optional[ProgressFn] = None,
                   batch_fn: Optional[Callable[[int], Iterable[Batch]]] = None,
                   sandwich_k: Optional[int] = None, distill: Optional[bool] = None,
                   temperature: Optional[float] = None, controller: Any = None,
                   debug_dist: Optional[bool] = None) -> TrainResult:
    """Trains a weight-sharing supernet with the paths of ``config.sampler`` (default: uniform SPOS).

    Per step (``sampler="uniform"``): ``arch = space.sample(rng)`` (one path for the whole batch),
    cross-entropy, backward, off-path gradients set to ``None``, gradient clipping over the path, SGD
    step. ``"per-cell"`` trains one :class:`~fastnas.spaces.CellwiseArch` path the same way; ``"fair"``
    the ``K`` paths of ``space.fair_paths`` with summed gradients and one SGD step
    (:func:`fastnas.train.samplers.supernet_plan`); ``"sandwich"`` a nested family's largest, smallest
    and ``sandwich_k`` random members with accumulated gradients, the others distilled from the largest
    (:class:`~fastnas.train.steps.Sandwich`; :func:`fastnas.train.train_family`). Per epoch: cosine
    learning-rate step, then a checkpoint (when ``checkpoint_path`` is given).

    Args:
        supernet: the supernet (moved to ``device`` in place; left in the training mode it had).
        space: the space whose ``sample(rng)`` (``sample_cellwise``, ``fair_paths``) draws the paths.
        train_x: ``(N, C, H, W)`` float images (any device), or ``None`` with ``batch_fn``.
        train_y: ``(N,)`` int64 labels, or ``None`` with ``batch_fn``.
        config: the training settings.
        device: where the supernet trains; batches are moved there.
        checkpoint_path: file written at the end of every epoch; ``supernet_init.pt`` (the initial
            weights) is written beside it before the first step.
        resume: if the checkpoint exists, continue from it (it must belong to the same config, space
            and supernet layout, else ``ValueError``); if ``False``, start over and overwrite it.
        progress: ``progress(event, info)`` with events ``"start"``, ``"step"``, ``"epoch"`` and
            ``"end"``. With a callback, each step reads its loss (one device synchronization per
            step). An exception raised by the callback stops training (the last end-of-epoch
            checkpoint stays valid).
        batch_fn: ``batch_fn(epoch) -> iterable of (x, y)`` replaces the built-in batching (e.g. for
            augmentation by the data layer); it must be deterministic in ``epoch`` for resumes to
            reproduce a run.
        sandwich_k, distill, temperature: the sandwich sampler's random members per step, in-place
            distillation and its temperature (``None``: 2, True, 1.0); only with ``sampler="sandwich"``.
            They belong to the run: a checkpoint of other values is not resumed.
        controller: an object that picks the paths and learns between epochs (NAR's ENAS controller,
            :mod:`fastnas.run.refine`), or ``None``. ``controller.sample(step)`` replaces the sampler
            (single-path steps); ``controller.epoch_end(epoch) -> dict`` runs after every epoch and what
            it returns (its whole state) is saved in the same checkpoint as the weights;
            ``controller.load_state(d)`` gets it back on resume; ``controller.identity()`` (JSON) is part
            of the checkpoint's fingerprint.
        debug_dist: cross-rank checks under torch.distributed (see :func:`fastnas.train.train`).

    Under ``torch.distributed`` (``torchrun``) every rank calls this with the same arguments and data;
    ``config.batch_size`` is the global batch, split over the ranks, and rank 0 alone writes
    ``checkpoint_path`` and the initial weights (see :mod:`fastnas.train.distributed`).

    Returns:
        A :class:`TrainResult`.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if not hasattr(supernet, "path_parameters"):
        raise ValueError(f"supernet: {type(supernet).__name__} has no path_parameters(arch); expected a Supernet")
    _check_data(train_x, train_y, batch_fn)
    sampler, strategy = supernet_plan(config.sampler, space, config.seed, sandwich_k=sandwich_k, distill=distill,
                                      temperature=temperature)
    if controller is not None:
        for method in ("sample", "epoch_end", "load_state", "identity"):
            if not callable(getattr(controller, method, None)):
                raise ValueError(f"controller: {type(controller).__name__} has no {method}(); expected an object "
                                 "with sample(step), epoch_end(epoch), load_state(d) and identity()")
        if config.sampler != "uniform":
            raise ValueError(f"controller with sampler={config.sampler!r}: a controller picks one path per step; "
                             "use sampler='uniform'")
        sampler = controller
    sandwich = sandwich_options(sandwich_k, distill, temperature) if config.sampler == "sandwich" else None
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    init_path = ckpt.with_name(INIT_FILENAME) if ckpt is not None else None
    if ckpt is not None and ckpt.name == INIT_FILENAME:
        raise ValueError(f"checkpoint_path={str(ckpt)!r}: the name {INIT_FILENAME!r} is reserved for the "
                         "initial weights; choose another file name")
    steps_per_epoch: Optional[int] = None
    if batch_fn is None:
        n = train_x.shape[0]
        steps_per_epoch = n // config.batch_size if config.drop_last else -(-n // config.batch_size)
        if steps_per_epoch == 0:
            raise ValueError(f"drop_last=True with batch_size={config.batch_size} > N={n} leaves no batches")
        _, world_size = dist.world()
        dist.check_batch_size(config.batch_size, world_size)
        last = n % config.batch_size
        if world_size > 1 and not config.drop_last and 0 < last < world_size:
            raise ValueError(f"the last batch of each epoch has {last} samples (N={n}, batch_size={config.batch_size}), "
                             f"fewer than world size {world_size}: every rank needs at least one; use drop_last=True")
        batch_fn = lambda epoch: _tensor_batches(train_x, train_y, config, epoch)  # noqa: E731

    run_fp = _run_fingerprint(config, space, supernet, sandwich,
                              None if controller is None else controller.identity())
    checkpointing = None
    if ckpt is not None:
        meta: Dict[str, Any] = {"config": config.to_dict(), "space": _space_identity(space)}
        if sandwich is not None:
            meta["sandwich"] = sandwich
        checkpointing = Checkpointing(
            path=ckpt, kind=CHECKPOINT_KIND, fingerprint=run_fp, resume=resume, meta=meta,
            mismatch=lambda payload: (f"checkpoint {str(ckpt)!r} belongs to another run "
                                      f"({_mismatch_hint(payload, config, space, sandwich)}); use another "
                                      "checkpoint path or resume=False"))
    initial: Dict[str, Dict[str, torch.Tensor]] = {}

    def on_start(payload: Optional[Dict[str, Any]]) -> None:
        # The initial weights (for the angle score): saved before the first step, read back on resume.
        if payload is not None:
            init = load_checkpoint(init_path, expected_kind=INIT_KIND, expected_fingerprint=run_fp) \
                if init_path.exists() else None
            if init is None:
                raise ValueError(f"checkpoint {str(ckpt)!r} has no initial weights beside it ({str(init_path)!r} "
                                 "is missing); resume=False starts over")
            initial["state"] = dict(init["model"])
            if controller is not None:
                if "extra" not in payload:
                    raise ValueError(f"checkpoint {str(ckpt)!r} holds no controller state; resume=False starts over")
                controller.load_state(payload["extra"])
        else:
            initial["state"] = _cpu_state(supernet)  # after train() broadcast rank 0's weights
            if init_path is not None:
                if dist.is_main():
                    save_checkpoint(init_path, {"kind": INIT_KIND, "fingerprint": run_fp, "config": config.to_dict(),
                                                "space": _space_identity(space), "model": initial["state"]})
                dist.barrier()

    result = train(supernet, strategy, sampler, batch_fn, config, device=device,
                   checkpoint=checkpointing, progress=progress, steps_per_epoch=steps_per_epoch,
                   rng_seed=lambda epoch: derive_seed(config.seed, "torch", epoch), on_start=on_start,
                   on_epoch_end=None if controller is None else controller.epoch_end,
                   name=f"supernet training ({config.sampler} sampler)", debug_dist=debug_dist)
    result.initial_state = initial["state"]
    return result
