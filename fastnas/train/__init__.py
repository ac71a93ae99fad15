"""Training: one loop (:func:`train`) with plug points -- a sampler (which architectures a step trains)
and a step strategy (how a batch trains them) -- and the SPOS supernet trainer built on it.

* :func:`train` -- epochs, cosine schedule, SGD, clipping, end-of-epoch checkpoints and resume;
* samplers: :class:`UniformSampler` (SPOS), :class:`PerCellSampler` (RLNAS), :class:`FairSampler`
  (FairNAS), :class:`FixedSampler` (one network); :func:`supernet_plan` maps ``TrainConfig.sampler`` to one;
* step strategies: :class:`SinglePath` (SPOS), :class:`MultiPath` (several paths, one step),
  :class:`Standalone` (a built network);
* :func:`train_supernet` -- the loop with the sampler of ``TrainConfig.sampler`` (default uniform SPOS);
* families: :class:`SandwichSampler` + :class:`Sandwich` (the sandwich rule, in-place distillation),
  :func:`train_family`, :func:`recalibrate_member`;
* precision: :func:`bf16_support` (is bf16 native here?);
* data parallelism under ``torchrun`` (:mod:`fastnas.train.distributed`): :func:`world`, :func:`is_main`,
  :func:`barrier`, :func:`shard_batch`, :func:`allreduce_gradients`; synchronised BatchNorm
  (:mod:`fastnas.train.sync_batchnorm`): :func:`sync_batchnorm`, :func:`unsync_batchnorm`;
* checkpoint files: :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`fingerprint`.
"""

from __future__ import annotations

from fastnas.train.checkpoint import FORMAT_VERSION, fingerprint, load_checkpoint, save_checkpoint
from fastnas.train.config import PRECISIONS, SAMPLERS, TrainConfig
from fastnas.train.distributed import (DistributedMismatchError, allreduce_gradients, barrier, is_main, shard_batch,
                                       world)
from fastnas.train.family import recalibrate_member, train_family
from fastnas.train.loop import Checkpointing, Sampler, StepResult, StepStrategy, TrainResult, cosine_lr, train
from fastnas.train.precision import bf16_support
from fastnas.train.samplers import (FairSampler, FixedSampler, PerCellSampler, SandwichSampler, UniformSampler,
                                    sandwich_options, supernet_plan)
from fastnas.train.spos import CHECKPOINT_KIND, INIT_FILENAME, INIT_KIND, train_step, train_supernet
from fastnas.train.steps import MultiPath, Sandwich, SinglePath, Standalone, distillation_loss, single_path_step
from fastnas.train.sync_batchnorm import sync_batchnorm, unsync_batchnorm

__all__ = [
    "CHECKPOINT_KIND", "FORMAT_VERSION", "INIT_FILENAME", "INIT_KIND", "StepResult", "TrainConfig",
    "TrainResult", "cosine_lr", "fingerprint", "load_checkpoint", "save_checkpoint", "train_step",
    "train_supernet", "train", "Checkpointing", "Sampler", "StepStrategy", "UniformSampler", "FixedSampler",
    "PerCellSampler", "FairSampler", "supernet_plan", "SAMPLERS", "PRECISIONS", "bf16_support",
    "SinglePath", "MultiPath", "Standalone", "single_path_step", "Sandwich", "SandwichSampler", "distillation_loss",
    "sandwich_options", "train_family", "recalibrate_member",
    "world", "is_main", "barrier", "shard_batch", "allreduce_gradients", "DistributedMismatchError",
    "sync_batchnorm", "unsync_batchnorm",
]
