"""Single-path one-shot (SPOS) supernet training.

Each step samples one architecture uniformly (``space.sample``), runs the whole batch through that path
only, and updates only the path's parameters. As in the SPOS reference trainer, the gradients of every
parameter off the path are set to ``None`` after ``backward``; :class:`torch.optim.SGD` (loop and
``foreach`` alike) skips such parameters entirely, so they get no weight decay and their momentum
buffers do not move. Plain "zero gradients" would not do: SGD would still decay them and push them along
their momentum.

Reproducibility: the architecture of step ``s`` comes from ``random.Random`` seeded from
``(config.seed, s)``, the batch order of epoch ``e`` from a ``torch.Generator`` seeded from
``(config.seed, e)``, and the global torch RNG (dropout and the like inside the supernet) is forked and
seeded from ``(config.seed, e)`` for each epoch. All randomness is thus a function of the seed, the
epoch and the step, so a run resumed from an end-of-epoch checkpoint ends bit-identical to an
uninterrupted one (on the CPU; on CUDA, only with deterministic kernels), and the caller's global RNG
state is left as it was.

Schedule: the learning rate follows :class:`torch.optim.lr_scheduler.CosineAnnealingLR` with
``T_max=epochs`` and ``eta_min=lr_min``, stepped once per epoch as in the DARTS and GeNAS trainers:
epoch ``e`` (0-based) trains at ``lr_min + (lr - lr_min) * (1 + cos(pi * e / epochs)) / 2``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from fastnas._hints import did_you_mean

__all__ = ["TrainConfig", "TrainResult", "StepResult", "train_supernet", "train_step", "cosine_lr",
           "CHECKPOINT_KIND", "INIT_KIND", "INIT_FILENAME"]

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "spos_supernet"
INIT_KIND = "spos_supernet_init"
INIT_FILENAME = "supernet_init.pt"

Batch = Tuple[torch.Tensor, torch.Tensor]
ProgressFn = Callable[[str, Dict[str, Any]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a SPOS supernet training run (defaults: the GeNAS/DARTS supernet recipe).

    Args:
        epochs: number of passes over the training data (GeNAS README: 250).
        batch_size: images per step.
        lr: initial learning rate of the cosine schedule.
        lr_min: final learning rate (``eta_min``).
        momentum: SGD momentum.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradients of the path's parameters.
        grad_clip: maximum total gradient norm over the path's parameters; ``0`` disables clipping.
        seed: seeds architecture sampling, batch order and in-model randomness (not the weight init).
        label_smoothing: cross-entropy label smoothing in ``[0, 1)``.
        augment: whether the data layer augments the training images. The trainer itself does not
            augment; the caller provides augmented batches through ``batch_fn``. Recorded here so that
            the setting is saved and part of the checkpoint fingerprint.
        drop_last: drop the last incomplete batch of each epoch (the reference code keeps it).
    """

    epochs: int = 250
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    seed: int = 0
    label_smoothing: float = 0.0
    augment: bool = False
    drop_last: bool = False

    def __post_init__(self) -> None:
        def check_int(name: str, minimum: Optional[int]) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
                bound = f" >= {minimum}" if minimum is not None else ""
                raise ValueError(f"Invalid {name} value: {v!r} (expected an integer{bound})")

        def check_float(name: str, ok: Callable[[float], bool], expectation: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"Invalid {name} value: {v!r} (expected {expectation})")
            # 1 and 1.0 must give the same saved config and checkpoint fingerprint.
            object.__setattr__(self, name, float(v))

        check_int("epochs", 1)
        check_int("batch_size", 1)
        check_int("seed", None)
        check_float("lr", lambda v: v > 0, "a number > 0")
        check_float("lr_min", lambda v: 0 <= v <= self.lr, f"a number in [0, lr={self.lr!r}]")
        check_float("momentum", lambda v: v >= 0, "a number >= 0")
        check_float("weight_decay", lambda v: v >= 0, "a number >= 0")
        check_float("grad_clip", lambda v: v >= 0, "a number >= 0; 0 disables clipping")
        check_float("label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)")
        for name in ("nesterov", "augment", "drop_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Invalid {name} value: {getattr(self, name)!r} (expected True or False)")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Invalid nesterov value: True needs momentum > 0 (got momentum=0)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """The config from a dict; ``None`` values keep the defaults, unknown keys raise ``ValueError``."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                hint = did_you_mean(key, names, n=3)
                raise ValueError(f"unknown TrainConfig key {key!r}; expected one of {names}{hint}")
        return cls(**{k: v for k, v in d.items() if v is not None})


@dataclass
class TrainResult:
    """What :func:`train_supernet` returns.

    Attributes:
        epoch_loss: mean training cross-entropy per epoch (over samples, each with its step's path).
        epoch_accuracy: training top-1 accuracy per epoch, in ``[0, 1]``.
        epoch_time: seconds per epoch (epochs before a resume: as measured by the earlier run).
        epoch_lr: learning rate each epoch trained at.
        steps: optimizer steps taken in total (including those before a resume).
        resumed_from_epoch: epochs already done in the checkpoint this call resumed from (0 if none).
        initial_state: CPU copy of the supernet's ``state_dict`` before the first step (for the angle).
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


class StepResult(NamedTuple):
    """Detached per-step values, left on the device (reading them synchronizes)."""

    loss: torch.Tensor  # () mean cross-entropy of the batch
    correct: torch.Tensor  # () number of top-1 hits in the batch
    grad_norm: Optional[torch.Tensor]  # () total path gradient norm before clipping; None if not clipped


def cosine_lr(epoch: int, *, lr: float, lr_min: float, epochs: int) -> float:
    """The closed form of the schedule: learning rate of (0-based) ``epoch``."""
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


_warned_unlisted: set = set()


def train_step(supernet: nn.Module, arch: Any, x: torch.Tensor, y: torch.Tensor,
               optimizer: torch.optim.Optimizer, *, grad_clip: float = 0.0, label_smoothing: float = 0.0,
               path: Optional[Sequence[str]] = None) -> StepResult:
    """One SPOS step: forward and backward through the path of ``arch``, update only that path.

    After ``backward`` the gradient of every parameter not in ``path`` is set to ``None``, which makes
    SGD skip it entirely (no weight decay, no momentum-buffer update). Clipping, when enabled, uses the
    total norm over the path's gradients.

    Args:
        supernet: a supernet with ``forward(x, arch)`` and ``path_parameters(arch)``.
        arch: the sampled architecture.
        x: ``(B, C, H, W)`` inputs on the supernet's device.
        y: ``(B,)`` int64 labels.
        optimizer: optimizer over the supernet's parameters.
        grad_clip: maximum total gradient norm; ``0`` disables clipping.
        label_smoothing: cross-entropy label smoothing.
        path: parameter names of the path (default ``supernet.path_parameters(arch)``).

    Returns:
        A :class:`StepResult` of tensors (no device synchronization).
    """
    optimizer.zero_grad(set_to_none=True)
    out = supernet(x, arch)
    logits = out[0] if isinstance(out, (tuple, list)) else out  # (B, K); auxiliary outputs are ignored
    loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    loss.backward()

    on_path = set(supernet.path_parameters(arch) if path is None else path)
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
        raise ValueError(f"path_parameters({arch!r}) names parameters the supernet does not have: {unknown[:5]}")
    if stray and type(supernet) not in _warned_unlisted:
        # The forward used parameters that path_parameters() does not list: a bug in the space.
        _warned_unlisted.add(type(supernet))
        logger.warning("%s: forward(x, arch) used parameters not listed by path_parameters(arch) (e.g. %s); "
                       "they are not updated", type(supernet).__name__, stray[:3])

    grad_norm = None
    if grad_clip > 0 and params:
        grad_norm = nn.utils.clip_grad_norm_(params, grad_clip).detach()
    optimizer.step()
    with torch.no_grad():
        correct = (logits.detach().argmax(dim=1) == y).sum()
    return StepResult(loss.detach(), correct, grad_norm)


def _derived_seed(seed: int, purpose: str, index: int) -> int:
    """A 63-bit seed from ``(seed, purpose, index)``, stable across processes and platforms."""
    digest = hashlib.sha256(f"fastnas.spos:{seed}:{purpose}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Forks the global torch RNG (CPU and, for CUDA, the device's) and seeds it; restores it afterwards."""
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


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, config: TrainConfig, epoch: int) -> Iterator[Batch]:
    g = torch.Generator().manual_seed(_derived_seed(config.seed, "batches", epoch))
    n = x.shape[0]
    perm = torch.randperm(n, generator=g)
    if x.device.type != "cpu":
        perm = perm.to(x.device)
    stop = n - n % config.batch_size if config.drop_last else n
    for start in range(0, stop, config.batch_size):
        idx = perm[start:start + config.batch_size]
        yield x.index_select(0, idx), y.index_select(0, idx)


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


def _run_fingerprint(config: TrainConfig, space: Any, supernet: nn.Module) -> str:
    layout = [[k, list(v.shape)] for k, v in supernet.state_dict().items()]
    return fingerprint({"config": config.to_dict(), "space": _space_identity(space), "layout": layout})


def _cpu_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _mismatch_hint(payload: Dict[str, Any], config: TrainConfig, space: Any) -> str:
    saved_cfg = payload.get("config", {}) or {}
    diffs = [f"{k}: checkpoint {saved_cfg.get(k)!r} vs now {v!r}" for k, v in config.to_dict().items()
             if saved_cfg.get(k) != v]
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
                   batch_fn: Optional[Callable[[int], Iterable[Batch]]] = None) -> TrainResult:
    """Trains a weight-sharing supernet with uniform single-path sampling (SPOS).

    Per step: ``arch = space.sample(rng)`` (one path for the whole batch), cross-entropy, backward,
    off-path gradients set to ``None``, gradient clipping over the path, SGD step. Per epoch: cosine
    learning-rate step, then a checkpoint (when ``checkpoint_path`` is given).

    Args:
        supernet: the supernet (moved to ``device`` in place; left in the training mode it had).
        space: the space whose ``sample(rng)`` draws the architectures.
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

    Returns:
        A :class:`TrainResult`.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if not hasattr(supernet, "path_parameters"):
        raise ValueError(f"supernet: {type(supernet).__name__} has no path_parameters(arch); expected a Supernet")
    _check_data(train_x, train_y, batch_fn)
    device = torch.device(device)
    supernet.to(device)
    was_training = supernet.training

    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    init_path = ckpt.with_name(INIT_FILENAME) if ckpt is not None else None
    if ckpt is not None and ckpt.name == INIT_FILENAME:
        raise ValueError(f"checkpoint_path={str(ckpt)!r}: the name {INIT_FILENAME!r} is reserved for the "
                         "initial weights; choose another file name")

    run_fp = _run_fingerprint(config, space, supernet)
    optimizer = torch.optim.SGD(supernet.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=config.lr_min)
    result = TrainResult()
    start_epoch = 0

    if ckpt is not None and resume and ckpt.exists():
        payload = load_checkpoint(ckpt, expected_kind=CHECKPOINT_KIND)
        if payload.get("fingerprint") != run_fp:
            raise ValueError(f"checkpoint {str(ckpt)!r} belongs to another run ({_mismatch_hint(payload, config, space)}); "
                             "use another checkpoint path or resume=False")
        init = load_checkpoint(init_path, expected_kind=INIT_KIND, expected_fingerprint=run_fp) \
            if init_path.exists() else None
        if init is None:
            raise ValueError(f"checkpoint {str(ckpt)!r} has no initial weights beside it ({str(init_path)!r} "
                             "is missing); resume=False starts over")
        supernet.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        history = payload["history"]
        result.epoch_loss = list(history["loss"])
        result.epoch_accuracy = list(history["accuracy"])
        result.epoch_time = list(history["time"])
        result.epoch_lr = list(history["lr"])
        result.steps = int(payload["step"])
        result.initial_state = dict(init["model"])
        start_epoch = result.resumed_from_epoch = int(payload["epoch"])
        logger.info("resuming SPOS training from %s at epoch %d/%d", ckpt, start_epoch, config.epochs)
    else:
        if ckpt is not None and ckpt.exists():
            logger.warning("resume=False: overwriting the checkpoint %s", ckpt)
        result.initial_state = _cpu_state(supernet)
        if init_path is not None:
            save_checkpoint(init_path, {"kind": INIT_KIND, "fingerprint": run_fp, "config": config.to_dict(),
                                        "space": _space_identity(space), "model": result.initial_state})

    steps_per_epoch: Optional[int] = None
    if batch_fn is None:
        n = train_x.shape[0]
        steps_per_epoch = n // config.batch_size if config.drop_last else -(-n // config.batch_size)
        if steps_per_epoch == 0:
            raise ValueError(f"drop_last=True with batch_size={config.batch_size} > N={n} leaves no batches")
    if progress is not None:
        progress("start", {"epochs": config.epochs, "start_epoch": start_epoch, "steps_per_epoch": steps_per_epoch,
                           "resumed": start_epoch > 0})

    supernet.train()
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            batches = batch_fn(epoch) if batch_fn is not None else _tensor_batches(train_x, train_y, config, epoch)
            with _seeded_global_rng(_derived_seed(config.seed, "torch", epoch), device):
                for i, (xb, yb) in enumerate(batches):
                    xb = xb.to(device, non_blocking=True)
                    yb = yb.to(device, non_blocking=True)
                    arch = space.sample(random.Random(_derived_seed(config.seed, "arch", result.steps)))
                    step = train_step(supernet, arch, xb, yb, optimizer, grad_clip=config.grad_clip,
                                      label_smoothing=config.label_smoothing)
                    b = yb.shape[0]
                    loss_sum += step.loss.double() * b
                    correct += step.correct
                    seen += b
                    result.steps += 1
                    if progress is not None:
                        progress("step", {"epoch": epoch, "step": i, "global_step": result.steps,
                                          "steps_per_epoch": steps_per_epoch, "loss": float(step.loss),
                                          "lr": lr, "arch": arch})
            if seen == 0:
                raise ValueError(f"epoch {epoch} produced no batches (check batch_fn / the training data)")
            scheduler.step()
            epoch_loss = float(loss_sum) / seen
            epoch_acc = int(correct) / seen
            if not math.isfinite(epoch_loss):
                logger.warning("epoch %d: training loss is %s (diverged? try a lower lr)", epoch, epoch_loss)
            result.epoch_loss.append(epoch_loss)
            result.epoch_accuracy.append(epoch_acc)
            result.epoch_time.append(time.perf_counter() - t0)
            result.epoch_lr.append(lr)
            if ckpt is not None:
                save_checkpoint(ckpt, {
                    "kind": CHECKPOINT_KIND, "fingerprint": run_fp, "config": config.to_dict(),
                    "space": _space_identity(space), "epoch": epoch + 1, "step": result.steps,
                    "model": supernet.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    # All randomness is derived from (seed, epoch, step): nothing else to restore.
                    "rng": {"scheme": "sha256(seed, purpose, index)", "seed": config.seed},
                    "history": {"loss": result.epoch_loss, "accuracy": result.epoch_accuracy,
                                "time": result.epoch_time, "lr": result.epoch_lr},
                })
            logger.info("epoch %d/%d: loss %.4f, train acc %.4f, lr %.5g, %.1f s", epoch + 1, config.epochs,
                        epoch_loss, epoch_acc, lr, result.epoch_time[-1])
            if progress is not None:
                progress("epoch", {"epoch": epoch, "epochs": config.epochs, "loss": epoch_loss,
                                   "accuracy": epoch_acc, "lr": lr, "time": result.epoch_time[-1],
                                   "steps": result.steps})
    finally:
        supernet.train(was_training)
    if progress is not None:
        progress("end", result.to_dict())
    return result
