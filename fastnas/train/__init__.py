"""Supernet training: the SPOS single-path trainer and checkpoint files."""

from __future__ import annotations

from fastnas.train.checkpoint import FORMAT_VERSION, fingerprint, load_checkpoint, save_checkpoint
from fastnas.train.spos import (
    CHECKPOINT_KIND,
    INIT_FILENAME,
    INIT_KIND,
    StepResult,
    TrainConfig,
    TrainResult,
    cosine_lr,
    train_step,
    train_supernet,
)

__all__ = [
    "CHECKPOINT_KIND", "FORMAT_VERSION", "INIT_FILENAME", "INIT_KIND", "StepResult", "TrainConfig",
    "TrainResult", "cosine_lr", "fingerprint", "load_checkpoint", "save_checkpoint", "train_step",
    "train_supernet",
]
