"""NAR's candidate operators for a refinable convolution (plain PyTorch, imports only torch: exported
network sources copy these classes).

Every candidate replaces one ``nn.Conv2d`` (``c_in -> c_out``, stride ``s``) and keeps its input and output
shapes; the BatchNorm (and anything else) after the conv stays as it was. ``bias`` follows the original
conv (``bias=False`` before a BatchNorm).

* ``conv_3x3``, ``conv_5x5``: a dense ``k x k`` conv, stride ``s``, padding ``k // 2``;
* ``sep_conv_3x3``, ``sep_conv_5x5``: depthwise-separable, a depthwise ``k x k`` conv (stride ``s``,
  ``c_in`` groups) then a pointwise 1x1 conv ``c_in -> c_out`` (no BatchNorm or ReLU in between: the
  original conv's own BatchNorm follows);
* ``max_pool_3x3``, ``avg_pool_3x3``: the parameter-free 'convolution-like' ops: a 3x3 pool with the
  original conv's stride and padding 1 (average: padding not counted). The original conv changes the
  resolution by its stride, which the pool copies; a pool cannot change channels, so where
  ``c_in != c_out`` a 1x1 conv ``c_in -> c_out`` follows it (the projection the original conv did
  implicitly); where they are equal the op has no parameters.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SepConv", "PoolConv", "CANDIDATE_OPS", "make_op"]


class SepConv(nn.Module):
    """Depthwise ``k x k`` conv (stride, ``c_in`` groups) then pointwise 1x1 conv ``c_in -> c_out``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=kernel // 2, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class PoolConv(nn.Module):
    """A 3x3 max or average pool (stride of the replaced conv, padding 1), then a 1x1 conv where the
    channels change (``proj``; absent otherwise)."""

    def __init__(self, kind: str, c_in: int, c_out: int, stride: int, bias: bool) -> None:
        super().__init__()
        if kind == "max":
            self.pool = nn.MaxPool2d(3, stride=stride, padding=1)
        elif kind == "avg":
            self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        else:
            raise ValueError(f"kind={kind!r}: expected 'max' or 'avg'")
        self.proj = nn.Conv2d(c_in, c_out, 1, bias=bias) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        return x if self.proj is None else self.proj(x)


#: The candidate operator names, in their default order (arch index ``i`` is ``CANDIDATE_OPS[i - 1]`` for
#: the default candidate list; 0 keeps the original conv).
CANDIDATE_OPS = ("conv_3x3", "conv_5x5", "sep_conv_3x3", "sep_conv_5x5", "max_pool_3x3", "avg_pool_3x3")


def _stride(conv: nn.Conv2d) -> int:
    s = conv.stride
    return int(s[0]) if isinstance(s, tuple) else int(s)


def make_op(name: str, conv: nn.Conv2d) -> nn.Module:
    """A fresh candidate ``name`` (one of :data:`CANDIDATE_OPS`) replacing ``conv``."""
    c_in, c_out, stride, bias = conv.in_channels, conv.out_channels, _stride(conv), conv.bias is not None
    if name in ("conv_3x3", "conv_5x5"):
        k = int(name[-1])
        return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=bias)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        return SepConv(c_in, c_out, int(name[-1]), stride, bias)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        return PoolConv(name[:3], c_in, c_out, stride, bias)
    raise ValueError(f"candidate op {name!r}: expected one of {list(CANDIDATE_OPS)}")
