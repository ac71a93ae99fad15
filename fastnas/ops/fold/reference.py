"""Plain-torch reference of the BatchNorm-into-convolution fold: the specification."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["fold_conv_bn"]


def fold_conv_bn(items: Sequence) -> None:
    """For each :class:`~fastnas.ops.fold.FoldSpec`: ``dst = embed(w) * scale``,
    ``bias = beta + (conv_bias - mean) * scale``.

    ``scale = gamma / sqrt(var + eps)`` in float64, rounded once to float32 (as the native kernel).
    """
    for it in items:
        if it.weight is None:
            it.dst.zero_()
            it.bias.zero_()
            continue
        c_out = it.dst.shape[0]
        cb = it.conv_bias if it.conv_bias is not None else torch.zeros(c_out, dtype=torch.float32,
                                                                          device=it.dst.device)
        if it.mean is None:
            scale = torch.ones(c_out, dtype=torch.float32, device=it.dst.device)
            shift = cb
        else:
            g = it.gamma.double() if it.gamma is not None else torch.ones(c_out, dtype=torch.float64,
                                                                          device=it.dst.device)
            scale = (g / torch.sqrt(it.var.double() + it.eps)).float()
            beta = it.beta if it.beta is not None else torch.zeros_like(scale)
            shift = beta + (cb - it.mean) * scale
        kd, ks = it.dst.shape[-1], it.weight.shape[-1]
        pad = (kd - ks) // 2
        it.dst.zero_()
        it.dst[:, :, pad:pad + ks, pad:pad + ks] = it.weight * scale.view(-1, 1, 1, 1)
        it.bias.copy_(shift)
