"""Training: one loop (:func:`train`) with plug points -- a sampler (which architectures a step trains)
and a step strategy (how a batch trains them) -- and the SPOS supernet trainer built on it.

* :func:`train` -- epochs, cosine schedule, SGD, clipping, end-of-epoch checkpoints and resume;
* samplers: :class:`UniformSampler` (SPOS), :class:`FixedSampler` (one network);
* step strategies: :class:`SinglePath` (SPOS), :class:`Standalone` (a built network);
* :func:`train_supernet` -- the loop with ``UniformSampler`` and ``SinglePath``;
* checkpoint files: :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`fingerprint`.
"""

from __future__ import annotations

from fastnas.train.checkpoint import FORMAT_VERSION, fingerprint, load_checkpoint, save_checkpoint
from fastnas.train.config import TrainConfig
from fastnas.train.loop import Checkpointing, Sampler, StepResult, StepStrategy, TrainResult, cosine_lr, train
from fastnas.train.samplers import FixedSampler, UniformSampler
from fastnas.train.spos import CHECKPOINT_KIND, INIT_FILENAME, INIT_KIND, train_step, train_supernet
from fastnas.train.steps import SinglePath, Standalone, single_path_step

__all__ = [
    "CHECKPOINT_KIND", "FORMAT_VERSION", "INIT_FILENAME", "INIT_KIND", "StepResult", "TrainConfig",
    "TrainResult", "cosine_lr", "fingerprint", "load_checkpoint", "save_checkpoint", "train_step",
    "train_supernet", "train", "Checkpointing", "Sampler", "StepStrategy", "UniformSampler", "FixedSampler",
    "SinglePath", "Standalone", "single_path_step",
]
