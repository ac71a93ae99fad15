"""Retraining the found architecture from scratch, and testing it: the training loop on a built network.

The standalone network ``space.build(arch)`` gets fresh weights (seeded), trains on the whole training
set (both halves of the search split) with the one training loop (:func:`fastnas.train.loop.train`:
SGD, cosine schedule, :class:`~fastnas.train.steps.Standalone` steps, a
:class:`~fastnas.train.samplers.FixedSampler`), and is tested on the held-out test set. A checkpoint is
written atomically at the end of every epoch, so a killed retraining resumes where it stopped and ends
bit-identical (CPU) to an uninterrupted one: the batches of epoch ``e`` depend only on ``(seed, e)`` and
the global RNG is reseeded per epoch. Seeds (:mod:`fastnas.seeds`): ``"retrain-init"`` (weights),
``"retrain-batches"`` (the batcher's seed), ``"retrain-epoch-{e}"`` (in-model randomness of epoch ``e``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.data import Batches
from fastnas.seeds import derive_seed
from fastnas.train.checkpoint import fingerprint
from fastnas.train.config import TrainConfig
from fastnas.train.loop import Checkpointing
from fastnas.train.loop import train as train_loop  # `train` is retrain()'s data argument
from fastnas.train.samplers import FixedSampler
from fastnas.train.steps import Standalone

__all__ = ["retrain", "evaluate", "derived_seed", "RETRAIN_KIND"]

logger = logging.getLogger(__name__)

RETRAIN_KIND = "fastnas_retrain"
ProgressFn = Callable[[str, Dict[str, Any]], None]


def derived_seed(seed: int, purpose: str) -> int:
    """``derive_seed(seed, purpose)`` (:func:`fastnas.seeds.derive_seed`), under its former name."""
    return derive_seed(seed, purpose)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
             device: Union[str, torch.device] = "cpu") -> Tuple[float, float]:
    """``(top-1 accuracy in [0, 1], mean cross-entropy)`` of ``model`` in eval mode."""
    model.eval()
    correct, loss, n = 0, 0.0, int(y.shape[0])
    for xb, yb in Batches(x, y, batch_size, shuffle=False, device=device):
        out = model(xb)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return (correct / n if n else float("nan"), loss / n if n else float("nan"))


def retrain(space: Any, arch: Any, train: Tuple[torch.Tensor, torch.Tensor],
            test: Tuple[torch.Tensor, torch.Tensor], *, epochs: int, batch_size: int = 64,
            lr: float = 0.05, lr_min: float = 0.0, momentum: float = 0.9, weight_decay: float = 3e-4,
            grad_clip: float = 5.0, augment: bool = False, fill: Any = 0.0, seed: int = 0,
            device: Union[str, torch.device] = "cpu", build_kwargs: Optional[Dict[str, Any]] = None,
            checkpoint_path: Union[str, Path, None] = None,
            progress: Optional[ProgressFn] = None,
            valid: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
            keep_model: bool = False) -> Dict[str, Any]:
    """Trains ``space.build(arch, **build_kwargs)`` from scratch and tests it.

    Args:
        space, arch: the architecture to build.
        train: ``(x, y)`` training images and labels.
        test: ``(x, y)`` held-out images and labels.
        epochs: passes over ``train`` (``>= 1``).
        batch_size, lr, lr_min, momentum, weight_decay, grad_clip: SGD with a per-epoch cosine schedule.
        augment, fill: crop-and-flip augmentation of the training batches (see :class:`fastnas.data.Batches`).
        seed: seeds the initial weights, the batch order and in-model randomness.
        device: where to train.
        build_kwargs: extra arguments of ``space.build``.
        checkpoint_path: written at the end of every epoch; an existing one of the same settings is
            resumed (one of other settings is a ``ValueError``).
        progress: ``progress(event, info)`` with ``"start"``, ``"epoch"`` and ``"end"``.
        valid: optional ``(x, y)`` validation images, tested like ``test`` (``valid_accuracy``,
            ``valid_loss`` in the result).
        keep_model: also return the trained network (in eval mode) under ``"model"``.

    Returns:
        ``{"test_accuracy", "test_loss", "epoch_loss", "epoch_accuracy", "epochs", "params"}`` (and
        ``"valid_accuracy"``, ``"valid_loss"`` with ``valid``).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r}: expected an integer >= 1")
    device = torch.device(device)
    build_kwargs = dict(build_kwargs or {})
    settings = {"arch": space.format(arch), "space": getattr(space, "name", None),
                "space_config": space.config() if hasattr(space, "config") else {}, "build": build_kwargs,
                "epochs": epochs, "batch_size": batch_size, "lr": float(lr), "lr_min": float(lr_min),
                "momentum": float(momentum), "weight_decay": float(weight_decay),
                "grad_clip": float(grad_clip), "augment": bool(augment), "seed": seed, "n_train": int(train[1].shape[0])}
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, lr_min=lr_min, momentum=momentum,
                         weight_decay=weight_decay, grad_clip=grad_clip, seed=seed, augment=bool(augment))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "retrain-init"))
        model = space.build(arch, **build_kwargs)
    checkpointing = None
    if checkpoint_path is not None:
        ckpt = Path(checkpoint_path)
        checkpointing = Checkpointing(
            path=ckpt, kind=RETRAIN_KIND, fingerprint=fingerprint(settings), meta={"settings": settings},
            mismatch=lambda payload: (f"checkpoint {str(ckpt)!r} belongs to another retraining (other "
                                      "architecture or settings); delete it to start over"))
    x, y = train
    batch_seed = derive_seed(seed, "retrain-batches")

    def batches(epoch: int) -> Batches:
        return Batches(x, y, batch_size, seed=batch_seed, epoch=epoch, augment=augment, fill=fill, device=device)

    def forward(event: str, info: Dict[str, Any]) -> None:
        if event in ("start", "epoch"):  # the retraining reports epochs; "end" comes with the test below
            progress(event, info)

    history = train_loop(model, Standalone(), FixedSampler(arch), batches, config, device=device,
                         checkpoint=checkpointing, progress=forward if progress is not None else None,
                         steps_per_epoch=len(batches(0)),
                         rng_seed=lambda epoch: derive_seed(seed, f"retrain-epoch-{epoch}"),
                         name="retraining", log_level=logging.DEBUG)
    acc, loss = evaluate(model, test[0], test[1], device=device)
    out = {"test_accuracy": acc, "test_loss": loss, "epoch_loss": history.epoch_loss,
           "epoch_accuracy": history.epoch_accuracy, "epochs": epochs,
           "params": sum(p.numel() for p in model.parameters())}
    if valid is not None:
        out["valid_accuracy"], out["valid_loss"] = evaluate(model, valid[0], valid[1], device=device)
    if progress is not None:
        progress("end", out)
    if keep_model:
        out["model"] = model.eval()
    return out
