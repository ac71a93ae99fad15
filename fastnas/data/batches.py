"""Deterministic mini-batches (:class:`Batches`: training, recalibration, evaluation) and batched
crop-and-flip augmentation on tensors.

A batch depends only on ``(seed, epoch, batch index)``: the order is a permutation seeded by
``(seed, epoch)`` and each batch's augmentation by ``(seed, epoch, index)`` (see :mod:`fastnas.seeds`).
So a trainer resumed after a kill at batch ``k`` sees exactly the batches it would have seen
(``Batches(..., start=k)``), without replaying the first ``k``.
"""

from __future__ import annotations

import numbers
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fastnas.seeds import SEED_SEQUENCE, derive_seed

__all__ = ["augment", "Batches", "batches"]

Fill = Union[float, Sequence[float]]


def augment(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4, flip: bool = True,
            fill: Fill = 0.0) -> torch.Tensor:
    """Random crop after padding, and random horizontal flip, per image, batched.

    Equivalent to torchvision's ``RandomCrop(H, padding=padding)`` + ``RandomHorizontalFlip()`` applied
    image by image. ``fill`` is the padding value (a float or one per channel); on data normalised by
    a :class:`~fastnas.data.Dataset`, ``fill=0.0`` pads with the channel mean and
    ``fill=dataset.pad_fill`` pads with black as torchvision does before ``Normalize``.

    Args:
        x: ``(N, C, H, W)`` floating images (any device; not modified).
        generator: a ``torch.Generator`` (on any device); draws ``2N`` offsets then ``N`` flips.
        padding: pixels added on each side before cropping back to ``H x W``.
        flip: also flip each image left-right with probability 1/2.
        fill: padding value(s).

    Returns:
        ``(N, C, H, W)`` new tensor.
    """
    if x.dim() != 4:
        raise ValueError(f"augment: expected x of shape (N, C, H, W), got {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"Invalid padding: {padding} (expected >= 0)")
    n, c, h, w = x.shape
    gdev = generator.device
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=gdev).to(x.device)
    flips = (torch.rand(n, generator=generator, device=gdev) < 0.5).to(x.device)
    if n == 0:
        return x.clone()
    dev = x.device
    if padding > 0:
        fills = [float(v) for v in torch.as_tensor(fill, dtype=torch.float64).reshape(-1).tolist()]
        if len(fills) not in (1, c):
            raise ValueError(f"fill: expected 1 or {c} values, got {len(fills)}")
        xp = F.pad(x, (padding,) * 4, value=fills[0])
        if len(set(fills)) > 1:
            border = torch.ones(1, 1, h + 2 * padding, w + 2 * padding, dtype=torch.bool, device=dev)
            border[..., padding:padding + h, padding:padding + w] = False
            xp = torch.where(border, torch.tensor(fills, dtype=x.dtype, device=dev).view(1, c, 1, 1), xp)
    else:
        xp = x
    # Crop and flip as one gather over the flattened padded plane (one read of the output size;
    # 4-5x faster on CPU than advanced indexing): output pixel (i, j) of image k reads padded pixel
    # (oy_k + i, ox_k + j), or (oy_k + i, ox_k + w-1-j) when image k is flipped.
    wp = w + 2 * padding
    j = torch.arange(w, device=dev)
    cols = torch.where(flips.view(n, 1) & flip, (w - 1 - j).view(1, w), j.view(1, w)) + off[1].view(n, 1)
    rows = off[0].view(n, 1) + torch.arange(h, device=dev)  # (N, H)
    lin = (rows.view(n, h, 1) * wp + cols.view(n, 1, w)).view(n, 1, h * w).expand(n, c, h * w)
    out = xp.reshape(n, c, -1).gather(2, lin).view(n, c, h, w)
    return out


class Batches:
    """Iterable of ``(x, y)`` mini-batches, deterministic in ``(seed, epoch)``: the one batcher.

    It serves the three uses of batches in fastnas:

    * **training** -- a permutation per epoch, optionally augmented:
      ``Batches(x, y, 64, seed=s, epoch=e, augment=True)``;
    * **recalibration** -- a fixed number of full batches of images drawn without replacement from a
      stream of permutations of one generator (the same images for every candidate):
      ``Batches(x, None, 64, order_seed=s, num_batches=14)``;
    * **evaluation** -- the samples in order: ``Batches(x, y, 256, shuffle=False)``.

    Seeds (:mod:`fastnas.seeds`): the sample order of an epoch is a ``torch.randperm`` of a generator
    seeded with ``order_seed`` (default ``derive_seed(seed, SEED_SEQUENCE, epoch, 0)``), the augmentation
    of batch ``k`` uses ``derive_seed(seed, SEED_SEQUENCE, epoch, k + 1)``.

    Args:
        x: ``(N, C, H, W)`` images; y: ``(N,)`` labels, or ``None`` (the batches are then ``(x, None)``).
        batch_size: samples per batch (the last one smaller unless ``drop_last``).
        shuffle: permute the samples (seeded by ``(seed, epoch)``); else keep their order.
        seed, epoch: the batches are a function of these two only (and ``order_seed`` when given).
        augment: apply :func:`augment` (crop with ``padding``, flip) to each batch.
        drop_last: drop a final incomplete batch.
        padding, fill: passed to :func:`augment`.
        start: first batch index to yield (resume mid-epoch); earlier batches are not computed.
        device: move each batch there (non-blocking) before augmenting.
        order_seed: the seed of the generator of the sample order, replacing the one derived from
            ``(seed, epoch)`` (e.g. ``derive_seed(run_seed, "batches", epoch)`` of the SPOS trainer).
        num_batches: yield exactly this many full batches from the stream of permutations of one
            generator (when the samples run out, the next permutation of the same generator continues
            the stream; batches may straddle two permutations); ``drop_last`` is then moot. ``None``
            (default): one pass over the samples.
    """

    def __init__(self, x: torch.Tensor, y: Optional[torch.Tensor], batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, epoch: int = 0, augment: bool = False, drop_last: bool = False,
                 padding: int = 4, fill: Fill = 0.0, start: int = 0,
                 device: Optional[Union[str, torch.device]] = None, order_seed: Optional[int] = None,
                 num_batches: Optional[int] = None) -> None:
        if y is not None and x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        for name, value, low in (("batch_size", batch_size, 1), ("start", start, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= {low})")
        if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral)
                                        or num_batches < 0):
            raise ValueError(f"Invalid num_batches: {num_batches!r} (expected None or an integer >= 0)")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.seed, self.epoch, self.augment = int(seed), int(epoch), augment
        self.padding, self.fill, self.start, self.device = padding, fill, int(start), device
        self.order_seed = None if order_seed is None else int(order_seed)
        self.num_batches = None if num_batches is None else int(num_batches)

    def __len__(self) -> int:
        n = self.x.shape[0]
        if self.num_batches is not None:
            total = self.num_batches if n > 0 else 0
        else:
            total = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return max(0, total - self.start)

    def _generator(self) -> torch.Generator:
        seed = self.order_seed if self.order_seed is not None else derive_seed(self.seed, SEED_SEQUENCE, self.epoch, 0)
        return torch.Generator().manual_seed(seed)

    def order(self) -> torch.Tensor:
        """The sample order of this epoch, ``(N,)`` int64 on CPU (with ``num_batches``: the whole stream)."""
        n = self.x.shape[0]
        passes = 1
        if self.num_batches is not None:  # as many permutations as the stream needs
            passes = -(-self.num_batches * self.batch_size // n) if n > 0 else 0
        if not self.shuffle:
            return torch.arange(n).repeat(passes)
        g = self._generator()
        if passes == 1:
            return torch.randperm(n, generator=g)
        return torch.cat([torch.randperm(n, generator=g) for _ in range(passes)] or [torch.empty(0, dtype=torch.int64)])

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        n, b = self.x.shape[0], self.batch_size
        if self.num_batches is not None:
            stop = self.num_batches * b if n > 0 else 0
        else:
            stop = (n // b) * b if self.drop_last else n
        # Batches are copies (never views): a model that works in place on its input cannot alter the data.
        order = self.order().to(self.x.device)
        for k, i in enumerate(range(self.start * b, stop, b), start=self.start):
            idx = order[i:i + b]
            xb = self.x.index_select(0, idx)  # (B, C, H, W); 2x faster than x[idx] on CPU
            yb = self.y.index_select(0, idx) if self.y is not None else None
            if self.device is not None:
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True) if yb is not None else None
            if self.augment:
                g = torch.Generator().manual_seed(derive_seed(self.seed, SEED_SEQUENCE, self.epoch, k + 1))
                xb = augment(xb, g, padding=self.padding, fill=self.fill)
            yield xb, yb


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True, seed: int = 0,
            epoch: int = 0, augment: bool = False, drop_last: bool = False, **kw) -> Batches:
    """Shorthand for :class:`Batches` (same arguments)."""
    return Batches(x, y, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, augment=augment,
                   drop_last=drop_last, **kw)
