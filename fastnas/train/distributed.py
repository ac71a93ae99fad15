"""Data-parallel training on ``torch.distributed``: the few collectives the training loop needs.

Under ``torchrun`` (the caller initialises the process group: Gloo on the CPU, NCCL on GPUs) every
rank runs the same loop; :func:`fastnas.train.train` then

* trains the same sampled path on every rank at every step (samplers are functions of ``(seed, step)``;
  with :func:`debug_enabled` each step checks it: :func:`check_same_choice`);
* gives rank ``r`` its contiguous slice of the single-process batch (:func:`shard_batch`), so the
  union over ranks is exactly the batch one process would train on;
* averages the gradients of the parameters the path used -- only those, in one flattened bucket per
  dtype -- after ``backward`` and before clipping and the optimizer step (:func:`allreduce_gradients`):
  the result is the gradient of the global-batch mean loss, and parameters off the path keep
  ``grad=None`` exactly as in single-process SPOS;
* reports the epoch's loss and accuracy over all ranks; rank 0 alone writes checkpoints
  (:func:`is_main`, then :func:`barrier`).

One process -- ``torch.distributed`` not initialised, or a world of size one -- is a world of size one:
:func:`world` is ``(0, 1)``, :func:`barrier` does nothing, and the loop runs exactly as without this
module (no collective, no copy).

Nothing here imports a layer above :mod:`fastnas.train`; other layers call ``torch.distributed``
themselves or these helpers.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["world", "is_main", "barrier", "shard_bounds", "shard_batch", "check_batch_size", "allreduce_gradients",
           "broadcast_module", "average_buffers", "all_reduce_sum", "check_same_choice", "check_same_value",
           "debug_enabled", "DEBUG_ENV", "DistributedMismatchError"]

#: Environment variable that turns on the cross-rank checks (``FASTNAS_DEBUG_DIST=1``).
DEBUG_ENV = "FASTNAS_DEBUG_DIST"


class DistributedMismatchError(RuntimeError):
    """The ranks disagree on something they must share (the step's architecture, the gradient layout)."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when ``torch.distributed`` is not initialised."""
    if not _initialized():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes files); ``True`` in one process."""
    return world()[0] == 0


def barrier() -> None:
    """Waits for every rank; does nothing in one process."""
    if world()[1] > 1:
        torch.distributed.barrier()


def debug_enabled(flag: Optional[bool] = None) -> bool:
    """The cross-rank checks: ``flag`` when given, else whether ``FASTNAS_DEBUG_DIST`` is set to a true value."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _comm_device(fallback: torch.device) -> torch.device:
    """Where the small bookkeeping tensors of a collective live: NCCL needs CUDA tensors, Gloo takes any."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device()) if fallback.type != "cuda" else fallback
    return fallback


def check_batch_size(batch_size: int, world_size: Optional[int] = None) -> None:
    """``ValueError`` unless ``world_size`` (default: this world's) divides ``batch_size``."""
    w = world()[1] if world_size is None else world_size
    if batch_size % w:
        raise ValueError(f"batch_size={batch_size} cannot be split over world size {w}: with torch.distributed the "
                         f"global batch is split evenly over the ranks; use a batch_size that is a multiple of {w}")


def shard_bounds(n: int, rank: int, world_size: int) -> Tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s slice of a batch of ``n``: ``[r*n//W, (r+1)*n//W)``.

    The slices are contiguous and cover the batch; for ``n`` a multiple of ``W`` each has ``n / W``
    samples (a smaller final batch of an epoch may split unevenly: :func:`allreduce_gradients` weights
    each rank by its share).
    """
    return rank * n // world_size, (rank + 1) * n // world_size


def shard_batch(x: torch.Tensor, y: Optional[torch.Tensor] = None, *, rank: Optional[int] = None,
                world_size: Optional[int] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """This rank's contiguous slice of the global batch ``(x, y)`` (views, no copy).

    Args:
        x: ``(B, ...)`` the single-process batch.
        y: ``(B,)`` labels or ``None``.
        rank, world_size: default this process's (:func:`world`).

    Returns:
        ``(x[start:stop], y[start:stop])`` with ``(start, stop) = shard_bounds(B, rank, world_size)``.

    Raises:
        ValueError: the batch has fewer samples than there are ranks (a rank would get none).
    """
    r, w = world()
    r = r if rank is None else rank
    w = w if world_size is None else world_size
    n = x.shape[0]
    if w == 1:
        return x, y
    if n < w:
        raise ValueError(f"a batch of {n} samples cannot be split over world size {w} (every rank needs at least "
                         "one sample); use drop_last=True or a training set whose size leaves a final batch of at "
                         f"least {w}")
    a, b = shard_bounds(n, r, w)
    return x[a:b], (y[a:b] if y is not None else None)


def _buckets(tensors: Iterable[torch.Tensor]) -> Dict[Tuple[torch.dtype, torch.device], List[torch.Tensor]]:
    out: Dict[Tuple[torch.dtype, torch.device], List[torch.Tensor]] = {}
    for t in tensors:
        out.setdefault((t.dtype, t.device), []).append(t)
    return out


def allreduce_gradients(params: Sequence[torch.Tensor], *, weight: float, debug: bool = False,
                        what: Any = None) -> None:
    """Replaces each ``p.grad`` by ``sum over ranks of weight_r * p.grad_r``, in one bucket per dtype.

    With ``weight = local batch / global batch`` (``1 / W`` for even shards) that is the gradient of the
    global-batch mean loss. Only ``params`` take part, in the given order, which must be the same on
    every rank (the parameters of the one path every rank trains); parameters whose ``grad`` is ``None``
    are skipped (that, too, must agree: it depends on the path only). The gradients are copied into one
    flat buffer (``torch._utils._flatten_dense_tensors``), reduced by one ``all_reduce`` and copied back.

    Args:
        params: the parameters to synchronise.
        weight: this rank's factor.
        debug: first check that every rank reduces the same number of elements
            (:class:`DistributedMismatchError` otherwise, instead of a hang or garbage).
        what: named in the error (the step's architecture).
    """
    grads = [p.grad for p in params if p.grad is not None]
    for (dtype, device), bucket in sorted(_buckets(grads).items(), key=lambda kv: str(kv[0])):
        flat = torch._utils._flatten_dense_tensors(bucket)
        if debug:
            check_same_value(flat.numel(), f"number of {dtype} gradient elements to all-reduce ({what!r})",
                             device=device)
        flat.mul_(weight)
        torch.distributed.all_reduce(flat)
        for g, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            g.copy_(synced)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copies rank ``src``'s parameters and buffers to every rank (as DDP does at construction).

    One flat broadcast per dtype and device; does nothing in one process.
    """
    if world()[1] == 1:
        return
    tensors = [t for t in list(module.parameters()) + list(module.buffers())]
    with torch.no_grad():
        for _, bucket in sorted(_buckets(tensors).items(), key=lambda kv: str(kv[0])):
            flat = torch._utils._flatten_dense_tensors([t.detach() for t in bucket])
            torch.distributed.broadcast(flat, src)
            for t, value in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                t.copy_(value)


def average_buffers(module: nn.Module) -> None:
    """Replaces every floating-point buffer by its mean over the ranks (one bucket per dtype).

    For BatchNorm running means over even shards the mean over ranks is the running mean of the
    global batches exactly; for running variances it lacks the spread of the ranks' means (use
    synchronised BatchNorm for the global statistics). Integer buffers (``num_batches_tracked``) agree on
    every rank and are left alone.
    """
    w = world()[1]
    if w == 1:
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    with torch.no_grad():
        for _, bucket in sorted(_buckets(bufs).items(), key=lambda kv: str(kv[0])):
            flat = torch._utils._flatten_dense_tensors(bucket)
            torch.distributed.all_reduce(flat)
            flat.div_(w)
            for b, value in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                b.copy_(value)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks (a new tensor; ``values`` itself in one process)."""
    if world()[1] == 1:
        return values
    out = values.clone()
    torch.distributed.all_reduce(out)
    return out


def _gather_ints(value: int, device: torch.device) -> List[int]:
    w = world()[1]
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(device))
    out = [torch.empty_like(t) for _ in range(w)]
    torch.distributed.all_gather(out, t)
    return [int(o.item()) for o in out]


def check_same_value(value: int, what: str, *, device: Optional[torch.device] = None) -> None:
    """:class:`DistributedMismatchError` naming ``what`` and each rank's value unless all ranks hold ``value``."""
    if world()[1] == 1:
        return
    values = _gather_ints(int(value), torch.device("cpu") if device is None else torch.device(device))
    if len(set(values)) > 1:
        listing = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise DistributedMismatchError(f"the ranks disagree on the {what} ({listing})")


def _choice_hash(choice: Any) -> int:
    # repr, not hash(): Python's string hashes are salted per process.
    return int.from_bytes(hashlib.sha256(repr(choice).encode("utf-8")).digest()[:8], "little") >> 1


def check_same_choice(choice: Any, step: int, *, device: Optional[torch.device] = None) -> None:
    """:class:`DistributedMismatchError` unless every rank trains ``choice`` at ``step``.

    All ranks gather a hash of ``repr(choice)`` (one ``all_gather`` of an int64), so all of them raise
    together, naming the step, the ranks that differ from rank 0 and this rank's choice.
    """
    w = world()[1]
    if w == 1:
        return
    hashes = _gather_ints(_choice_hash(choice), torch.device("cpu") if device is None else torch.device(device))
    if len(set(hashes)) > 1:
        rank = world()[0]
        odd = [r for r, h in enumerate(hashes) if h != hashes[0]]
        raise DistributedMismatchError(
            f"step {step}: ranks {odd} sample another architecture than rank 0 (rank {rank} has {choice!r}); every "
            "rank must train the same path: the sampler must depend on (seed, step) only, with the same seed on "
            "every rank")

