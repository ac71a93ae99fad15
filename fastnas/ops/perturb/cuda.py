"""CUDA backend: one launch per batch of up to 40 segments (tensors or slices), one thread per Philox group."""

from __future__ import annotations

from typing import Sequence

import torch

from fastnas._native import C
from fastnas.ops.perturb.cpp import DTYPE_CODES, segment_geometry, segment_pointers
from fastnas.ops.perturb.cpp import availability as _native_availability
from fastnas.ops.perturb.backup import restore_with_torch

__all__ = ["availability", "perturb", "words", "normals_into", "restore"]


def availability() -> str | None:
    why = _native_availability()
    if why is not None:
        return why
    if not getattr(C, "has_cuda", False):
        return "fastnas._C was built without CUDA (no CUDA compiler at build time; FASTNAS_CUDA=ON forces it)"
    if not torch.cuda.is_available():
        return "torch reports no CUDA device"
    return None


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def perturb(segments: Sequence, dsts, backup, sigma: float, seed: int, stream: int) -> None:
    if not segments:
        return
    src_ptrs = segment_pointers(segments)
    device = segments[0].tensor.device
    if backup is not None:
        backup.written = len(segments)
    try:
        with torch.cuda.device(device):
            C.perturb_cuda(
                src_ptrs,
                src_ptrs if dsts is None else [t.data_ptr() for t in dsts],
                backup.pointers() if backup is not None else [],
                [s.numel for s in segments],
                [s.offset + s.start for s in segments],
                [DTYPE_CODES[s.tensor.dtype] for s in segments],
                float(sigma), seed, stream, _stream(segments[0].tensor),
                segment_geometry(segments), dsts is not None,
            )
    except ValueError:
        if backup is not None:
            backup.written = 0  # input rejected (std::invalid_argument) before any launch
        raise


def words(out: torch.Tensor, group0: int, seed: int, stream: int) -> None:
    buf = torch.empty(out.shape, dtype=torch.int32, device=out.device)
    with torch.cuda.device(out.device):
        C.philox_words_cuda(buf.data_ptr(), out.shape[0], group0, seed, stream, _stream(out))
    out.copy_(buf.to(torch.int64) & 0xFFFFFFFF)


def normals_into(out: torch.Tensor, offset: int, seed: int, stream: int) -> None:
    with torch.cuda.device(out.device):
        C.normals_cuda(out.data_ptr(), out.numel(), offset, seed, stream, _stream(out))


def restore(segments: Sequence, backup) -> None:
    restore_with_torch(segments, backup)
