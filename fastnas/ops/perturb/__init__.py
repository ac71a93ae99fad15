"""Fused Gaussian weight perturbation with exact restore, over many tensors in one call.

Public functions (re-exported from ``fastnas``): :func:`perturb_`, :func:`restore_`,
:func:`perturbed`, :func:`perturbed_copies`, :func:`noise`, :func:`philox_words`.
The noise stream is defined in ``docs/noise.md``; ``reference.py`` is its specification.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from typing import Iterator, List, Sequence

import torch

from fastnas.ops._dispatch import Backend, Dispatcher
from fastnas.ops.layout import ParamLayout, resolve_params
from fastnas.ops.perturb import cpp as _cpp
from fastnas.ops.perturb import cuda as _cuda
from fastnas.ops.perturb import reference as _reference
from fastnas.ops.perturb import triton as _triton

__all__ = ["Backup", "perturb_", "restore_", "perturbed", "perturbed_copies", "noise", "philox_words",
           "DISPATCH", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_SUPPORTED = frozenset(SUPPORTED_DTYPES)
_ALIGN = 64  # byte alignment of each tensor's slice in a backup buffer

DISPATCH = Dispatcher(
    "perturb",
    [
        Backend("reference", ("cpu", "cuda"), SUPPORTED_DTYPES, lambda: None, _reference),
        Backend("cpp", ("cpu",), SUPPORTED_DTYPES, _cpp.availability, _cpp),
        Backend("cuda", ("cuda",), SUPPORTED_DTYPES, _cuda.availability, _cuda),
        Backend("triton", ("cuda", "cpu"), SUPPORTED_DTYPES, _triton.availability, _triton,
                devices_fn=_triton.devices),
    ],
    priority={"cpu": ["cpp", "reference"], "cuda": ["cuda", "triton", "reference"]},
)


# ---- argument checks ---------------------------------------------------------------------------

def _check_sigma(sigma, name: str = "sigma") -> float:
    if isinstance(sigma, torch.Tensor) and sigma.numel() == 1:
        sigma = sigma.item()
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(sigma).__name__} ({sigma!r})")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{name}={sigma!r}: expected a finite number >= 0")
    return sigma


def _check_u32(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer in [0, 2**32), got {type(value).__name__} ({value!r})")
    value = int(value)
    if not 0 <= value < 2**32:
        raise ValueError(f"{name}={value}: expected an integer in [0, 2**32)")
    return value


def _check_tensors(tensors: Sequence[torch.Tensor], name: str = "params") -> torch.device:
    if not tensors:
        return torch.device("cpu")
    device = tensors[0].device
    spans = []
    for k, t in enumerate(tensors):
        if t.dtype not in _SUPPORTED:
            raise TypeError(f"{name}[{k}] has dtype {t.dtype}; expected one of "
                            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
        if t.layout != torch.strided:
            raise ValueError(f"{name}[{k}] has layout {t.layout}; expected a dense strided tensor")
        if t.device != device:
            raise ValueError(f"{name}[{k}] is on {t.device} but {name}[0] is on {device}; "
                             "all tensors of one call must be on one device")
        if not t.is_contiguous():
            raise ValueError(f"{name}[{k}] (shape {tuple(t.shape)}, stride {t.stride()}) is not contiguous; "
                             "expected contiguous tensors (call .contiguous() on a copy)")
        n = t.numel()
        if n:
            p = t.data_ptr()
            spans.append((p, p + n * t.element_size(), k))
    spans.sort()
    for (s0, e0, k0), (s1, e1, k1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"{name}[{k0}] and {name}[{k1}] overlap in memory; expected distinct tensors "
                             "(a parameter listed twice, or views of one buffer)")
    return device


def _bump_versions(tensors: Sequence[torch.Tensor]) -> None:
    # The kernels write through raw pointers; tell autograd the tensors changed.
    inc = getattr(torch.autograd.graph, "increment_version", None)
    if inc is not None and tensors:
        inc(list(tensors))


# ---- backup --------------------------------------------------------------------------------------

@dataclass(eq=False)
class Backup:
    """Original values of the tensors of one :func:`perturb_` call, in one flat byte buffer.

    Attributes:
        buffer: uint8 tensor on the tensors' device.
        byte_offsets: start of each tensor's bytes in ``buffer``.
        signature: ``(data_ptr, numel, dtype, device)`` of each (validated, contiguous) tensor: a restore
            whose tensors match it needs no second validation.
        backend: the backend that wrote it.

    Passing a Backup as ``perturb_(..., backup=b)`` reuses its buffer: ``b`` then holds the values
    saved by that call (for the same tensors, the same originals).
    """

    buffer: torch.Tensor
    byte_offsets: List[int]
    signature: List[tuple]
    backend: str

    def __post_init__(self) -> None:
        self._views: list[torch.Tensor] | None = None
        self._pointers: list[int] | None = None

    @staticmethod
    def _layout(tensors: Sequence[torch.Tensor]) -> tuple[list[int], int]:
        offs, pos = [], 0
        for t in tensors:
            offs.append(pos)
            pos += (t.numel() * t.element_size() + _ALIGN - 1) // _ALIGN * _ALIGN
        return offs, pos

    @classmethod
    def allocate(cls, tensors: Sequence[torch.Tensor], device: torch.device, backend: str,
                 reuse: "Backup | None" = None) -> "Backup":
        signature = [cls._sig(t) for t in tensors]
        if reuse is not None and reuse.signature == signature and reuse.buffer.device == device:
            reuse.backend = backend
            return reuse  # same tensors: same offsets, views and pointers
        offs, nbytes = cls._layout(tensors)
        if reuse is not None and reuse.buffer.numel() >= nbytes and reuse.buffer.device == device:
            buf = reuse.buffer
        else:
            buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return cls(buf, offs, signature, backend)

    @staticmethod
    def _sig(t: torch.Tensor) -> tuple:
        return (t.data_ptr(), t.numel(), t.dtype, t.device)

    def views(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Flat views of ``buffer`` with each tensor's dtype (cached)."""
        if self._views is None:
            self._views = [self.buffer[o:o + t.numel() * t.element_size()].view(t.dtype)
                           for o, t in zip(self.byte_offsets, tensors)]
        return self._views

    def pointers(self) -> list[int]:
        """Address of each tensor's slice of ``buffer`` (cached)."""
        if self._pointers is None:
            base = self.buffer.data_ptr()
            self._pointers = [base + o for o in self.byte_offsets]
        return self._pointers

    def check(self, tensors: Sequence[torch.Tensor], name: str = "backup") -> None:
        if len(tensors) != len(self.signature):
            raise ValueError(f"{name} holds {len(self.signature)} tensors but {len(tensors)} were given; "
                             "expected the same tensors, in the same order, as the perturb_ call")
        for k, (t, sig) in enumerate(zip(tensors, self.signature)):
            if self._sig(t) != sig:
                raise ValueError(f"{name} does not belong to these tensors: params[{k}] (shape {tuple(t.shape)}, "
                                 f"{t.dtype}) is not the tensor it was taken from")
            if not t.is_contiguous():
                raise ValueError(f"params[{k}] (shape {tuple(t.shape)}, stride {t.stride()}) is not contiguous; "
                                 "expected the contiguous tensors perturb_ saved")


# ---- public API ----------------------------------------------------------------------------------

def perturb_(params, sigma: float, seed: int = 0, stream: int = 0, *, layout: ParamLayout | None = None,
             backend: str | None = None, backup: Backup | None = None) -> Backup:
    """In place ``theta += sigma * z`` over all tensors, saving the originals in one pass.

    Args:
        params: an ``nn.Module``, a list of tensors, or ``(name, tensor)`` pairs (or a dict).
        sigma: noise standard deviation, finite and >= 0.
        seed, stream: the noise key, integers in ``[0, 2**32)``.
        layout: offsets of the tensors in the noise stream (default: the module's own layout, or the
            running element count of ``params``). With a layout, a subset of a model is perturbed
            exactly as perturbing the whole model would perturb it.
        backend: ``None`` (automatic) or "cpp", "cuda", "triton", "reference".
        backup: a previous :class:`Backup` whose buffer is reused when large enough.

    Returns:
        The :class:`Backup` to pass to :func:`restore_`.

    Equivalent plain PyTorch (slow, and noise from torch's generator instead of the stream)::

        backup = [p.detach().clone() for p in params]
        for p in params: p.data.add_(torch.randn_like(p) * sigma)
    """
    tensors, offsets, _ = resolve_params(params, layout)
    sigma = _check_sigma(sigma)
    seed, stream = _check_u32(seed, "seed"), _check_u32(stream, "stream")
    device = _check_tensors(tensors)
    chosen = DISPATCH.pick(device, {t.dtype for t in tensors}, backend)
    if backup is not None and not isinstance(backup, Backup):
        raise TypeError(f"backup: expected a Backup returned by perturb_, got {type(backup).__name__}")
    out = Backup.allocate(tensors, device, chosen.name, reuse=backup)
    try:
        with torch.no_grad():
            chosen.impl.perturb(tensors, tensors, out, offsets, sigma, seed, stream)
    except BaseException:
        # Nothing may stay perturbed: put back whatever was written (the backup of each tensor is
        # taken before that tensor is written).
        with torch.no_grad():
            _reference.restore(tensors, out)
        raise
    _bump_versions(tensors)
    return out


def restore_(params, backup: Backup, *, backend: str | None = None) -> None:
    """Copies the values saved by :func:`perturb_` back, bit for bit."""
    tensors, _, _ = resolve_params(params, None)
    if not isinstance(backup, Backup):
        raise TypeError(f"backup: expected the Backup returned by perturb_, got {type(backup).__name__}")
    backup.check(tensors)  # same pointers, sizes, dtypes and device as the validated perturb_ call
    device = tensors[0].device if tensors else torch.device("cpu")
    chosen = DISPATCH.pick(device, {t.dtype for t in tensors}, backend)
    with torch.no_grad():
        chosen.impl.restore(tensors, backup)
    _bump_versions(tensors)


@contextlib.contextmanager
def perturbed(model_or_params, sigma: float, seed: int = 0, stream: int = 0, *, layout: ParamLayout | None = None,
              backend: str | None = None) -> Iterator[Backup]:
    """Context manager: weights perturbed inside, restored bit-exactly on exit (also on error).

    Example::

        with fastnas.perturbed(model, 0.01, seed=3):
            loss = criterion(model(x), y)
    """
    backup = perturb_(model_or_params, sigma, seed, stream, layout=layout, backend=backend)
    try:
        yield backup
    finally:
        restore_(model_or_params, backup, backend=backend)


def _streams(stream, k: int) -> list[int]:
    if isinstance(stream, numbers.Integral) and not isinstance(stream, bool):
        base = _check_u32(stream, "stream")
        return [_check_u32(base + i, f"stream + {i}") for i in range(k)]
    streams = list(stream)
    if len(streams) != k:
        raise ValueError(f"stream: got {len(streams)} streams for {k} sigmas; expected one per sigma")
    return [_check_u32(s, f"stream[{i}]") for i, s in enumerate(streams)]


def perturbed_copies(params, sigmas: Sequence[float], seed: int = 0, stream=0, *,
                     layout: ParamLayout | None = None, backend: str | None = None) -> list[torch.Tensor]:
    """Out of place, K noise levels at once: ``out[j][k] = params[j] + sigmas[k] * z(stream_k)``.

    Args:
        params: as in :func:`perturb_`; never modified.
        sigmas: K noise levels.
        stream: an int ``s`` (streams ``s, s+1, ..., s+K-1``: independent noise per level) or K ints
            (e.g. ``[s] * K``: one shared direction scaled by each sigma).

    Returns:
        One new tensor per parameter, shape ``(K, *param.shape)``: ``out[j][k]`` is level ``k`` of ``params[j]``.
    """
    tensors, offsets, _ = resolve_params(params, layout)
    sigmas = [_check_sigma(s, f"sigmas[{i}]") for i, s in enumerate(sigmas)]
    if not sigmas:
        raise ValueError("sigmas: expected at least one noise level")
    streams = _streams(stream, len(sigmas))
    seed = _check_u32(seed, "seed")
    device = _check_tensors(tensors)
    chosen = DISPATCH.pick(device, {t.dtype for t in tensors}, backend)
    outs = [torch.empty((len(sigmas),) + tuple(t.shape), dtype=t.dtype, device=device) for t in tensors]
    with torch.no_grad():
        for k, (s, st) in enumerate(zip(sigmas, streams)):
            chosen.impl.perturb(tensors, [o[k] for o in outs], None, offsets, s, seed, st)
    return outs


def noise(n: int, seed: int = 0, stream: int = 0, offset: int = 0, *, device="cpu",
          backend: str | None = None) -> torch.Tensor:
    """The raw noise stream: float32 normals at element indices ``offset .. offset + n - 1``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n={n!r}: expected an integer >= 0")
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
        raise ValueError(f"offset={offset!r}: expected an integer >= 0")
    seed, stream = _check_u32(seed, "seed"), _check_u32(stream, "stream")
    device = torch.device(device)
    chosen = DISPATCH.pick(device, {torch.float32}, backend)
    out = torch.empty(int(n), dtype=torch.float32, device=device)
    if n:
        chosen.impl.normals_into(out, int(offset), seed, stream)
    return out


def philox_words(groups: int, seed: int = 0, stream: int = 0, group_offset: int = 0, *, device="cpu",
                 backend: str | None = None) -> torch.Tensor:
    """Raw Philox4x32-10 words of counter groups ``group_offset ..``: int64 ``(groups, 4)`` in [0, 2**32)."""
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 0:
        raise ValueError(f"groups={groups!r}: expected an integer >= 0")
    seed, stream = _check_u32(seed, "seed"), _check_u32(stream, "stream")
    device = torch.device(device)
    chosen = DISPATCH.pick(device, {torch.float32}, backend)
    out = torch.empty((int(groups), 4), dtype=torch.int64, device=device)
    if groups:
        chosen.impl.words(out, int(group_offset), seed, stream)
    return out
