"""The kernels as Python functions; one dispatch point per op; pure-torch references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


from fastnas.ops._dispatch import all_dispatchers, check_env_backend, override_routes
from fastnas.ops.build import NativeBuild, native_build
from fastnas.ops.fold import FoldSpec, fold_conv_bn
from fastnas.ops.reduce import loss_correct_
from fastnas.ops.layout import ParamLayout, ParamSlice, path_params
from fastnas.ops.perturb import (Backup, noise, perturb_, perturbed, perturbed_copies, philox_words,
                                 restore_)

__all__ = ["Backup", "BackendStatus", "FoldSpec", "NativeBuild", "ParamLayout", "ParamSlice", "backends", "fold_conv_bn",
           "loss_correct_", "native_build", "noise", "override_routes", "check_env_backend", "path_params", "perturb_", "perturbed", "perturbed_copies", "philox_words",
           "restore_"]


@dataclass(frozen=True)
class BackendStatus:
    """Availability of one backend: ``reason`` says why it is not available (None when it is)."""

    name: str
    available: bool
    reason: str | None
    devices: Tuple[str, ...]
    ops: Tuple[str, ...]

    def __str__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.reason}"
        return f"{self.name:<10} {state} (devices: {', '.join(self.devices)}; ops: {', '.join(self.ops)})"


def backends() -> Dict[str, BackendStatus]:
    """Every kernel backend, whether it can run here and, if not, why.

    Example::

        >>> for status in fastnas.backends().values(): print(status)
        reference  available (devices: cpu, cuda; ops: perturb)
        cpp        available (devices: cpu; ops: perturb)
        cuda       unavailable: torch reports no CUDA device (devices: cuda; ops: perturb)
    """
    found: Dict[str, list] = {}
    for d in all_dispatchers():
        for name, b in d.backends.items():
            found.setdefault(name, []).append((d.op, b))
    out = {}
    for name, entries in found.items():
        b = entries[0][1]
        reason = b.unavailable_reason()
        out[name] = BackendStatus(name, reason is None, reason, tuple(b.supported_devices()),
                                  tuple(op for op, _ in entries))
    return out
