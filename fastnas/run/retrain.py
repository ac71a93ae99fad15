"""Retraining the found architecture from scratch, and testing it.

The standalone network ``space.build(arch)`` gets fresh weights (seeded), trains on the whole training
set (both halves of the search split) with SGD and a cosine schedule, and is tested on the held-out
test set. A checkpoint is written atomically at the end of every epoch, so a killed retraining resumes
where it stopped and ends bit-identical (CPU) to an uninterrupted one: the batches of epoch ``e`` depend
only on ``(seed, e)`` and the global RNG is reseeded per epoch.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.data import Batches
from fastnas.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint

__all__ = ["retrain", "evaluate", "derived_seed", "RETRAIN_KIND"]

logger = logging.getLogger(__name__)

RETRAIN_KIND = "fastnas_retrain"
ProgressFn = Callable[[str, Dict[str, Any]], None]


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed from ``(seed, purpose)``, stable across processes and platforms."""
    digest = hashlib.sha256(f"fastnas.run:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
             device: Union[str, torch.device] = "cpu") -> Tuple[float, float]:
    """``(top-1 accuracy in [0, 1], mean cross-entropy)`` of ``model`` in eval mode."""
    model.eval()
    correct, loss, n = 0, 0.0, int(y.shape[0])
    for start in range(0, n, batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
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
            progress: Optional[ProgressFn] = None) -> Dict[str, Any]:
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

    Returns:
        ``{"test_accuracy", "test_loss", "epoch_loss", "epoch_accuracy", "epochs", "params"}``.
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
    fp = fingerprint(settings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "retrain-init"))
        model = space.build(arch, **build_kwargs)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=lr_min)
    history: Dict[str, list] = {"loss": [], "accuracy": [], "time": []}
    start = 0
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    if ckpt is not None and ckpt.exists():
        payload = load_checkpoint(ckpt, expected_kind=RETRAIN_KIND)
        if payload.get("fingerprint") != fp:
            raise ValueError(f"checkpoint {str(ckpt)!r} belongs to another retraining (other architecture "
                             "or settings); delete it to start over")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        history = {k: list(v) for k, v in payload["history"].items()}
        start = int(payload["epoch"])
    if progress is not None:
        progress("start", {"epochs": epochs, "start_epoch": start})
    x, y = train
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(seed, f"retrain-epoch-{epoch}"))
            for xb, yb in Batches(x, y, batch_size, seed=derived_seed(seed, "retrain-batches"), epoch=epoch,
                                  augment=augment, fill=fill, device=device):
                optimizer.zero_grad(set_to_none=True)
                out = model(xb)
                logits = out[0] if isinstance(out, (tuple, list)) else out
                loss = F.cross_entropy(logits, yb)
                loss.backward()
                if grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                loss_sum += float(loss.detach()) * yb.shape[0]
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += int(yb.shape[0])
        scheduler.step()
        history["loss"].append(loss_sum / max(seen, 1))
        history["accuracy"].append(correct / max(seen, 1))
        history["time"].append(time.perf_counter() - t0)
        if not math.isfinite(history["loss"][-1]):
            logger.warning("retrain epoch %d: loss is %s", epoch, history["loss"][-1])
        if ckpt is not None:
            save_checkpoint(ckpt, {"kind": RETRAIN_KIND, "fingerprint": fp, "settings": settings,
                                   "epoch": epoch + 1, "model": model.state_dict(),
                                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                   "history": history})
        if progress is not None:
            progress("epoch", {"epoch": epoch, "epochs": epochs, "loss": history["loss"][-1],
                               "accuracy": history["accuracy"][-1]})
    acc, loss = evaluate(model, test[0], test[1], device=device)
    out = {"test_accuracy": acc, "test_loss": loss, "epoch_loss": history["loss"],
           "epoch_accuracy": history["accuracy"], "epochs": epochs,
           "params": sum(p.numel() for p in model.parameters())}
    if progress is not None:
        progress("end", out)
    return out
