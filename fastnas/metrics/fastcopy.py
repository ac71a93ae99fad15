"""Fast copies of a candidate for scoring: BatchNorm folded into convolutions, in a copy that is refreshed
from the (perturbed) source after each perturbation. Used by
:class:`fastnas.metrics.evaluator.MultiSigmaEvaluator`. (The map from an extracted module's parameter
names to its supernet's is the space's: ``supernet.extract(arch, return_map=True)``.)"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from fastnas.ops.fold import FoldSpec, fold_conv_bn

__all__ = ["foldable_copy", "refresh_folds"]


# ---- BatchNorm folding ---------------------------------------------------------------------------

@dataclass
class _Fold:
    conv: nn.Conv2d          # in the source module (perturbed)
    bn: nn.BatchNorm2d       # in the source module
    fused: nn.Conv2d         # in the fast module (conv with bias)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    # What the native fold kernel (fastnas.ops.fold) takes: float32 convolutions with odd square kernels.
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and conv.weight.dtype == torch.float32
            and conv.kernel_size[0] == conv.kernel_size[1] and conv.kernel_size[0] % 2 == 1
            and bn.running_mean is not None and bn.num_features == conv.out_channels
            and not conv._forward_hooks and not conv._forward_pre_hooks
            and not bn._forward_hooks and not bn._forward_pre_hooks)


def foldable_copy(source: nn.Module) -> Tuple[nn.Module, List[_Fold]]:
    """A deep copy of ``source`` in which every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an
    ``nn.Sequential`` is replaced by one ``Conv2d`` with bias (the BatchNorm by ``nn.Identity``).

    The fused weights are not computed here: :func:`refresh_folds` computes them from the source
    module's current (e.g. perturbed) parameters and running statistics, in eval-mode semantics::

        scale = bn.weight / sqrt(bn.running_var + bn.eps)      # 1 for a non-affine BN
        fused.weight = conv.weight * scale[:, None, None, None]
        fused.bias = bn.bias + (conv.bias - bn.running_mean) * scale

    Only float32 convolutions with odd square kernels are folded (what the native fold kernel takes);
    modules used at more than one place are never folded.

    Returns:
        ``(fast, folds)``.
    """
    counts: Dict[int, int] = {}
    for _, m in source.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    fast = copy.deepcopy(source)
    src_mods = dict(source.named_modules())
    folds: List[_Fold] = []
    for name, seq in list(fast.named_modules()):
        # an nn.Sequential (or a subclass keeping its forward, like ReLUConvBN) runs its children in order
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        keys = list(seq._modules.keys())
        for a, b in zip(keys, keys[1:]):
            prefix = f"{name}." if name else ""
            sconv, sbn = src_mods.get(prefix + a), src_mods.get(prefix + b)
            if sconv is None or sbn is None or not _foldable(sconv, sbn):
                continue
            if counts.get(id(sconv), 0) != 1 or counts.get(id(sbn), 0) != 1:
                continue
            if not isinstance(seq._modules[a], nn.Conv2d):  # already consumed as a BN of a previous pair
                continue
            c = sconv
            fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                              c.groups, bias=True, padding_mode=c.padding_mode,
                              device=c.weight.device, dtype=c.weight.dtype)
            seq._modules[a] = fused
            seq._modules[b] = nn.Identity()
            folds.append(_Fold(sconv, sbn, fused))
    return fast, folds


def refresh_folds(folds: Sequence[_Fold]) -> None:
    """Recomputes every fused convolution from its source conv and BatchNorm (see :func:`foldable_copy`),
    all pairs in one call of the native fold kernel :func:`fastnas.ops.fold.fold_conv_bn`."""
    if not folds:
        return
    specs = []
    for f in folds:
        bn, w = f.bn, f.conv.weight
        specs.append(FoldSpec(torch.empty(w.shape, dtype=torch.float32, device=w.device),
                              torch.empty(w.shape[0], dtype=torch.float32, device=w.device),
                              w.detach().contiguous(), bn.running_mean, bn.running_var,
                              None if bn.weight is None else bn.weight.detach(),
                              None if bn.bias is None else bn.bias.detach(), bn.eps,
                              None if f.conv.bias is None else f.conv.bias.detach()))
    fold_conv_bn(specs)
    for f, spec in zip(folds, specs):
        f.fused.weight.copy_(spec.dst)  # the fused copy may be channels-last
        f.fused.bias.copy_(spec.bias)
