"""C++ CPU backend: SIMD Philox + Box-Muller, threads over the concatenation of all tensors."""

from __future__ import annotations

from typing import Sequence

import torch

from fastnas._native import C, load_error

__all__ = ["availability", "perturb", "words", "normals_into", "restore", "DTYPE_CODES"]

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def availability() -> str | None:
    if C is None:
        return f"fastnas._C not loaded ({load_error})"
    return None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def perturb(srcs: Sequence[torch.Tensor], dsts: Sequence[torch.Tensor], backup, offsets: Sequence[int],
            sigma: float, seed: int, stream: int) -> None:
    src_ptrs = [t.data_ptr() for t in srcs]
    C.perturb_cpu(
        src_ptrs,
        src_ptrs if dsts is srcs else [t.data_ptr() for t in dsts],
        backup.pointers() if backup is not None else [],
        [t.numel() for t in srcs],
        list(offsets),
        [DTYPE_CODES[t.dtype] for t in srcs],
        float(sigma), seed, stream, _threads(),
    )


def words(out: torch.Tensor, group0: int, seed: int, stream: int) -> None:
    buf = torch.empty(out.shape, dtype=torch.int32)
    C.philox_words_cpu(buf.data_ptr(), out.shape[0], group0, seed, stream, _threads())
    out.copy_(buf.to(torch.int64) & 0xFFFFFFFF)


def normals_into(out: torch.Tensor, offset: int, seed: int, stream: int) -> None:
    C.normals_cpu(out.data_ptr(), out.numel(), offset, seed, stream, _threads())


def restore(tensors: Sequence[torch.Tensor], backup) -> None:
    C.copy_many_cpu([t.data_ptr() for t in tensors], backup.pointers(),
                    [t.numel() * t.element_size() for t in tensors], _threads())
