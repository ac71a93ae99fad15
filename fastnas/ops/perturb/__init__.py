"""Fused Gaussian weight perturbation with exact restore, over many tensors in one call.

Public functions (re-exported from ``fastnas``): :func:`perturb_`, :func:`restore_`,
:func:`perturbed`, :func:`perturbed_copies`, :func:`noise`, :func:`philox_words`.
The noise stream is defined in ``docs/noise.md``; ``reference.py`` is its specification.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Iterator, Sequence

import torch

from fastnas.ops._dispatch import Backend, Dispatcher
from fastnas.ops.layout import ParamLayout, Segment, resolve_params
from fastnas.ops.perturb import cpp as _cpp
from fastnas.ops.perturb import cuda as _cuda
from fastnas.ops.perturb import reference as _reference
from fastnas.ops.perturb import triton as _triton
from fastnas.ops.perturb.backup import Backup

__all__ = ["Backup", "perturb_", "restore_", "perturbed", "perturbed_copies", "noise", "philox_words",
           "DISPATCH", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_SUPPORTED = frozenset(SUPPORTED_DTYPES)

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


def _check_tensors(segments: Sequence[Segment], name: str = "params") -> torch.device:
    """Checks each entry's (full) tensor once; rejects entries that overlap in memory.

    Slices of one tensor may share it when their boxes are disjoint.
    """
    if not segments:
        return torch.device("cpu")
    device = segments[0].tensor.device
    spans = []
    last = -1
    for seg in segments:
        if seg.entry == last:
            continue  # further segments of one slice: same tensor, already checked
        last = k = seg.entry
        t = seg.tensor
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
            spans.append((p, p + n * t.element_size(), k, seg))
    spans.sort()  # entry indices are unique: segments themselves are never compared
    n = len(spans)
    for i in range(n - 1):
        s0, e0, k0, a = spans[i]
        j = i + 1
        while j < n and spans[j][0] < e0:  # every later span starting inside this one
            s1, e1, k1, b = spans[j]
            j += 1
            if not _disjoint_slices(a, b, (s0, e0) == (s1, e1)):
                raise ValueError(f"{name}[{k0}] and {name}[{k1}] overlap in memory; expected distinct tensors or "
                                 "disjoint slices (a parameter listed twice, or views of one buffer)")
    return device


def _disjoint_slices(a: Segment, b: Segment, same_span: bool) -> bool:
    # Two slices of one tensor are disjoint when their ranges are disjoint on some dim.
    if not same_span or a.box is None or b.box is None:
        return False
    if a.tensor.shape != b.tensor.shape or a.tensor.dtype != b.tensor.dtype:
        return False
    return any(x1 <= y0 or y1 <= x0 for (x0, x1), (y0, y1) in zip(a.box, b.box))


def _bump_versions(segments: Sequence[Segment]) -> None:
    # The kernels write through raw pointers; tell autograd the tensors changed.
    inc = getattr(torch.autograd.graph, "increment_version", None)
    if inc is not None and segments:
        # Whole tensors are distinct (checked); slices of one tensor list it once.
        inc(list({id(s.tensor): s.tensor for s in segments}.values()) if any(not s.whole for s in segments)
            else [s.tensor for s in segments])


def _dtypes(segments: Sequence[Segment]) -> set:
    return {s.tensor.dtype for s in segments}


# ---- public API ----------------------------------------------------------------------------------

def perturb_(params, sigma: float, seed: int = 0, stream: int = 0, *, layout: ParamLayout | None = None,
             backend: str | None = None, backup: Backup | None = None) -> Backup:
    """In place ``theta += sigma * z`` over all tensors (or slices), saving the originals in one pass.

    Args:
        params: an ``nn.Module``, a list of tensors, or ``(name, tensor)`` pairs (or a dict); an entry may
            be ``(ParamSlice, full_tensor)`` (see :func:`~fastnas.ops.path_params`): only the box is
            perturbed, with the noise the whole tensor gets there.
        sigma: noise standard deviation, finite and >= 0.
        seed, stream: the noise key, integers in ``[0, 2**32)``.
        layout: offsets of the tensors in the noise stream (default: the module's own layout, or the
            running element count of the distinct tensors of ``params``). With a layout, a subset of a
            model is perturbed exactly as perturbing the whole model would perturb it.
        backend: ``None`` (automatic) or "cpp", "cuda", "triton", "reference".
        backup: a previous :class:`Backup` whose buffer is reused when large enough.

    Returns:
        The :class:`Backup` to pass to :func:`restore_`.

    Equivalent plain PyTorch (slow, and noise from torch's generator instead of the stream)::

        backup = [p.detach().clone() for p in params]
        for p in params: p.data.add_(torch.randn_like(p) * sigma)
    """
    segments = resolve_params(params, layout)
    sigma = _check_sigma(sigma)
    seed, stream = _check_u32(seed, "seed"), _check_u32(stream, "stream")
    device = _check_tensors(segments)
    chosen = DISPATCH.pick(device, _dtypes(segments), backend)
    if backup is not None and not isinstance(backup, Backup):
        raise TypeError(f"backup: expected a Backup returned by perturb_, got {type(backup).__name__}")
    out = Backup.allocate(segments, device, chosen.name, reuse=backup)
    out.written = 0
    try:
        with torch.no_grad():
            chosen.impl.perturb(segments, None, out, sigma, seed, stream)
    except BaseException:
        # Nothing may stay perturbed: put back what may have been written (the backup of each element
        # is taken before that element is written), and only that: the rest of the buffer is garbage.
        with torch.no_grad():
            views = out.views(segments)
            _reference.restore(segments[:out.written], out, views[:out.written])
        raise
    _bump_versions(segments)
    return out


def restore_(params, backup: Backup, *, backend: str | None = None) -> None:
    """Copies the values saved by :func:`perturb_` back, bit for bit (``params`` as given to it)."""
    segments = resolve_params(params, None)
    if not isinstance(backup, Backup):
        raise TypeError(f"backup: expected the Backup returned by perturb_, got {type(backup).__name__}")
    backup.check(segments)  # same pointers, sizes, boxes, dtypes and device as the validated perturb_ call
    device = segments[0].tensor.device if segments else torch.device("cpu")
    chosen = DISPATCH.pick(device, _dtypes(segments), backend)
    with torch.no_grad():
        chosen.impl.restore(segments, backup)
    _bump_versions(segments)


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
        One new tensor per entry of ``params``, shape ``(K, *param.shape)`` (for a slice, ``(K, *box)``, a
        contiguous copy of the box): ``out[j][k]`` is level ``k`` of ``params[j]``.
    """
    segments = resolve_params(params, layout)
    sigmas = [_check_sigma(s, f"sigmas[{i}]") for i, s in enumerate(sigmas)]
    if not sigmas:
        raise ValueError("sigmas: expected at least one noise level")
    streams = _streams(stream, len(sigmas))
    seed = _check_u32(seed, "seed")
    device = _check_tensors(segments)
    chosen = DISPATCH.pick(device, _dtypes(segments), backend)
    outs: list[torch.Tensor] = []
    for seg in segments:
        if seg.pos == 0:  # the first segment of its entry
            outs.append(torch.empty((len(sigmas),) + seg.shape, dtype=seg.tensor.dtype, device=device))
    with torch.no_grad():
        for k, (s, st) in enumerate(zip(sigmas, streams)):
            dsts = [outs[seg.entry][k].view(-1)[seg.pos:seg.pos + seg.numel] for seg in segments]
            chosen.impl.perturb(segments, dsts, None, s, seed, st)
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
