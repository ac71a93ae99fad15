"""Backend declaration and selection, shared by every op.

A backend *declares* what it supports (devices, dtypes, size limits) and why it may be unavailable;
the dispatcher takes the first backend in the device's priority list that reports no reasons. An
explicit ``backend=`` name is used or rejected with the reasons. ``FASTNAS_BACKEND`` (read here only)
forces a backend name for every op that has it (rejected with the reasons when it cannot run the
call); an op without that backend chooses automatically, says so once in the log, and
:func:`override_routes` reports the route of every op. A name that is no op's backend is an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Mapping, Sequence

import torch

from fastnas._hints import did_you_mean

__all__ = ["Backend", "Dispatcher", "env_backend", "all_dispatchers", "override_routes"]

logger = logging.getLogger(__name__)

_DISPATCHERS: list["Dispatcher"] = []
_LOGGED: set = set()  # (op, forced name) pairs whose fallback was logged


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
        devices_fn: overrides ``devices`` when what it runs on depends on the environment.
        limits: callable taking the op's ``sizes`` mapping (op-specific, e.g. ``{"classes": 10}``) and
            returning the reasons these sizes are beyond the backend (empty when they are fine).
    """

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    availability: Callable[[], str | None]
    impl: object = None
    devices_fn: Callable[[], tuple[str, ...]] | None = field(default=None, repr=False)
    limits: Callable[[Mapping], list[str]] | None = field(default=None, repr=False)

    def supported_devices(self) -> tuple[str, ...]:
        return self.devices_fn() if self.devices_fn is not None else self.devices

    def unavailable_reason(self) -> str | None:
        return self.availability()

    def not_supported_reasons(self, device: torch.device, dtypes: Iterable[torch.dtype],
                              sizes: Mapping | None = None) -> list[str]:
        reasons = []
        why = self.unavailable_reason()
        if why:
            reasons.append(why)
        if device.type not in self.supported_devices():
            reasons.append(f"device {device.type!r} not in {self.supported_devices()}")
        bad = sorted({str(d) for d in dtypes if d not in self.dtypes})
        if bad:
            reasons.append(f"dtype(s) {', '.join(bad)} not supported")
        if sizes is not None and self.limits is not None:
            reasons.extend(self.limits(sizes))
        return reasons

    def supports(self, device: torch.device, dtypes: Iterable[torch.dtype], sizes: Mapping | None = None) -> bool:
        return not self.not_supported_reasons(device, dtypes, sizes)


class Dispatcher:
    """Picks a backend for one op from a per-device priority list."""

    def __init__(self, op: str, backends: Sequence[Backend], priority: dict[str, Sequence[str]]):
        self.op = op
        self.backends = {b.name: b for b in backends}
        self.priority = {k: list(v) for k, v in priority.items()}
        _DISPATCHERS.append(self)

    def pick(self, device: torch.device, dtypes: Iterable[torch.dtype], backend: str | None = None,
             sizes: Mapping | None = None) -> Backend:
        """The backend for one call: ``backend`` if given, else FASTNAS_BACKEND if this op has it, else the
        first of the device's priority list that supports the call."""
        dtypes = list(dtypes)
        if backend is not None:
            return self._forced(backend, "backend", device, dtypes, sizes)
        forced = env_backend()
        if forced is not None:
            if forced in self.backends:
                return self._forced(forced, "FASTNAS_BACKEND", device, dtypes, sizes)
            check_env_backend()
            if (self.op, forced) not in _LOGGED:
                _LOGGED.add((self.op, forced))
                logger.info("FASTNAS_BACKEND=%s: %s has no %r backend (it has %s); choosing automatically",
                            forced, self.op, forced, ", ".join(sorted(self.backends)))
        order = self.priority.get(device.type, [])
        all_reasons = []
        for name in order:
            b = self.backends[name]
            reasons = b.not_supported_reasons(device, dtypes, sizes)
            if not reasons:
                return b
            all_reasons.append(f"{name}: {'; '.join(reasons)}")
        raise NotImplementedError(
            f"{self.op}: no backend for device {device.type!r} and dtypes "
            f"{sorted(str(d) for d in dtypes)}; " + " | ".join(all_reasons or ["no backend registered"])
        )

    def _forced(self, name: str, source: str, device: torch.device, dtypes: list, sizes: Mapping | None) -> Backend:
        if name not in self.backends:
            hint = did_you_mean(name, list(self.backends), n=3)
            raise ValueError(f"{source}={name!r} is not a backend of {self.op}; expected one of "
                             f"{sorted(self.backends)}{hint}")
        chosen = self.backends[name]
        reasons = chosen.not_supported_reasons(device, dtypes, sizes)
        if reasons:
            raise NotImplementedError(f"{self.op}: backend {name!r} cannot run here: {'; '.join(reasons)}")
        return chosen


def all_dispatchers() -> list[Dispatcher]:
    return list(_DISPATCHERS)


def _known_backends() -> set:
    return {name for d in _DISPATCHERS for name in d.backends}


def check_env_backend() -> None:
    """Raises ``ValueError`` when ``FASTNAS_BACKEND`` names no backend of any op (a typo, say)."""
    forced = env_backend()
    if forced is None:
        return
    known = _known_backends()
    if forced not in known:
        hint = did_you_mean(forced, sorted(known), n=3)
        raise ValueError(f"FASTNAS_BACKEND={forced!r} is not a backend of any op; expected one of "
                         f"{sorted(known)}{hint}")


def override_routes() -> Dict[str, str]:
    """How ``FASTNAS_BACKEND`` routes each op: the forced backend's name, or ``"automatic (...)"`` for an
    op that lacks it. Empty when the variable is not set.

    Example::

        >>> os.environ["FASTNAS_BACKEND"] = "cuda"; override_routes()
        {'perturb': 'cuda', 'fold_conv_bn': 'cuda', 'loss_correct': "automatic (no 'cuda' backend)"}

    Raises:
        ValueError: ``FASTNAS_BACKEND`` names no backend of any op (:func:`check_env_backend`).
    """
    forced = env_backend()
    if forced is None:
        return {}
    check_env_backend()
    return {d.op: forced if forced in d.backends else f"automatic (no {forced!r} backend)" for d in _DISPATCHERS}
