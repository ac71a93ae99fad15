"""CUDA backend of the BatchNorm fold: one block per (layer, candidate, out-channel) row."""

from __future__ import annotations

from typing import Sequence

import torch

from fastnas._native import C
from fastnas.ops.fold.cpp import _ptr
from fastnas.ops.perturb.cuda import availability

__all__ = ["availability", "fold_conv_bn"]


def fold_conv_bn(items: Sequence) -> None:
    device = items[0].dst.device
    with torch.cuda.device(device):
        C.fold_conv_bn_cuda(
            [[it.dst.data_ptr(), it.bias.data_ptr(), _ptr(it.weight), _ptr(it.mean), _ptr(it.var), _ptr(it.gamma),
              _ptr(it.beta), _ptr(it.conv_bias)] for it in items],
            [[it.dst.shape[0], it.dst.shape[1], it.weight.shape[-1] if it.weight is not None else 1,
              it.dst.shape[-1]] for it in items],
            [float(it.eps) for it in items],
            torch.cuda.current_stream(device).cuda_stream,
        )
