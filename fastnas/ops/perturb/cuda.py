"""CUDA backend: one launch per batch of up to 48 tensors, one thread per Philox group."""

from __future__ import annotations

from typing import Sequence

import torch

from fastnas._native import C, load_error
from fastnas.ops.perturb.cpp import DTYPE_CODES

__all__ = ["availability", "perturb", "words", "normals_into", "restore"]


def availability() -> str | None:
    if C is None:
        return f"fastnas._C not loaded ({load_error})"
    if not getattr(C, "has_cuda", False):
        return "fastnas._C was built without CUDA (no CUDA compiler at build time; FASTNAS_CUDA=ON forces it)"
    if not torch.cuda.is_available():
        return "torch reports no CUDA device"
    return None


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def perturb(srcs: Sequence[torch.Tensor], dsts: Sequence[torch.Tensor], backup, offsets: Sequence[int],
            sigma: float, seed: int, stream: int) -> None:
    if not srcs:
        return
    with torch.cuda.device(srcs[0].device):
        C.perturb_cuda(
            [t.data_ptr() for t in srcs],
            [t.data_ptr() for t in dsts],
            backup.pointers() if backup is not None else [],
            [t.numel() for t in srcs],
            list(offsets),
            [DTYPE_CODES[t.dtype] for t in srcs],
            float(sigma), seed, stream, _stream(srcs[0]),
        )


def words(out: torch.Tensor, group0: int, seed: int, stream: int) -> None:
    buf = torch.empty(out.shape, dtype=torch.int32, device=out.device)
    with torch.cuda.device(out.device):
        C.philox_words_cuda(buf.data_ptr(), out.shape[0], group0, seed, stream, _stream(out))
    out.copy_(buf.to(torch.int64) & 0xFFFFFFFF)


def normals_into(out: torch.Tensor, offset: int, seed: int, stream: int) -> None:
    with torch.cuda.device(out.device):
        C.normals_cuda(out.data_ptr(), out.numel(), offset, seed, stream, _stream(out))


def restore(tensors: Sequence[torch.Tensor], backup) -> None:
    torch._foreach_copy_([t.view(-1) for t in tensors], backup.views(tensors))
