"""Training precision: whether bf16 is native on a device, and the autocast context of a step.

``precision="bf16"`` runs the forward pass (and the loss) under ``torch.autocast(dtype=torch.bfloat16)``:
convolutions and linear layers compute in bfloat16, BatchNorm statistics, the loss, the weights, their
gradients and the optimizer state stay float32. On a CPU this is fast only with native bf16 arithmetic
(the ``avx512_bf16`` or ``amx_bf16`` flags); elsewhere oneDNN emulates it, slower than fp32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import ContextManager, List, Union

import torch

__all__ = ["bf16_support", "autocast_for", "check_precision"]

logger = logging.getLogger(__name__)

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_support(device: Union[str, torch.device] = "cpu") -> List[str]:
    """The reasons bf16 training is not native on ``device`` (empty: it is).

    CPU: native with the ``avx512_bf16`` or ``amx_bf16`` CPU flag (read from ``/proc/cpuinfo``; an
    unreadable file counts as neither). CUDA: ``torch.cuda.is_bf16_supported()``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return [] if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else [
            "this CUDA device has no bf16 support"]
    if device.type != "cpu":
        return [f"device type {device.type!r}: bf16 support unknown"]
    if _cpu_flags() & set(_NATIVE_BF16_FLAGS):
        return []
    return [f"the CPU has neither of the flags {', '.join(_NATIVE_BF16_FLAGS)} (bf16 is emulated, slower than fp32)"]


_warned: set = set()


def check_precision(precision: str, device: Union[str, torch.device]) -> None:
    """``ValueError`` for an unknown precision; one warning when bf16 is not native on ``device``."""
    from fastnas.train.config import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        reasons = bf16_support(device)
        key = str(torch.device(device))
        if reasons and key not in _warned:
            _warned.add(key)
            logger.warning("precision=bf16 on %s: %s", key, "; ".join(reasons))


def autocast_for(precision: str, device: Union[str, torch.device]) -> ContextManager:
    """``torch.autocast(device.type, dtype=torch.bfloat16)`` for ``"bf16"``; a no-op context for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
