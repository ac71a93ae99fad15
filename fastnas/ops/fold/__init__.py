"""Fold eval-mode BatchNorm into the preceding convolution, for many (layer, candidate) pairs at once.

Builds the per-candidate kernels of the batched ("mixed-op") forward from a supernet's weights:
``dst = embed(w) * gamma / sqrt(var + eps)`` (a 1x1 kernel centred in a 3x3 one when ``dst`` is 3x3)
and ``bias = beta + (conv_bias - mean) * gamma / sqrt(var + eps)``. Equivalent plain PyTorch, per item::

    scale = (gamma.double() / torch.sqrt(var.double() + eps)).float()
    dst.zero_(); dst[:, :, p:p + k, p:p + k] = w * scale.view(-1, 1, 1, 1)
    bias.copy_(beta + (conv_bias - mean) * scale)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from fastnas.ops._dispatch import Backend, Dispatcher
from fastnas.ops.fold import cpp as _cpp
from fastnas.ops.fold import cuda as _cuda
from fastnas.ops.fold import reference as _reference

__all__ = ["FoldSpec", "fold_conv_bn", "DISPATCH"]

DISPATCH = Dispatcher(
    "fold_conv_bn",
    [
        Backend("reference", ("cpu", "cuda"), (torch.float32,), lambda: None, _reference),
        Backend("cpp", ("cpu",), (torch.float32,), _cpp.availability, _cpp),
        Backend("cuda", ("cuda",), (torch.float32,), _cuda.availability, _cuda),
    ],
    priority={"cpu": ["cpp", "reference"], "cuda": ["cuda", "reference"]},
)


@dataclass
class FoldSpec:
    """One (layer, candidate) pair.

    Attributes:
        dst: float32 ``(c_out, c_in, kd, kd)`` destination kernel (kd odd).
        bias: float32 ``(c_out,)`` destination bias.
        weight: source conv weight ``(c_out, c_in, ks, ks)`` with odd ``ks <= kd``, or None (zeros: the
            candidate does not use this layer).
        mean, var: BatchNorm running statistics ``(c_out,)``, or None (no BatchNorm).
        gamma, beta: BatchNorm affine parameters, or None (non-affine).
        eps: BatchNorm epsilon.
        conv_bias: the convolution's bias ``(c_out,)``, or None (no bias).
    """

    dst: torch.Tensor
    bias: torch.Tensor
    weight: Optional[torch.Tensor] = None
    mean: Optional[torch.Tensor] = None
    var: Optional[torch.Tensor] = None
    gamma: Optional[torch.Tensor] = None
    beta: Optional[torch.Tensor] = None
    eps: float = 1e-5
    conv_bias: Optional[torch.Tensor] = None


def _check(items: Sequence[FoldSpec]) -> torch.device:
    device = None
    for k, it in enumerate(items):
        if not isinstance(it, FoldSpec):
            raise TypeError(f"items[{k}]: expected a FoldSpec, got {type(it).__name__}")
        tensors = {"dst": it.dst, "bias": it.bias, "weight": it.weight, "mean": it.mean, "var": it.var,
                   "gamma": it.gamma, "beta": it.beta, "conv_bias": it.conv_bias}
        for name, t in tensors.items():
            if t is None:
                continue
            if t.dtype != torch.float32 or not t.is_contiguous():
                raise ValueError(f"items[{k}].{name}: expected a contiguous float32 tensor, got {t.dtype} "
                                 f"(contiguous={t.is_contiguous()})")
            device = device or t.device
            if t.device != device:
                raise ValueError(f"items[{k}].{name} is on {t.device}, expected {device}")
        c_out, c_in, kd, kd2 = it.dst.shape
        if kd != kd2 or kd % 2 == 0 or tuple(it.bias.shape) != (c_out,):
            raise ValueError(f"items[{k}]: dst shape {tuple(it.dst.shape)} / bias {tuple(it.bias.shape)}; "
                             "expected (c_out, c_in, k, k) with odd k and bias (c_out,)")
        if it.weight is not None:
            ks = it.weight.shape[-1]
            if tuple(it.weight.shape) != (c_out, c_in, ks, ks) or ks % 2 == 0 or ks > kd:
                raise ValueError(f"items[{k}].weight shape {tuple(it.weight.shape)}; expected "
                                 f"({c_out}, {c_in}, k, k) with odd k <= {kd}")
        if (it.mean is None) != (it.var is None):
            raise ValueError(f"items[{k}]: give both mean and var, or neither")
        for name in ("mean", "var", "gamma", "beta", "conv_bias"):
            t = getattr(it, name)
            if t is not None and tuple(t.shape) != (c_out,):
                raise ValueError(f"items[{k}].{name} shape {tuple(t.shape)}; expected ({c_out},)")
    return device or torch.device("cpu")


def fold_conv_bn(items: Sequence[FoldSpec], *, backend: str | None = None) -> None:
    """Writes every item's folded kernel and bias (see the module docstring)."""
    items = list(items)
    device = _check(items)
    if not items:
        return
    chosen = DISPATCH.pick(device, {torch.float32}, backend)
    with torch.no_grad():
        chosen.impl.fold_conv_bn(items)
