"""Backend declaration and selection, shared by every op.

A backend *declares* what it supports (devices, dtypes) and why it may be unavailable; the dispatcher
takes the first backend in the device's priority list that reports no reasons. An explicit
``backend=`` name is used or rejected with the reasons. ``FASTNAS_BACKEND`` (read here only) forces a
backend name for every op that has it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from fastnas._hints import did_you_mean

__all__ = ["Backend", "Dispatcher", "env_backend", "all_dispatchers"]

_DISPATCHERS: list["Dispatcher"] = []


def env_backend() -> str | None:
    """The backend forced by ``FASTNAS_BACKEND``, or None."""
    value = os.environ.get("FASTNAS_BACKEND", "").strip()
    return value or None


@dataclass
class Backend:
    """One implementation of an op.

    Attributes:
        name: short name ("reference", "cpp", "cuda", "triton").
        devices: device types it runs on.
        dtypes: tensor dtypes it accepts.
        availability: callable returning None when usable, else the reason it is not.
        impl: the module or object holding the backend's functions.
    """

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    availability: Callable[[], str | None]
    impl: object = None
    devices_fn: Callable[[], tuple[str, ...]] | None = field(default=None, repr=False)

    def supported_devices(self) -> tuple[str, ...]:
        return self.devices_fn() if self.devices_fn is not None else self.devices

    def unavailable_reason(self) -> str | None:
        return self.availability()

    def not_supported_reasons(self, device: torch.device, dtypes: Iterable[torch.dtype]) -> list[str]:
        reasons = []
        why = self.unavailable_reason()
        if why:
            reasons.append(why)
        if device.type not in self.supported_devices():
            reasons.append(f"device {device.type!r} not in {self.supported_devices()}")
        bad = sorted({str(d) for d in dtypes if d not in self.dtypes})
        if bad:
            reasons.append(f"dtype(s) {', '.join(bad)} not supported")
        return reasons

    def supports(self, device: torch.device, dtypes: Iterable[torch.dtype]) -> bool:
        return not self.not_supported_reasons(device, dtypes)


class Dispatcher:
    """Picks a backend for one op from a per-device priority list."""

    def __init__(self, op: str, backends: Sequence[Backend], priority: dict[str, Sequence[str]]):
        self.op = op
        self.backends = {b.name: b for b in backends}
        self.priority = {k: list(v) for k, v in priority.items()}
        _DISPATCHERS.append(self)

    def pick(self, device: torch.device, dtypes: Iterable[torch.dtype], backend: str | None = None) -> Backend:
        dtypes = list(dtypes)
        forced = backend if backend is not None else env_backend()
        if forced is not None:
            if forced not in self.backends:
                hint = did_you_mean(forced, list(self.backends), n=3)
                source = "backend" if backend is not None else "FASTNAS_BACKEND"
                raise ValueError(
                    f"{source}={forced!r} is not a backend of {self.op}; expected one of "
                    f"{sorted(self.backends)}{hint}"
                )
            chosen = self.backends[forced]
            reasons = chosen.not_supported_reasons(device, dtypes)
            if reasons:
                raise NotImplementedError(
                    f"{self.op}: backend {forced!r} cannot run here: {'; '.join(reasons)}"
                )
            return chosen
        order = self.priority.get(device.type, [])
        all_reasons = []
        for name in order:
            b = self.backends[name]
            reasons = b.not_supported_reasons(device, dtypes)
            if not reasons:
                return b
            all_reasons.append(f"{name}: {'; '.join(reasons)}")
        raise NotImplementedError(
            f"{self.op}: no backend for device {device.type!r} and dtypes "
            f"{sorted(str(d) for d in dtypes)}; " + " | ".join(all_reasons or ["no backend registered"])
        )


def all_dispatchers() -> list[Dispatcher]:
    return list(_DISPATCHERS)
