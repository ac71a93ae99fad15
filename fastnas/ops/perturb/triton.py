"""Triton backend: Triton's own Philox (``tl.randint4x``) plus the Box-Muller of docs/noise.md.

One launch per segment (a whole tensor, or the box of a slice: a grid of runs, see
``fastnas.ops.layout.Segment``); each program handles ``BLOCK`` Philox groups (``4 * BLOCK``
elements) of one run. Memory traffic with backup: read N, write 2N. Launched with ``enable_fp_fusion=False`` so every
multiply and add rounds like the torch reference. Runs on CPU under ``TRITON_INTERPRET=1`` (slow).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from fastnas.ops.perturb.backup import restore_with_torch

__all__ = ["availability", "devices", "perturb", "words", "normals_into", "restore"]

try:  # pragma: no cover - depends on the install
    import triton
    import triton.language as tl

    _import_error = None
except Exception as exc:  # ImportError, or a broken install
    triton = None
    tl = None
    _import_error = f"{type(exc).__name__}: {exc}"


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if interpreted() else ("cuda",)


def availability() -> str | None:
    if triton is None:
        return f"triton not importable ({_import_error}); pip install 'fastnas[triton]'"
    if not interpreted() and not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the Triton kernels on CPU, slowly)"
    return None


_BLOCK = 1024
_KEY_SHIFT = 32

if triton is not None:

    @triton.jit
    def _unit(w):
        a = (w >> 9).to(tl.int32).to(tl.float32) * 1.1920928955078125e-07
        return a + 5.9604644775390625e-08

    @triton.jit
    def _log(x):
        b = x.to(tl.uint32, bitcast=True)
        e = (b >> 23).to(tl.int32) - 127
        m = ((b & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
        big = m > 1.41421356
        m = tl.where(big, m * 0.5, m)
        e = tl.where(big, e + 1, e)
        f = m - 1.0
        z = f * f
        p = f * 0.0 + 7.0376836292e-2
        p = p * f
        p = p + -1.1514610310e-1
        p = p * f
        p = p + 1.1676998740e-1
        p = p * f
        p = p + -1.2420140846e-1
        p = p * f
        p = p + 1.4249322787e-1
        p = p * f
        p = p + -1.6668057665e-1
        p = p * f
        p = p + 2.0000714765e-1
        p = p * f
        p = p + -2.4999993993e-1
        p = p * f
        p = p + 3.3333331174e-1
        ef = e.to(tl.float32)
        y = f * z
        y = y * p
        y = y + ef * -2.12194440e-4
        y = y + z * -0.5
        r = f + y
        return r + ef * 0.693359375

    @triton.jit
    def _box_muller(w_even, w_odd):
        l = _log(_unit(w_even))
        l = l * -2.0
        r = tl.sqrt_rn(l)
        u = _unit(w_odd)
        t = u * 4.0
        q = t.to(tl.int32)
        r4 = t - q.to(tl.float32)
        flip = r4 > 0.5
        r4 = tl.where(flip, 1.0 - r4, r4)
        a = r4 * 1.57079637
        z = a * a
        s = z * -1.9515295891e-4
        s = s + 8.3321608736e-3
        s = s * z
        s = s + -1.6666654611e-1
        s = s * z
        s = s * a
        s = s + a
        c = z * 2.443315711809948e-5
        c = c + -1.388731625493765e-3
        c = c * z
        c = c + 4.166664568298827e-2
        c = c * z
        c = c * z
        c = c - z * 0.5
        c = c + 1.0
        cb = tl.where(flip, s, c)
        sb = tl.where(flip, c, s)
        odd = (q & 1) != 0
        c1 = tl.where(odd, -sb, cb)
        s1 = tl.where(odd, cb, sb)
        neg = q >= 2
        c1 = tl.where(neg, -c1, c1)
        s1 = tl.where(neg, -s1, s1)
        return r * c1, r * s1

    @triton.jit
    def _apply(src_ptr, dst_ptr, backup_ptr, j, p, mask, z, sigma32, sigma64,
               HAS_BACKUP: tl.constexpr, DST_PACKED: tl.constexpr, KIND: tl.constexpr):
        # j: the element's position in src; p: its packed position (backup, and dst when DST_PACKED).
        # KIND: 0 float32, 1 float64, 2 float16, 3 bfloat16 (handled as raw int16 bits, RNE by hand)
        x = tl.load(src_ptr + j, mask=mask, other=0)
        if HAS_BACKUP:
            tl.store(backup_ptr + p, x, mask=mask)
        if KIND == 1:
            y = x + z.to(tl.float64) * tl.load(sigma64)
        elif KIND == 3:
            xf = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
            yf = xf + z * sigma32
            yb = yf.to(tl.uint32, bitcast=True)
            yb = (yb + 0x7FFF + ((yb >> 16) & 1)) >> 16
            y = yb.to(tl.uint16).to(tl.int16, bitcast=True)
        else:
            yf = x.to(tl.float32) + z * sigma32
            y = yf.to(dst_ptr.dtype.element_ty)
        if DST_PACKED:
            tl.store(dst_ptr + p, y, mask=mask)
        else:
            tl.store(dst_ptr + j, y, mask=mask)

    @triton.jit
    def _perturb_kernel(src_ptr, dst_ptr, backup_ptr, offset, run, size1, stride0, stride1, per_run,
                        sigma32, sigma64, key,
                        HAS_BACKUP: tl.constexpr, DST_PACKED: tl.constexpr, KIND: tl.constexpr,
                        BLOCK: tl.constexpr):
        # Program p handles block p % per_run of run p // per_run (a whole tensor: one run).
        p = tl.program_id(0).to(tl.int64)
        r = p // per_run
        pid = p - r * per_run
        at = (r // size1) * stride0 + (r % size1) * stride1  # src position of run r
        begin = offset + at  # global index of its first element
        packed = r * run
        g = begin // 4 + pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        w0, w1, w2, w3 = tl.randint4x(key, g)
        n0, n1 = _box_muller(w0, w1)
        n2, n3 = _box_muller(w2, w3)
        k = g * 4 - begin
        _apply(src_ptr, dst_ptr, backup_ptr, at + k, packed + k, (k >= 0) & (k < run), n0, sigma32, sigma64,
               HAS_BACKUP, DST_PACKED, KIND)
        k = k + 1
        _apply(src_ptr, dst_ptr, backup_ptr, at + k, packed + k, (k >= 0) & (k < run), n1, sigma32, sigma64,
               HAS_BACKUP, DST_PACKED, KIND)
        k = k + 1
        _apply(src_ptr, dst_ptr, backup_ptr, at + k, packed + k, (k >= 0) & (k < run), n2, sigma32, sigma64,
               HAS_BACKUP, DST_PACKED, KIND)
        k = k + 1
        _apply(src_ptr, dst_ptr, backup_ptr, at + k, packed + k, (k >= 0) & (k < run), n3, sigma32, sigma64,
               HAS_BACKUP, DST_PACKED, KIND)

    @triton.jit
    def _normals_kernel(out_ptr, n, offset, key, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        g = offset // 4 + pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        w0, w1, w2, w3 = tl.randint4x(key, g)
        n0, n1 = _box_muller(w0, w1)
        n2, n3 = _box_muller(w2, w3)
        end = offset + n
        gi = g * 4
        tl.store(out_ptr + gi - offset, n0, mask=(gi >= offset) & (gi < end))
        tl.store(out_ptr + gi + 1 - offset, n1, mask=(gi + 1 >= offset) & (gi + 1 < end))
        tl.store(out_ptr + gi + 2 - offset, n2, mask=(gi + 2 >= offset) & (gi + 2 < end))
        tl.store(out_ptr + gi + 3 - offset, n3, mask=(gi + 3 >= offset) & (gi + 3 < end))

    @triton.jit
    def _words_kernel(out_ptr, groups, group0, key, BLOCK: tl.constexpr):
        # Writes the int64 output directly (each word zero-extended): no staging buffer.
        pid = tl.program_id(0).to(tl.int64)
        j = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        mask = j < groups
        w0, w1, w2, w3 = tl.randint4x(key, group0 + j)
        tl.store(out_ptr + 4 * j, w0.to(tl.int64), mask=mask)
        tl.store(out_ptr + 4 * j + 1, w1.to(tl.int64), mask=mask)
        tl.store(out_ptr + 4 * j + 2, w2.to(tl.int64), mask=mask)
        tl.store(out_ptr + 4 * j + 3, w3.to(tl.int64), mask=mask)


_KIND = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
_MAX_GRID_X = 2**31 - 1  # CUDA grid limit: programs along axis 0
_MAX_INDEX = 2**62  # global element indices and positions stay far inside int64


def _key(seed: int, stream: int) -> int:
    return seed + (stream << _KEY_SHIFT)


def _as_kernel_view(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _groups(offset: int, n: int) -> int:
    return (offset + n + 3) // 4 - offset // 4


_SIGMA64: dict = {}


def _sigma64(sigma: float, device: torch.device) -> torch.Tensor:
    # Triton passes Python floats as float32, so float64 tensors read sigma from a one-element tensor.
    # Kept per (device, sigma): a search uses a handful of sigmas, and a new tensor per call would cost
    # an allocation and a host-to-device copy each time.
    key = (device, sigma)
    t = _SIGMA64.get(key)
    if t is None:
        if len(_SIGMA64) >= 64:
            _SIGMA64.clear()
        t = _SIGMA64[key] = torch.tensor([sigma], dtype=torch.float64, device=device)
    return t


def _check_launch(what: str, tensor: torch.Tensor, dtypes, programs: int, extent: int) -> None:
    """Rejects what the kernels cannot take, before anything is launched."""
    if tensor.dtype not in dtypes:
        raise NotImplementedError(f"triton {what}: dtype {tensor.dtype} not supported; expected one of "
                                  f"{', '.join(str(d) for d in dtypes)}")
    if tensor.device.type not in devices():
        raise NotImplementedError(f"triton {what}: device {tensor.device} not supported here ({devices()})")
    if not tensor.is_contiguous():
        raise ValueError(f"triton {what}: expected a contiguous tensor, got stride {tensor.stride()}")
    if programs > _MAX_GRID_X:
        raise NotImplementedError(f"triton {what}: {programs} programs exceed the grid limit {_MAX_GRID_X}; "
                                  "use backend='cuda' or split the tensor")
    if extent >= _MAX_INDEX:
        raise NotImplementedError(f"triton {what}: element index {extent} exceeds {_MAX_INDEX}")


def perturb(segments: Sequence, dsts, backup, sigma: float, seed: int, stream: int) -> None:
    backups = backup.views(segments) if backup is not None else None
    key = _key(seed, stream)
    s32 = float(torch.tensor(sigma, dtype=torch.float32))
    plans = []
    for k, seg in enumerate(segments):  # validate everything first: nothing is launched on bad input
        if seg.numel == 0:
            continue
        runs = seg.numel // seg.run
        groups = _groups(seg.offset + seg.start, seg.run) if runs == 1 else (seg.run + 6) // 4
        per_run = triton.cdiv(groups, _BLOCK)
        _check_launch("perturb", seg.tensor, _KIND, runs * per_run, seg.offset + seg.tensor.numel())
        if dsts is not None and (dsts[k].dtype != seg.tensor.dtype or not dsts[k].is_contiguous()
                                 or dsts[k].numel() != seg.numel):
            raise ValueError(f"triton perturb: output {k} must be a contiguous {seg.tensor.dtype} tensor of "
                             f"{seg.numel} elements")
        plans.append((k, seg, runs, per_run))
    s64 = _sigma64(sigma, segments[0].tensor.device) if any(
        seg.tensor.dtype == torch.float64 for _, seg, _, _ in plans) else None
    for k, seg, runs, per_run in plans:
        src = _as_kernel_view(seg.tensor.view(-1)[seg.start:])
        dst = src if dsts is None else _as_kernel_view(dsts[k])
        back = _as_kernel_view(backups[k]) if backups is not None else src
        _perturb_kernel[(runs * per_run,)](
            src, dst, back, seg.offset + seg.start, seg.run, seg.size1, seg.stride0, seg.stride1, per_run,
            s32, s64 if s64 is not None else src, key,
            HAS_BACKUP=backups is not None, DST_PACKED=dsts is not None, KIND=_KIND[seg.tensor.dtype],
            BLOCK=_BLOCK, enable_fp_fusion=False,
        )
        if backup is not None:
            backup.written = k + 1  # launched (a launch that fails writes nothing)


def words(out: torch.Tensor, group0: int, seed: int, stream: int) -> None:
    groups = out.shape[0]
    if groups == 0:
        return
    programs = triton.cdiv(groups, _BLOCK)
    _check_launch("philox_words", out, (torch.int64,), programs, group0 + groups)
    _words_kernel[(programs,)](out, groups, group0, _key(seed, stream), BLOCK=_BLOCK)


def normals_into(out: torch.Tensor, offset: int, seed: int, stream: int) -> None:
    n = out.numel()
    if n == 0:
        return
    programs = triton.cdiv(_groups(offset, n), _BLOCK)
    _check_launch("noise", out, (torch.float32,), programs, offset + n)
    _normals_kernel[(programs,)](out, n, offset, _key(seed, stream), BLOCK=_BLOCK, enable_fp_fusion=False)


def restore(segments: Sequence, backup) -> None:
    restore_with_torch(segments, backup)
