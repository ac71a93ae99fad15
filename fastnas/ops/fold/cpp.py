"""C++ CPU backend of the BatchNorm fold: one parallel region over every (layer, candidate) row."""

from __future__ import annotations

from typing import Sequence

import torch

from fastnas._native import C
from fastnas.ops.perturb.cpp import availability

__all__ = ["availability", "fold_conv_bn"]


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def fold_conv_bn(items: Sequence) -> None:
    C.fold_conv_bn_cpu(
        [[it.dst.data_ptr(), it.bias.data_ptr(), _ptr(it.weight), _ptr(it.mean), _ptr(it.var), _ptr(it.gamma),
          _ptr(it.beta), _ptr(it.conv_bias)] for it in items],
        [[it.dst.shape[0], it.dst.shape[1], it.weight.shape[-1] if it.weight is not None else 1, it.dst.shape[-1]]
         for it in items],
        [float(it.eps) for it in items],
        max(1, torch.get_num_threads()),
    )
