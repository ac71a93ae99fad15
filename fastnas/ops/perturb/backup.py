"""The backup of one perturbation: the original values, in one flat byte buffer, for an exact restore."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch

from fastnas.ops.layout import Segment

__all__ = ["Backup", "restore_with_torch"]

_ALIGN = 64  # byte alignment of each segment's part of a backup buffer


@dataclass(eq=False)
class Backup:
    """Original values of the tensors (or slices) of one :func:`~fastnas.perturb_` call, in one flat buffer.

    Attributes:
        buffer: uint8 tensor on the tensors' device.
        byte_offsets: start of each segment's bytes in ``buffer`` (a whole tensor is one segment; a
            slice is one or a few; each is stored packed, in row-major order).
        signature: what each segment was taken from (data pointer, size, dtype, device and, for a slice,
            where the box lies): a restore whose segments match it needs no second validation.
        backend: the backend that wrote it.
        written: how many segments (in order) the last perturb_ call may have written; backends raise their
            input errors before writing anything (written stays 0).

    Passing a Backup as ``perturb_(..., backup=b)`` reuses its buffer: ``b`` then holds the values
    saved by that call (for the same tensors, the same originals).
    """

    buffer: torch.Tensor
    byte_offsets: List[int]
    signature: List[tuple]
    backend: str
    entries: int = 0  # entries of params (tensors or slices) it was taken from

    def __post_init__(self) -> None:
        self._views: list[torch.Tensor] | None = None
        self._pointers: list[int] | None = None
        self.native_args: tuple | None = None  # a backend's cached restore arguments (valid by signature)
        # Segments [0, written) may have been written by the running perturb_ call (their backup first,
        # element by element); a failed call puts back exactly those.
        self.written = 0

    @staticmethod
    def _layout(segments: Sequence[Segment]) -> tuple[list[int], int]:
        offs, pos = [], 0
        for s in segments:
            offs.append(pos)
            pos += (s.numel * s.tensor.element_size() + _ALIGN - 1) // _ALIGN * _ALIGN
        return offs, pos

    @classmethod
    def allocate(cls, segments: Sequence[Segment], device: torch.device, backend: str,
                 reuse: "Backup | None" = None) -> "Backup":
        signature = [cls._sig(s) for s in segments]
        if reuse is not None and reuse.signature == signature and reuse.buffer.device == device:
            reuse.backend = backend
            return reuse  # same segments: same offsets, views and pointers
        entries = segments[-1].entry + 1 if segments else 0
        offs, nbytes = cls._layout(segments)
        if reuse is not None and reuse.buffer.numel() >= nbytes and reuse.buffer.device == device:
            buf = reuse.buffer
        else:
            buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return cls(buf, offs, signature, backend, entries)

    @staticmethod
    def _sig(s: Segment) -> tuple:
        t = s.tensor
        if s.whole:
            return (t.data_ptr(), t.numel(), t.dtype, t.device)
        return (t.data_ptr(), t.numel(), t.dtype, t.device, s.geometry())

    def views(self, segments: Sequence[Segment]) -> list[torch.Tensor]:
        """Flat views of ``buffer`` with each segment's dtype (cached)."""
        if self._views is None:
            self._views = [self.buffer[o:o + s.numel * s.tensor.element_size()].view(s.tensor.dtype)
                           for o, s in zip(self.byte_offsets, segments)]
        return self._views

    def pointers(self) -> list[int]:
        """Address of each segment's part of ``buffer`` (cached)."""
        if self._pointers is None:
            base = self.buffer.data_ptr()
            self._pointers = [base + o for o in self.byte_offsets]
        return self._pointers

    def check(self, segments: Sequence[Segment], name: str = "backup") -> None:
        given = segments[-1].entry + 1 if segments else 0
        if len(segments) != len(self.signature) or given != self.entries:
            raise ValueError(f"{name} holds {self.entries} tensors but {given} were given; expected the same "
                             "tensors and slices, in the same order, as the perturb_ call")
        for s, sig in zip(segments, self.signature):
            t = s.tensor
            if self._sig(s) != sig:
                raise ValueError(f"{name} does not belong to these tensors: params[{s.entry}] ({s.label}, shape "
                                 f"{tuple(t.shape)}, {t.dtype}) is not the tensor or slice it was taken from")
            if not t.is_contiguous():
                raise ValueError(f"params[{s.entry}] (shape {tuple(t.shape)}, stride {t.stride()}) is not "
                                 "contiguous; expected the contiguous tensors perturb_ saved")


def restore_with_torch(segments: Sequence[Segment], backup: Backup) -> None:
    """Restore by torch copies: whole tensors in one ``_foreach_copy_``, each slice by a strided copy."""
    views = backup.views(segments)
    dst, src = [], []
    for seg, b in zip(segments, views):
        if seg.numel == 0:
            continue
        if seg.whole:
            dst.append(seg.tensor.view(-1))
            src.append(b)
        else:
            seg.view().copy_(b.view(seg.size0, seg.size1, seg.run))
    if dst:
        torch._foreach_copy_(dst, src)
