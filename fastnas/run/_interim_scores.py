"""INTERIM stand-in for fastnas.metrics.scores until it lands (same contract). To be deleted."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F

from fastnas.metrics.combine import Score, combined, flatness_score


@dataclass(frozen=True)
class FlatnessConfig:
    sigmas: Tuple[float, ...] = (2e-3, 1e-2, 2e-2)
    alpha: float = 1.0
    samples: int = 1
    seed: int = 0
    recal_batches: Optional[int] = None


def _seed(*words: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(words).encode()).digest()[:8], "little") >> 1


def make_score_fn(metric, supernet, space, valid, recal=None, initial_state=None, flatness_config=None,
                  gamma=16.0, cache=True):
    fc = flatness_config or FlatnessConfig()
    vx, vy = valid
    params = dict(supernet.named_parameters())

    def recalibrate(arch):
        if recal is None:
            return
        x = recal[0]
        n = fc.recal_batches or 10
        dev = vx.device
        supernet.recalibrate(arch, [x[i * 64:(i + 1) * 64].to(dev) for i in range(n) if i * 64 < x.shape[0]])

    @torch.no_grad()
    def loss_acc(arch):
        supernet.eval()
        out = supernet(vx, arch)
        return float(F.cross_entropy(out, vy)), float((out.argmax(1) == vy).float().mean())

    def angle(arch):
        names = supernet.path_parameters(arch)
        a = torch.cat([initial_state[n].flatten().float() for n in names])
        b = torch.cat([params[n].detach().cpu().flatten().float() for n in names])
        cos = float(F.cosine_similarity(a, b, dim=0))
        return math.acos(max(-1.0, min(1.0, cos))) / math.pi

    @torch.no_grad()
    def flat(arch):
        names = supernet.path_parameters(arch)
        backup = {n: params[n].detach().clone() for n in names}
        losses = []
        try:
            for i, s in enumerate(fc.sigmas):
                acc = 0.0
                for k in range(fc.samples):
                    g = torch.Generator().manual_seed(_seed(fc.seed, i, k))
                    for n in names:
                        params[n].copy_(backup[n] + s * torch.randn(backup[n].shape, generator=g).to(backup[n]))
                    acc += loss_acc(arch)[0]
                losses.append(acc / fc.samples)
        finally:
            for n in names:
                params[n].copy_(backup[n])
        return flatness_score(losses, fc.sigmas, fc.alpha), losses

    def fn(arch):
        parts = {}
        kinds = metric.split("+")
        if "accuracy" in kinds or "flatness" in kinds:
            recalibrate(arch)
        if "accuracy" in kinds:
            parts["accuracy"] = loss_acc(arch)[1]
        if "angle" in kinds:
            parts["angle"] = angle(arch)
        if "flatness" in kinds:
            parts["flatness"], parts["losses"] = flat(arch)
        if metric in ("accuracy", "angle", "flatness"):
            value = parts[metric]
        elif metric == "angle+accuracy":
            value = parts["angle"] + parts["accuracy"]
        else:
            other = kinds[0]
            value = combined(parts[other], parts["flatness"], fc.sigmas[0], gamma)
        return Score(value=value, parts=parts, flagged=not math.isfinite(value))

    return fn
