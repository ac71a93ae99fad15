"""C++ CPU backend: SIMD Philox + Box-Muller, threads over the concatenation of all tensors."""

from __future__ import annotations

from typing import Sequence

import torch

from fastnas._native import C, load_error

__all__ = ["availability", "perturb", "words", "normals_into", "copy", "DTYPE_CODES"]

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def availability() -> str | None:
    if C is None:
        return f"fastnas._C not loaded ({load_error})"
    return None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def perturb(srcs: Sequence[torch.Tensor], dsts: Sequence[torch.Tensor], backups: Sequence[torch.Tensor] | None,
            offsets: Sequence[int], sigma: float, seed: int, stream: int) -> None:
    C.perturb_cpu(
        [t.data_ptr() for t in srcs],
        [t.data_ptr() for t in dsts],
        [b.data_ptr() for b in backups] if backups is not None else [],
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


def copy(dsts: Sequence[torch.Tensor], srcs: Sequence[torch.Tensor]) -> None:
    C.copy_many_cpu([d.data_ptr() for d in dsts], [s.data_ptr() for s in srcs],
                    [s.numel() * s.element_size() for s in srcs], _threads())
