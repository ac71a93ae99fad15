"""Synchronised BatchNorm for data-parallel training, on the CPU (Gloo) as on GPUs.

With the batch split over ``W`` ranks, plain BatchNorm normalises each rank's shard by that shard's
statistics: ``W`` processes then train a different network than one process on the whole batch (and
their running statistics drift apart). Synchronised BatchNorm normalises by the statistics of the global
batch, so the distributed trajectory is the single-process one up to the order of floating-point
reductions.

:func:`sync_batchnorm` converts a model's BatchNorm layers in place by switching their class to a
synchronised subclass (the same module objects, parameters, buffers, names and ``state_dict``; an
``isinstance(m, nn.BatchNorm2d)`` check still holds, so :func:`fastnas.spaces.recalibrate_bn` still
finds them); :func:`unsync_batchnorm` switches them back, and :func:`synced_batchnorm` does both around
a block (the training loop converts for the run and restores afterwards, so scoring never synchronises).

A converted layer synchronises only in training mode with ``torch.distributed`` initialised and more
than one rank; otherwise it runs its original ``forward`` (bit-identical results in one process and in
eval mode). The synchronised forward, per channel ``c`` over the batch and spatial dimensions::

    s, q, n = all_reduce([x.sum(), (x * x).sum(), x.numel() / C])    # float64 sums, one collective
    mean = s / n;  var = q / n - mean ** 2                             # the global batch's (biased)
    y = (x - mean) / sqrt(var + eps) * weight + bias
    running_mean <- (1 - m) * running_mean + m * mean
    running_var  <- (1 - m) * running_var + m * var * n / (n - 1)     # unbiased, as nn.BatchNorm2d

The all-reduce is differentiable (its backward all-reduces the gradients of the sums), so the backward
is that of BatchNorm over the global batch. When the shards are uneven (the smaller last batch of an
epoch) the loop weights each rank's parameter gradients by its share of the batch
(:func:`fastnas.train.distributed.allreduce_gradients`); the backward here weights the statistics'
gradients to match, so the result stays the global batch's.

Backends: ``"fastnas"`` is the formula above (any device, any backend, prefix-sliced layers such as
:class:`~fastnas.spaces.elastic_resnet_ops.ElasticBatchNorm2d`); ``"torch"`` runs the autograd function
behind :class:`torch.nn.SyncBatchNorm` (CUDA only, fused kernels, whole layers only; its backward gives
every rank equal weight, exact for even shards). ``backend=None``: ``"torch"`` for whole layers on CUDA,
``"fastnas"`` otherwise.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Type

import torch
from torch import nn

from fastnas.spaces.elastic_resnet_ops import ElasticBatchNorm2d  # the prefix-sliced BatchNorm of the families

__all__ = ["sync_batchnorm", "unsync_batchnorm", "synced_batchnorm", "sync_batch_norm", "SyncBatchNorm1d",
           "SyncBatchNorm2d", "SyncBatchNorm3d", "SyncElasticBatchNorm2d", "BACKENDS", "local_batchnorm"]

#: Backends of the synchronised forward (see the module docstring).
BACKENDS = ("fastnas", "torch")


class _AllReduceStats(torch.autograd.Function):
    """``all_reduce(SUM)`` of a rank's statistics whose backward weights rank ``r``'s gradient by ``k_r``.

    ``k_r = W * n_r / n`` (the rank's share of the batch relative to an even split; the last entry of the
    statistics is the count). Rank ``r``'s parameter gradients are later multiplied by ``n_r / n``, while
    the gradient of the statistics must carry every rank's loss with its own weight: so the gradient
    entering the reduction is multiplied by ``k_r`` and the one leaving it divided by ``k_r``. For even
    shards ``k_r = 1`` and this is :func:`torch.distributed.nn.functional.all_reduce`.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = local.clone()
        torch.distributed.all_reduce(total)
        w = torch.distributed.get_world_size()
        n_r, n = float(local[-1]), float(total[-1])
        ctx.k = w * n_r / n
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        k = ctx.k
        g = grad.contiguous() if k == 1.0 else grad * k
        g = g.clone()
        torch.distributed.all_reduce(g)
        return g if k == 1.0 else g / k


def sync_batch_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], momentum: float,
                    eps: float) -> torch.Tensor:
    """Training-mode BatchNorm of ``x`` with the statistics of the batch over all ranks (``"fastnas"`` backend).

    Args:
        x: ``(B, C, ...)`` this rank's shard.
        weight, bias: ``(C,)`` affine parameters or ``None``.
        running_mean, running_var: ``(C,)`` buffers updated in place (``momentum`` average), or ``None``.
        momentum: the update factor of the running statistics.
        eps: added to the variance.

    Returns:
        ``(B, C, ...)`` normalised ``x``, in its dtype.
    """
    c = x.shape[1]
    dims = [0] + list(range(2, x.dim()))
    count = torch.full((1,), x.numel() // max(c, 1), dtype=torch.float64, device=x.device)
    # float64 sums: var = E[x^2] - E[x]^2 would cancel in float32 when |mean| >> std.
    xd = x.double()  # squares in float64 too: a float32 x * x loses var where var << mean^2
    local = torch.cat([xd.sum(dims), (xd * xd).sum(dims), count])
    total = _AllReduceStats.apply(local)
    n = total[-1].detach()  # a count: no gradient
    if float(n) <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got {int(float(n))} over all ranks "
                         f"(input size {list(x.shape)} on this rank)")
    mean = total[:c] / n
    var = (total[c:2 * c] / n - mean * mean).clamp_min(0)  # (C,) biased, as used to normalise
    invstd = torch.rsqrt(var + eps)
    shape = (1, c) + (1,) * (x.dim() - 2)
    scale = invstd if weight is None else invstd * weight
    y = (x - mean.to(x.dtype).view(shape)) * scale.to(x.dtype).view(shape)
    if bias is not None:
        y = y + bias.to(x.dtype).view(shape)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var.detach() * (n / (n - 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return y


def _torch_sync(x: torch.Tensor, weight, bias, running_mean, running_var, momentum: float, eps: float):
    from torch.nn.modules._functions import SyncBatchNorm as _TorchSyncBN  # the function of nn.SyncBatchNorm
    group = torch.distributed.group.WORLD
    return _TorchSyncBN.apply(x, weight, bias, running_mean, running_var, eps, momentum, group,
                              torch.distributed.get_world_size())


def _sync_wanted() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


class _SyncMixin:
    """The synchronised training forward; everything else is the original class's."""

    _fastnas_plain: Type[nn.Module]
    _fastnas_backend: Optional[str] = None
    _fastnas_sliced = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c, ...), c <= num_features
        if not (self.training and _sync_wanted()):
            return self._fastnas_plain.forward(self, x)
        self._check_input_dim(x)
        c = x.shape[1]
        if c != self.num_features and not self._fastnas_sliced:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels, got input of shape "
                             f"{list(x.shape)}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        rm = self.running_mean[:c] if self.track_running_stats and self.running_mean is not None else None
        rv = self.running_var[:c] if self.track_running_stats and self.running_var is not None else None
        w = self.weight[:c] if self.weight is not None else None
        b = self.bias[:c] if self.bias is not None else None
        backend = self._fastnas_backend
        if backend is None:
            backend = "torch" if x.is_cuda and c == self.num_features else "fastnas"
        if backend == "torch":
            return _torch_sync(x, w, b, rm, rv, factor, self.eps)
        return sync_batch_norm(x, w, b, rm, rv, factor, self.eps)


class SyncBatchNorm1d(_SyncMixin, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` with global-batch statistics in distributed training."""

    _fastnas_plain = nn.BatchNorm1d


class SyncBatchNorm2d(_SyncMixin, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with global-batch statistics in distributed training."""

    _fastnas_plain = nn.BatchNorm2d


class SyncBatchNorm3d(_SyncMixin, nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` with global-batch statistics in distributed training."""

    _fastnas_plain = nn.BatchNorm3d


class SyncElasticBatchNorm2d(_SyncMixin, ElasticBatchNorm2d):
    """:class:`~fastnas.spaces.elastic_resnet_ops.ElasticBatchNorm2d` (an input of ``c`` channels uses the first
    ``c`` entries) with global-batch statistics in distributed training."""

    _fastnas_plain = ElasticBatchNorm2d
    _fastnas_sliced = True


_SYNCED: Dict[type, type] = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d,
                             nn.BatchNorm3d: SyncBatchNorm3d, ElasticBatchNorm2d: SyncElasticBatchNorm2d}
_PLAIN: Dict[type, type] = {v: k for k, v in _SYNCED.items()}


def sync_batchnorm(model: nn.Module, *, backend: Optional[str] = None) -> int:
    """Converts every BatchNorm layer of ``model`` in place to its synchronised class (see the module docstring).

    Args:
        model: the network; its BatchNorm layers must be :class:`torch.nn.BatchNorm1d`, ``2d``, ``3d`` or
            :class:`~fastnas.spaces.elastic_resnet_ops.ElasticBatchNorm2d` (exactly, not other subclasses,
            whose ``forward`` this could not know); :class:`torch.nn.SyncBatchNorm` and layers already
            converted are left as they are.
        backend: ``None`` (``"torch"`` for whole layers on CUDA, else ``"fastnas"``), ``"fastnas"`` or
            ``"torch"`` (CUDA only, whole layers only).

    Returns:
        The number of layers converted.

    Raises:
        ValueError: an unknown ``backend``, or a BatchNorm layer of another class (nothing is converted then).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected None or one of {', '.join(BACKENDS)}")
    todo = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or isinstance(m, (nn.SyncBatchNorm, _SyncMixin)):
            continue
        target = _SYNCED.get(type(m))
        if target is None:
            raise ValueError(f"sync_batchnorm: module {name or '<root>'!r} is a {type(m).__module__}.{type(m).__name__}, "
                             "a BatchNorm class it cannot convert (known: BatchNorm1d/2d/3d, ElasticBatchNorm2d); "
                             "use sync_bn=False or make it one of those")
        if backend == "torch" and target is SyncElasticBatchNorm2d:
            raise ValueError(f"sync_batchnorm: backend='torch' cannot slice module {name!r} "
                             "(ElasticBatchNorm2d); use backend=None or 'fastnas'")
        todo.append((m, target))
    for m, target in todo:
        m.__class__ = target
        if backend is not None:
            m._fastnas_backend = backend
    return len(todo)


def unsync_batchnorm(model: nn.Module) -> int:
    """Converts the layers :func:`sync_batchnorm` converted back to their original classes; returns how many."""
    n = 0
    for m in model.modules():
        plain = _PLAIN.get(type(m))
        if plain is not None:
            m.__class__ = plain
            m.__dict__.pop("_fastnas_backend", None)
            n += 1
    return n


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module, enabled: bool = True, *, backend: Optional[str] = None) -> Iterator[int]:
    """Synchronised BatchNorm inside the block (:func:`sync_batchnorm`), the original classes afterwards.

    Yields the number of layers converted (0 when ``enabled`` is false). Only the layers converted here
    are restored.
    """
    if not enabled:
        yield 0
        return
    before = {id(m) for m in model.modules() if isinstance(m, _SyncMixin)}
    n = sync_batchnorm(model, backend=backend)
    try:
        yield n
    finally:
        for m in model.modules():
            plain = _PLAIN.get(type(m))
            if plain is not None and id(m) not in before:
                m.__class__ = plain
                m.__dict__.pop("_fastnas_backend", None)


@contextlib.contextmanager
def local_batchnorm(model: nn.Module) -> Iterator[int]:
    """Inside the block every synchronised layer of ``model`` uses its own process's batch statistics (no
    collective: ranks may run different numbers of forwards, e.g. each evaluating its share of candidates);
    synchronised again afterwards. Yields the number of layers switched."""
    synced = [(m, type(m)) for m in model.modules() if type(m) in _PLAIN]
    for m, cls in synced:
        m.__class__ = _PLAIN[cls]
    try:
        yield len(synced)
    finally:
        for m, cls in synced:
            m.__class__ = cls
