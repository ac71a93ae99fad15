"""Batched ("mixed-op") eval-mode forward of K NAS-Bench-201 candidates in one pass.

In eval mode every NB201 edge op is affine after a shared input transform: ReLU-Conv-BN folds into
one convolution with bias (BatchNorm folded by the :func:`fastnas.ops.fold.fold_conv_bn` kernel), and
``skip_connect`` / ``avg_pool_3x3`` are fixed per-channel operators. K candidates - K architectures on
one supernet, or K weight sets (e.g. perturbed copies) of one architecture - run side by side as
``K * C`` channels: grouped convolutions (``groups=K``) with per-candidate folded kernels, per-channel
masks for skip and pooling, and a batched classifier.

Whether this beats K sequential forwards depends on the device (on CPU it usually does not); use
:func:`choose_forward` to measure, and :func:`choices` to see what was measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.ops.fold import FoldSpec, fold_conv_bn
from fastnas.spaces.base import BatchedForward
from fastnas.spaces.nb201_fast import CompiledNB201, StemCache, not_supported_reasons
from fastnas.spaces.nb201_ops import EDGES, ResidualBlock, SuperCell

__all__ = ["BatchedNB201", "BatchedPlan", "choose_forward", "choices"]

_CONV_OPS = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}


@dataclass
class _Edge:
    conv: Optional[Tuple[torch.Tensor, torch.Tensor]]  # (W (K*C, C, kd, kd), bias (K*C,)) or None
    skip: Optional[torch.Tensor]                        # (1, K*C, 1, 1) mask of skip candidates, or None
    pool: Optional[torch.Tensor]                        # (1, K*C, 1, 1) mask of pooling candidates, or None


@dataclass
class BatchedPlan:
    """Folded per-candidate weights of K candidates (see :meth:`BatchedNB201.prepare`)."""

    k: int
    stem: Tuple[torch.Tensor, torch.Tensor]
    layers: List[Any]
    last_scale: torch.Tensor
    last_shift: torch.Tensor
    cls_weight: torch.Tensor  # (K, classes, C)
    cls_bias: torch.Tensor    # (K, classes)
    archs: List[tuple] = field(default_factory=list)


class BatchedNB201(BatchedForward):
    """Evaluates K candidates of an :class:`~fastnas.spaces.nb201.NB201Supernet` in one pass (eval mode).

    Example::

        batched = BatchedNB201(supernet)
        logits = batched(x, archs)                       # (K, B, classes) == [supernet.eval()(x, a) for a in archs]
        copies = fastnas.perturbed_copies(path, sigmas)  # K weight sets of one architecture
        logits = batched(x, [arch] * K, weights=[{n: c[k] for n, c in zip(names, copies)} for k in range(K)])
    """

    def __init__(self, supernet):
        from fastnas.spaces.nb201 import NB201Supernet

        if not isinstance(supernet, NB201Supernet):
            raise TypeError(f"supernet: expected an NB201Supernet, got {type(supernet).__name__}")
        self.supernet = supernet
        self.space = supernet.space
        self.stem_cache = StemCache()  # shared by the candidates compile() makes

    # ---- one candidate, compiled --------------------------------------------------------------

    def compile(self, net: nn.Module, *, dtype: torch.dtype = torch.float32, channels_last: bool = True
                ) -> Tuple[Optional[CompiledNB201], str]:
        """``(program, "")``: the :class:`~fastnas.spaces.nb201_fast.CompiledNB201` of ``net`` (an extracted
        network of this supernet) sharing this object's stem cache, or ``(None, why not)``."""
        why = not_supported_reasons(net)
        if why:
            return None, "; ".join(why)
        return CompiledNB201(net, dtype=dtype, channels_last=channels_last, stem_cache=self.stem_cache), ""

    # ---- folding -------------------------------------------------------------------------------

    def prepare(self, archs: Sequence, weights: Optional[Sequence[Mapping[str, torch.Tensor]]] = None
                ) -> BatchedPlan:
        """Folds the weights of K candidates.

        Args:
            archs: K architectures (repeat one architecture for K weight sets).
            weights: optional K mappings ``parameter name -> tensor`` overriding the supernet's
                parameters for that candidate (names as in ``named_parameters()``). BatchNorm running
                statistics always come from the supernet.
        """
        archs = [self.space.validate(a) for a in archs]
        if not archs:
            raise ValueError("archs: expected at least one architecture")
        k = len(archs)
        if weights is not None and len(weights) != k:
            raise ValueError(f"weights: got {len(weights)} weight sets for {k} architectures; expected one each")
        sn = self.supernet
        params = dict(sn.named_parameters())
        buffers = dict(sn.named_buffers())

        def p(j: int, name: str) -> Optional[torch.Tensor]:
            if weights is not None and name in weights[j]:
                return weights[j][name].contiguous()
            return params.get(name)

        def bn(j: int, prefix: str) -> dict:
            return {"mean": buffers[prefix + "running_mean"], "var": buffers[prefix + "running_var"],
                    "gamma": p(j, prefix + "weight"), "beta": p(j, prefix + "bias"),
                    "eps": sn.get_submodule(prefix.rstrip(".")).eps}

        ref = sn.classifier.weight
        specs: List[FoldSpec] = []

        def folded(c_out: int, c_in: int, kd: int, per_candidate) -> Tuple[torch.Tensor, torch.Tensor]:
            w = torch.empty(k * c_out, c_in, kd, kd, dtype=torch.float32, device=ref.device)
            b = torch.empty(k * c_out, dtype=torch.float32, device=ref.device)
            for j in range(k):
                weight, bn_kw = per_candidate(j)
                specs.append(FoldSpec(w[j * c_out:(j + 1) * c_out], b[j * c_out:(j + 1) * c_out], weight,
                                      **(bn_kw or {})))
            return w, b

        C = self.space.C
        stem = folded(C, self.space.in_channels, 3, lambda j: (p(j, "stem.0.weight"), bn(j, "stem.1.")))
        layers: List[Any] = []
        c = C
        for i, cell in enumerate(sn.cells):
            if isinstance(cell, ResidualBlock):
                pre = f"cells.{i}."
                c_out = 2 * c
                a = folded(c_out, c, 3, lambda j: (p(j, pre + "conv_a.1.weight"), bn(j, pre + "conv_a.2.")))
                b = folded(c_out, c_out, 3, lambda j: (p(j, pre + "conv_b.1.weight"), bn(j, pre + "conv_b.2.")))
                s = folded(c_out, c, 1, lambda j: (p(j, pre + "shortcut.1.weight"), None))
                layers.append(("res", a, b, s[0]))
                c = c_out
                continue
            assert isinstance(cell, SuperCell)
            edges = []
            for e in range(len(EDGES)):
                ops = [a[e] for a in archs]
                conv = None
                if any(o in _CONV_OPS for o in ops):
                    kd = max(_CONV_OPS.get(o, 1) for o in ops)
                    pre = f"cells.{i}.edges.{e}."

                    def edge_conv(j, ops=ops, pre=pre):
                        if ops[j] not in _CONV_OPS:
                            return None, None
                        return p(j, f"{pre}{ops[j]}.1.weight"), bn(j, f"{pre}{ops[j]}.2.")
                    conv = folded(c, c, kd, edge_conv)
                skip = self._mask(ops, "skip_connect", c, ref.device)
                pool = self._mask(ops, "avg_pool_3x3", c, ref.device)
                edges.append(_Edge(conv, skip, pool))
            layers.append(("cell", edges))
        fold_conv_bn(specs)
        # Final BatchNorm as a per-channel affine map, then the classifier, per candidate.
        scales, shifts = [], []
        for j in range(k):
            st = bn(j, "lastact.0.")
            scale = (st["gamma"].double() / torch.sqrt(st["var"].double() + st["eps"])).float()
            scales.append(scale)
            shifts.append(st["beta"] - st["mean"] * scale)
        cls_w = torch.stack([p(j, "classifier.weight") for j in range(k)])
        cls_b = torch.stack([p(j, "classifier.bias") for j in range(k)])
        return BatchedPlan(k, stem, layers, torch.cat(scales).view(1, -1, 1, 1), torch.cat(shifts).view(1, -1, 1, 1),
                           cls_w, cls_b, archs)

    @staticmethod
    def _mask(ops: Sequence[str], op: str, c: int, device) -> Optional[torch.Tensor]:
        flags = [o == op for o in ops]
        if not any(flags):
            return None
        m = torch.tensor(flags, dtype=torch.float32, device=device).repeat_interleave(c)
        return m.view(1, -1, 1, 1)

    # ---- forward -------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, plan: BatchedPlan, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` of the K planned candidates on ``x`` ``(B, in_channels, H, W)``."""
        self.supernet._check_input(x)
        k = plan.k
        h = F.conv2d(x, plan.stem[0], plan.stem[1], padding=1)  # (B, K*C, H, W)
        for layer in plan.layers:
            if layer[0] == "res":
                _, (wa, ba), (wb, bb), ws = layer
                a = F.conv2d(F.relu(h), wa, ba, stride=2, padding=1, groups=k)
                b = F.conv2d(F.relu(a), wb, bb, padding=1, groups=k)
                h = F.conv2d(F.avg_pool2d(h, 2, 2), ws, None, groups=k) + b
                continue
            edges: List[_Edge] = layer[1]
            nodes = [h]
            for node in (1, 2, 3):
                out = None
                for e, (to, src) in enumerate(EDGES):
                    if to != node:
                        continue
                    edge, xin = edges[e], nodes[src]
                    parts = []
                    if edge.conv is not None:
                        w, b = edge.conv
                        parts.append(F.conv2d(F.relu(xin), w, b, padding=w.shape[-1] // 2, groups=k))
                    if edge.skip is not None:
                        parts.append(xin * edge.skip)
                    if edge.pool is not None:
                        parts.append(F.avg_pool2d(xin, 3, 1, 1, count_include_pad=False) * edge.pool)
                    for y in parts:
                        out = y if out is None else out + y
                nodes.append(torch.zeros_like(h) if out is None else out)
            h = nodes[3]
        h = F.relu(h * plan.last_scale + plan.last_shift)
        feats = h.mean(dim=(2, 3)).view(x.shape[0], k, -1)  # (B, K, C)
        return torch.einsum("bkc,koc->kbo", feats, plan.cls_weight) + plan.cls_bias[:, None, :]

    def __call__(self, x: torch.Tensor, archs: Sequence, weights=None) -> torch.Tensor:
        return self.forward(self.prepare(archs, weights), x)

    def choose(self, x: torch.Tensor, archs: Sequence, repeat: int = 3) -> str:
        """``"batched"`` or ``"sequential"``, by measurement: :func:`choose_forward` on this supernet."""
        return choose_forward(self.supernet, x, archs, repeat=repeat)


# ---- per-device choice by measurement ----------------------------------------------------------

_CHOICES: Dict[tuple, dict] = {}


def _time(fn, repeat: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def choose_forward(supernet, x: torch.Tensor, archs: Sequence, repeat: int = 3) -> str:
    """``"batched"`` or ``"sequential"``: whichever evaluates ``archs`` on ``x`` faster on this device.

    Measured once per (device type, K, input shape, space); the timings are kept in :func:`choices`.
    """
    key = (x.device.type, len(archs), tuple(x.shape), repr(supernet.space))
    if key in _CHOICES:
        return _CHOICES[key]["choice"]
    was_training = supernet.training
    supernet.eval()
    try:
        batched = BatchedNB201(supernet)
        with torch.inference_mode():
            t_seq = _time(lambda: [supernet(x, a) for a in archs], repeat)
            t_bat = _time(lambda: batched(x, archs), repeat)
    finally:
        supernet.train(was_training)
    choice = "batched" if t_bat < t_seq else "sequential"
    _CHOICES[key] = {"device": key[0], "k": key[1], "input": key[2], "space": key[3], "choice": choice,
                     "sequential_s": t_seq, "batched_s": t_bat}
    return choice


def choices() -> List[dict]:
    """What :func:`choose_forward` measured in this process, with the timings."""
    return [dict(v) for v in _CHOICES.values()]
