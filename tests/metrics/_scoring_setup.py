"""Shared pieces of the long-run tests (soak, faults): a tiny NB201 supernet, the search's score function
over it, and exact snapshots of a module's state (a uniquely named module: test directories have no
__init__.py).
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Tuple

import torch

from fastnas.run.config import RunConfig
from fastnas.run.scoring import build_score_fn
from fastnas.spaces.nb201 import NB201

#: A metric with every kind of part: the angle (initial weights), accuracy (clean pass after BatchNorm
#: recalibration) and flatness (perturbed passes with exact restore).
METRIC = "angle + 0.2*accuracy + 16/sigma1*flatness"

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process (``/proc/self/statm``, field 2, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def tiny_setup(device: str = "cpu", seed: int = 0) -> Tuple[NB201, torch.nn.Module, Dict[str, torch.Tensor], Any]:
    """``(space, supernet, initial_state, data)``: NB201 with C=4, N=1 at 8x8 whose weights moved away
    from their initial values (as after training); ``data`` is ``(valid_x, valid_y, calib_x)``."""
    torch.manual_seed(seed)
    space = NB201(C=4, N=1, resolution=8)
    sn = space.supernet().to(device)
    init = {k: v.detach().clone() for k, v in sn.state_dict().items()}
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for m in sn.modules():  # running statistics away from their reset values
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    g = torch.Generator().manual_seed(seed + 1)
    vx, vy = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    cx = torch.randn(32, 3, 8, 8, generator=g)
    return space, sn, init, (vx, vy, cx)


def search_score_fn(space: NB201, sn: torch.nn.Module, init: Dict[str, torch.Tensor], data: Any,
                    device: str = "cpu", metric: str = METRIC, **settings: Any):
    """The score function a run builds (:func:`fastnas.run.scoring.build_score_fn`), on the tiny setup."""
    vx, vy, cx = data
    values = dict(metric=metric, sigmas=(0.01, 0.02), recal_batches=2, recal_batch_size=16, seed=0)
    values.update(settings)
    config = RunConfig(**values)
    return build_score_fn(config, sn, space, valid=(vx, vy), calib_x=cx, initial_state=init,
                          device=torch.device(device))


def distinct_archs(space: NB201, n: int, seed: int = 0) -> List[Any]:
    """``n`` different architectures, in a seeded random order."""
    rng = random.Random(seed)
    seen: Dict[Any, None] = {}
    while len(seen) < n:
        seen.setdefault(space.sample(rng))
    return list(seen)


def state_bytes(module: torch.nn.Module) -> Dict[str, Tuple[str, Tuple[int, ...], bytes]]:
    """Every parameter and buffer of ``module`` as (dtype, shape, raw bytes): equal means bit-identical."""
    return {k: (str(v.dtype), tuple(v.shape), v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                if v.dim() else v.detach().cpu().reshape(1).view(torch.uint8).numpy().tobytes())
            for k, v in module.state_dict().items()}


def modes(module: torch.nn.Module) -> List[Any]:
    """The train/eval flag of every submodule and the momentum of every BatchNorm (recalibration
    changes both for a while)."""
    return [(m.training, getattr(m, "momentum", None)) for m in module.modules()]
