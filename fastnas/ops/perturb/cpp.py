"""C++ CPU backend: SIMD Philox + Box-Muller, threads over the concatenation of all tensors."""

from __future__ import annotations

from typing import Sequence

import torch

from fastnas._native import C, load_error

__all__ = ["availability", "perturb", "words", "normals_into", "restore", "DTYPE_CODES", "segment_geometry",
           "segment_pointers"]

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def availability() -> str | None:
    if C is None:
        return f"fastnas._C not loaded ({load_error})"
    if not hasattr(C, "restore_cpu"):
        return "fastnas._C is an older build (no slice kernels); rebuild it (pip install .)"
    return None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def segment_geometry(segments) -> list:
    # [] when every segment is a whole tensor (the common case: nothing more to convert).
    if getattr(segments, "whole", False) or all(s.whole for s in segments):
        return []
    return [(s.run, s.size1, s.stride0, s.stride1) for s in segments]


def segment_pointers(segments) -> list[int]:
    return [s.tensor.data_ptr() + s.start * s.tensor.element_size() if s.start else s.tensor.data_ptr()
            for s in segments]


def perturb(segments: Sequence, dsts, backup, sigma: float, seed: int, stream: int) -> None:
    src_ptrs = segment_pointers(segments)
    args = (src_ptrs, src_ptrs if dsts is None else [t.data_ptr() for t in dsts],
            backup.pointers() if backup is not None else [], [s.numel for s in segments],
            [s.offset + s.start for s in segments], [DTYPE_CODES[s.tensor.dtype] for s in segments])
    if backup is not None:
        backup.written = len(segments)
    try:
        C.perturb_cpu(*args, float(sigma), seed, stream, _threads(), segment_geometry(segments), dsts is not None)
    except Exception:
        if backup is not None:
            backup.written = 0  # the native code rejects its input before writing anything
        raise


def words(out: torch.Tensor, group0: int, seed: int, stream: int) -> None:
    buf = torch.empty(out.shape, dtype=torch.int32)
    C.philox_words_cpu(buf.data_ptr(), out.shape[0], group0, seed, stream, _threads())
    out.copy_(buf.to(torch.int64) & 0xFFFFFFFF)


def normals_into(out: torch.Tensor, offset: int, seed: int, stream: int) -> None:
    C.normals_cpu(out.data_ptr(), out.numel(), offset, seed, stream, _threads())


def restore(segments: Sequence, backup) -> None:
    # The arguments depend only on what the backup's signature pins (pointers, sizes, boxes, dtypes):
    # built once per Backup, reused by every restore of it.
    args = backup.native_args
    if args is None:
        args = backup.native_args = (segment_pointers(segments), backup.pointers(), [s.numel for s in segments],
                                     [DTYPE_CODES[s.tensor.dtype] for s in segments], segment_geometry(segments))
    C.restore_cpu(*args, _threads())
