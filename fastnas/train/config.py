"""The settings of a training run: :class:`TrainConfig` (one config for the supernet and for retraining)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from fastnas._hints import did_you_mean

__all__ = ["TrainConfig", "SAMPLERS", "PRECISIONS", "LATER_FIELDS"]

#: Supernet samplers (``TrainConfig.sampler``); see :mod:`fastnas.train.samplers`.
SAMPLERS = ("uniform", "per-cell", "fair", "sandwich")
#: Training precisions (``TrainConfig.precision``).
PRECISIONS = ("fp32", "bf16")
#: Fields added after the first checkpoint format, with the defaults that train as fastnas 0.1 did.
LATER_FIELDS: Dict[str, Any] = {"sampler": "uniform", "precision": "fp32", "channels_last": False, "sync_bn": True}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one run of the training loop (defaults: the GeNAS/DARTS supernet recipe).

    The supernet (:func:`fastnas.train.train_supernet`) and a retrained network
    (:func:`fastnas.run.retrain.retrain`) are trained by the same loop with these settings.

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
        augment: whether the data layer augments the training images. The loop itself does not
            augment; the caller provides augmented batches (:class:`fastnas.data.Batches` with
            ``augment=True``). Recorded here so that the setting is saved and part of the checkpoint
            fingerprint.
        drop_last: drop the last incomplete batch of each epoch (the reference code keeps it).
        sampler: which paths a supernet step trains (:data:`SAMPLERS`): ``uniform`` -- one architecture
            shared by all cells (SPOS); ``per-cell`` -- every searched cell its own, each node redrawn until
            it has a non-``none`` input (RLNAS); ``fair`` -- FairNAS strict fairness, every op of every edge
            once per step (K paths, gradients summed, one optimizer step); ``sandwich`` -- a nested family's
            largest, smallest and 2 random members per step, the others distilled from the largest (the
            sandwich rule; needs a space with ``largest()`` and ``smallest()``). Read by
            :func:`fastnas.train.train_supernet`, not by :func:`fastnas.train.train`.
        precision: ``fp32``, or ``bf16`` (forward and loss under ``torch.autocast`` with bfloat16; weights,
            gradients and the optimizer stay fp32). Fast only where the CPU has native bf16
            (avx512_bf16 or AMX; see :func:`fastnas.train.bf16_support`) or on a GPU.
        channels_last: train with the model and the batches in channels-last memory format (the same
            values; the model returns to the default layout when training ends). Measured 1.25-2.3x the
            default layout for NB201 supernets on a CPU (``benchmarks/bench_train.py``).
        sync_bn: under ``torch.distributed`` with more than one rank, BatchNorm normalises by the statistics
            of the global batch (:mod:`fastnas.train.sync_batchnorm`), so the run trains what one process on
            the whole batch would, up to reduction order; ``False``: each rank's shard statistics (cheaper,
            another trajectory). No effect in one process.
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
    sampler: str = field(default="uniform", metadata={"choices": SAMPLERS})
    precision: str = field(default="fp32", metadata={"choices": PRECISIONS})
    channels_last: bool = False
    sync_bn: bool = field(default=True, metadata={"help": "under torch.distributed, BatchNorm over the global batch "
                                                  "(the single-process trajectory; costs 2 collectives per BatchNorm "
                                                  "and step), true/false; no effect in one process"})

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
        for name in ("nesterov", "augment", "drop_last", "sync_bn"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Invalid {name} value: {getattr(self, name)!r} (expected True or False)")
        for name, options in (("sampler", SAMPLERS), ("precision", PRECISIONS)):
            v = getattr(self, name)
            if v not in options:
                hint = did_you_mean(str(v), options, n=1) if isinstance(v, str) else ""
                raise ValueError(f"Invalid {name} value: {v!r} (expected one of {', '.join(options)}){hint}")
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"Invalid channels_last value: {self.channels_last!r} (expected True or False)")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Invalid nesterov value: True needs momentum > 0 (got momentum=0)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> Dict[str, Any]:
        """What a checkpoint fingerprint hashes: :meth:`to_dict` without the fields added since checkpoint
        format 1 (:data:`LATER_FIELDS`) while they keep their defaults, so a run of an earlier fastnas
        (which trained exactly as these defaults do) still resumes."""
        d = self.to_dict()
        for name, default in LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """The config from a dict; ``None`` values keep the defaults, unknown keys raise ``ValueError``."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                hint = did_you_mean(key, names, n=3)
                raise ValueError(f"unknown TrainConfig key {key!r}; expected one of {names}{hint}")
        return cls(**{k: v for k, v in d.items() if v is not None})
