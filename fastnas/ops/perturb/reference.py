"""Plain-torch reference of the noise stream and the perturbation kernels: the specification.

Every other backend is tested against these functions. They follow ``docs/noise.md`` operation by
operation (float32, no fused multiply-add), so the native backends agree bit for bit on CPU.
Slow by design: integer Philox on int64 tensors.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["philox_words", "normals", "normals_at", "perturb", "words", "normals_into", "restore"]

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def _mul_hi_lo(const: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``const * x`` for 32-bit ``x`` held in int64, without overflow."""
    c_hi, c_lo = const >> 16, const & 0xFFFF
    p_hi = x * c_hi  # < 2^48
    p_lo = x * c_lo  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _M32
    return hi & _M32, lo


def philox_words(groups: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """Philox4x32-10 words of the given counter groups.

    Args:
        groups: int64 tensor of group indices ``g >= 0`` (element ``i`` belongs to group ``i // 4``).
        seed, stream: the key, each in ``[0, 2**32)``.

    Returns:
        int64 tensor of shape ``(*groups.shape, 4)`` with the words ``w0..w3`` in ``[0, 2**32)``.
    """
    g = groups.to(torch.int64)
    c0, c1 = g & _M32, (g >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _M32, stream & _M32
    for _ in range(10):
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def _unit(w: torch.Tensor) -> torch.Tensor:
    a = (w >> 9).to(torch.float32) * _f32(2.0**-23)
    return a + _f32(2.0**-24)


_LOG_COEFFS = (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
)


def _log(x: torch.Tensor) -> torch.Tensor:
    b = x.view(torch.int32).to(torch.int64) & _M32
    e = (b >> 23) - 127
    m = ((b & 0x007FFFFF) | 0x3F800000).to(torch.int32).view(torch.float32)
    big = m > _f32(1.41421356)
    m = torch.where(big, m * _f32(0.5), m)
    e = torch.where(big, e + 1, e)
    f = m - _f32(1.0)
    z = f * f
    p = torch.full_like(f, _LOG_COEFFS[0])
    for c in _LOG_COEFFS[1:]:
        p = p * f
        p = p + _f32(c)
    ef = e.to(torch.float32)
    y = f * z
    y = y * p
    y = y + ef * _f32(-2.12194440e-4)
    y = y + z * _f32(-0.5)
    r = f + y
    return r + ef * _f32(0.693359375)


def _cos_sin(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = u * _f32(4.0)
    qf = torch.floor(t)
    r = t - qf
    flip = r > _f32(0.5)
    r = torch.where(flip, _f32(1.0) - r, r)
    a = r * _f32(1.57079637)
    z = a * a
    s = _f32(-1.9515295891e-4) * z
    s = s + _f32(8.3321608736e-3)
    s = s * z
    s = s + _f32(-1.6666654611e-1)
    s = s * z
    s = s * a
    s = s + a
    c = _f32(2.443315711809948e-5) * z
    c = c + _f32(-1.388731625493765e-3)
    c = c * z
    c = c + _f32(4.166664568298827e-2)
    c = c * z
    c = c * z
    c = c - _f32(0.5) * z
    c = c + _f32(1.0)
    cb, sb = torch.where(flip, s, c), torch.where(flip, c, s)
    q = qf.to(torch.int64)
    cos = torch.where(q == 0, cb, torch.where(q == 1, -sb, torch.where(q == 2, -cb, sb)))
    sin = torch.where(q == 0, sb, torch.where(q == 1, cb, torch.where(q == 2, -sb, -cb)))
    return cos, sin


def _box_muller(w_even: torch.Tensor, w_odd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Correctly rounded float32 sqrt (torch's float32 sqrt on CPU may be 1 ulp off): sqrt in float64
    # then one rounding, which is exact for sqrt (53 >= 2 * 24 + 2 bits).
    r = torch.sqrt((_log(_unit(w_even)) * _f32(-2.0)).to(torch.float64)).to(torch.float32)
    c, s = _cos_sin(_unit(w_odd))
    return r * c, r * s


def normals(n: int, seed: int = 0, stream: int = 0, offset: int = 0, device="cpu") -> torch.Tensor:
    """``n`` float32 normals at global element indices ``offset .. offset + n - 1``."""
    if n == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    g0, g1 = offset // 4, (offset + n + 3) // 4
    w = philox_words(torch.arange(g0, g1, dtype=torch.int64, device=device), seed, stream)
    n0, n1 = _box_muller(w[:, 0], w[:, 1])
    n2, n3 = _box_muller(w[:, 2], w[:, 3])
    z = torch.stack([n0, n1, n2, n3], dim=-1).reshape(-1)
    start = offset - 4 * g0
    return z[start:start + n]


def normals_at(indices: torch.Tensor, seed: int = 0, stream: int = 0) -> torch.Tensor:
    """float32 normals at arbitrary global element indices (int64 tensor, any shape)."""
    idx = indices.to(torch.int64)
    w = philox_words(idx // 4, seed, stream)
    n0, n1 = _box_muller(w[..., 0], w[..., 1])
    n2, n3 = _box_muller(w[..., 2], w[..., 3])
    lane = idx % 4
    return torch.where(lane == 0, n0, torch.where(lane == 1, n1, torch.where(lane == 2, n2, n3)))


def _perturbed_value(x: torch.Tensor, sigma: float, z: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float64:
        return x + z.to(torch.float64) * torch.tensor(sigma, dtype=torch.float64, device=x.device)
    t = z * torch.tensor(sigma, dtype=torch.float32, device=x.device)
    return (x.to(torch.float32) + t).to(x.dtype)


def perturb(segments: Sequence, dsts, backup, sigma: float, seed: int, stream: int) -> None:
    """``x = x + sigma * z[offset + flat index]`` over each segment ``x`` (a tensor or the box of a slice).

    ``dsts=None`` writes in place; otherwise ``dsts[k]`` is a flat tensor receiving segment ``k``
    packed (row-major). The originals go into ``backup`` (packed) before anything is written.
    """
    backups = backup.views(segments) if backup is not None else None
    for k, seg in enumerate(segments):
        if seg.numel == 0:
            continue
        src = seg.tensor
        x = src.view(-1) if seg.whole else seg.view()
        if backups is not None:
            backups[k].copy_(x.reshape(-1))
            backup.written = k + 1  # saved: from here on segment k may be written
        if seg.whole:
            z = normals(seg.numel, seed, stream, seg.offset, device=src.device)
        else:
            z = normals_at(seg.offset + seg.flat_indices(), seed, stream)
        value = _perturbed_value(x, sigma, z)
        if dsts is None:
            x.copy_(value)
        else:
            dsts[k].copy_(value.reshape(-1))


def words(out: torch.Tensor, group0: int, seed: int, stream: int) -> None:
    """``out[j, r]`` = word ``r`` of group ``group0 + j`` (as int64 in ``[0, 2**32)``)."""
    g = torch.arange(group0, group0 + out.shape[0], dtype=torch.int64, device=out.device)
    out.copy_(philox_words(g, seed, stream))


def normals_into(out: torch.Tensor, offset: int, seed: int, stream: int) -> None:
    out.copy_(normals(out.numel(), seed, stream, offset, device=out.device))


def restore(segments: Sequence, backup, views=None) -> None:
    """Copies the bytes saved in ``backup`` (or the given views of it) back into each segment."""
    for seg, b in zip(segments, backup.views(segments) if views is None else views):
        if seg.numel == 0:
            continue
        if seg.whole:
            seg.tensor.view(-1).copy_(b)
        else:
            seg.view().copy_(b.view(seg.size0, seg.size1, seg.run))
