"""The :class:`Dataset` value, :func:`from_tensors`, per-channel normalisation and seeded splits.

Every loader ends in :func:`from_tensors`: images become float32 NCHW tensors scaled to [0, 1] (or
left as given for float input), then normalised per channel with the *training* set's mean and std,
so no statistic of the test set leaks into training.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["Dataset", "from_tensors", "stratified_split"]

ArrayLike = Union[torch.Tensor, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """An image-classification dataset held in memory.

    Attributes:
        name: registry name (or a file name / ``"tensors"``).
        train_x: ``(N, C, H, W)`` float32, normalised with ``mean``/``std``.
        train_y: ``(N,)`` int64 labels in ``[0, num_classes)``.
        test_x: ``(M, C, H, W)`` float32, normalised with the *training* ``mean``/``std``.
        test_y: ``(M,)`` int64.
        num_classes: number of classes.
        in_channels: ``C``.
        resolution: ``H == W``.
        mean: per-channel mean of the scaled training images (before normalisation).
        std: per-channel std of the scaled training images (1.0 where a channel is constant).
        classes: class names where the format ships them, else ``None``.
        augment: whether the standard crop-and-flip training augmentation suits this data
            (True for CIFAR; the trainer may use it as its default).
        scale: the raw images (as the source gives them) were divided by this before normalisation:
            255 for uint8 data (IDX, CIFAR), 16 for the digits, 1 for float arrays used as stored. A raw
            image ``r`` becomes ``(r / scale - mean) / std``; an exported network applies the same.
        layout: how the source gives the images: ``"nhw"`` (``(N, H, W)``, one channel), ``"nchw"`` or
            ``"nhwc"``.
        raw_dtype: the dtype of the source's images (``"uint8"``, ``"float32"``, ...).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    resolution: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Optional[Tuple[str, ...]] = None
    augment: bool = False
    scale: float = 1.0
    layout: str = "nchw"
    raw_dtype: str = "float32"

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.in_channels, self.resolution, self.resolution)

    @property
    def pad_fill(self) -> Tuple[float, ...]:
        """Per-channel value of a black (zero) pixel after normalisation: ``-mean / std``.

        Pass it as ``fill=`` to :func:`~fastnas.data.augment` to pad with black as torchvision's
        ``RandomCrop(padding=4)`` before ``Normalize`` does; the default ``fill=0.0`` pads with the
        channel mean instead.
        """
        return tuple(-m / s for m, s in zip(self.mean, self.std))

    def to(self, device: Union[str, torch.device]) -> "Dataset":
        """A copy with all four tensors on ``device``."""
        return dataclasses.replace(
            self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
            test_x=self.test_x.to(device), test_y=self.test_y.to(device))

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={tuple(self.train_x.shape)}, "
                f"test={tuple(self.test_x.shape)}, num_classes={self.num_classes})")


def stratified_split(y: ArrayLike, fraction: float, seed: int, *,
                     size: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices ``0..len(y)-1``.

    Each class contributes ``round(n_c * fraction)`` of its samples to the second part. Both index
    arrays are sorted (the data keeps its original order) and together cover every index once.

    Args:
        y: ``(N,)`` integer labels.
        fraction: share of each class in the second part, in ``(0, 1)``.
        seed: the same seed gives the same split.
        size: the exact size of the second part (``None``: whatever the rounding gives). Where the
            per-class rounding misses it, the classes whose ``n_c * fraction`` was rounded furthest
            (ties: the lower label) give or take one sample each; where it hits it, the split is the
            one without ``size``.

    Returns:
        ``(first, second)`` int64 index arrays.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"Invalid split fraction: {fraction} (expected 0 < fraction < 1)")
    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    classes = [np.flatnonzero(y == c) for c in np.unique(y)]
    counts = [int(round(len(idx) * fraction)) for idx in classes]
    if size is not None:
        if not 0 <= size <= len(y):
            raise ValueError(f"size={size!r}: expected an integer in [0, {len(y)}]")
        exact = [len(idx) * fraction for idx in classes]
        while sum(counts) != size:
            grow = sum(counts) < size
            room = [i for i, idx in enumerate(classes) if (counts[i] < len(idx) if grow else counts[i] > 0)]
            i = max(room, key=lambda j: ((exact[j] - counts[j]) if grow else (counts[j] - exact[j]), -j))
            counts[i] += 1 if grow else -1
    first, second = [], []
    for idx, k in zip(classes, counts):
        idx = idx[rng.permutation(len(idx))]
        second.append(idx[:k])
        first.append(idx[k:])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(first).astype(np.int64), cat(second).astype(np.int64)


def _as_tensor(a: ArrayLike, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            raise ValueError(f"{what}: object arrays are not supported (dtype=object)")
        return torch.from_numpy(np.ascontiguousarray(a))
    raise ValueError(f"{what}: expected a torch.Tensor or numpy array, got {type(a).__name__}")


def _source_layout(x: torch.Tensor, layout: Optional[str]) -> str:
    """``"nhw"``, ``"nchw"`` or ``"nhwc"``: how :func:`_to_nchw` reads ``x`` (checked there)."""
    if x.dim() == 3:
        return "nhw"
    if layout is not None or x.dim() != 4:
        return layout or "nchw"
    _, a, b, d = x.shape
    if (b == d) != (a == b):
        return "nchw" if b == d else "nhwc"
    return "nhwc" if d in (1, 3, 4) and a not in (1, 3, 4) else "nchw"


def _to_nchw(x: torch.Tensor, layout: Optional[str], what: str) -> torch.Tensor:
    """(N,H,W) -> (N,1,H,W); (N,C,H,W) kept; (N,H,W,C) transposed.

    Channels-last detection when ``layout`` is None, for a 4-D array ``(N, A, B, D)``:
    1. if exactly one reading gives square images (``B == D`` for NCHW, ``A == B`` for NHWC), that one;
    2. else NHWC when ``D`` is 1, 3 or 4 and ``A`` is not; otherwise NCHW.
    Pass ``layout="nhwc"``/``"nchw"`` to settle shapes this gets wrong.
    """
    if layout is not None and layout not in ("nchw", "nhwc"):
        raise ValueError(f"Invalid layout: {layout!r} (expected 'nchw', 'nhwc' or None)")
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"{what}: expected (N,H,W), (N,C,H,W) or (N,H,W,C), got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2) if _source_layout(x, layout) == "nhwc" else x


def _labels(y: ArrayLike, n: int, what: str) -> torch.Tensor:
    y = _as_tensor(y, what)
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"{what}: expected shape ({n},) to match the images, got {tuple(y.shape)}")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ValueError(f"{what}: labels must be integers, got non-integral floats")
    elif y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{what}: labels must be integers, got dtype {y.dtype}")
    return y.to(torch.int64)


def from_tensors(
    x: ArrayLike,
    y: ArrayLike,
    x_test: Optional[ArrayLike] = None,
    y_test: Optional[ArrayLike] = None,
    *,
    name: str = "tensors",
    num_classes: Optional[int] = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    scale: Optional[float] = None,
    layout: Optional[str] = None,
    normalize: bool = True,
    classes: Optional[Sequence[str]] = None,
    augment: bool = False,
) -> Dataset:
    """A :class:`Dataset` from arrays or tensors.

    Args:
        x: images ``(N,H,W)``, ``(N,C,H,W)`` or ``(N,H,W,C)`` (see ``layout``).
        y: ``(N,)`` integer labels.
        x_test, y_test: held-out data (both or neither); if absent, a seeded stratified split of
            ``x, y`` holds out ``test_fraction`` of each class.
        name: the dataset's name.
        num_classes: defaults to ``max label + 1``.
        seed: seeds the split when there is no test set.
        test_fraction: share held out when there is no test set.
        scale: images are divided by this before normalisation; default 255 for uint8 input,
            1 otherwise.
        layout: ``"nchw"``, ``"nhwc"`` or ``None`` to detect: for 4-D ``(N, A, B, D)``, the reading
            that gives square images if only one does, else NHWC when ``D`` is 1, 3 or 4 and ``A``
            is not, else NCHW.
        normalize: normalise per channel with the training mean/std (else mean 0, std 1 recorded).
        classes: optional class names.
        augment: recorded on the dataset (see :class:`Dataset`).
    """
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test and y_test must be given together (got only one of them)")
    tx = _as_tensor(x, "x")
    if scale is None:
        scale = 255.0 if tx.dtype == torch.uint8 else 1.0
    if not scale > 0:
        raise ValueError(f"Invalid scale: {scale} (expected > 0)")
    if tx.dtype == torch.bool or tx.is_complex():
        raise ValueError(f"x: unsupported image dtype {tx.dtype}")
    raw_dtype = str(tx.dtype).replace("torch.", "")
    source_layout = _source_layout(tx, layout)
    tx = _to_nchw(tx, layout, "x")
    ty = _labels(y, tx.shape[0], "y")
    if x_test is None:
        if tx.shape[0] < 2:
            raise ValueError(f"x: need at least 2 samples to hold out a test set, got {tx.shape[0]}")
        tr, te = stratified_split(ty, test_fraction, seed)
        tr, te = torch.from_numpy(tr), torch.from_numpy(te)
        tx, ty, ex, ey = tx[tr], ty[tr], tx[te], ty[te]
    else:
        ex = _as_tensor(x_test, "x_test")
        if ex.dtype == torch.bool or ex.is_complex():
            raise ValueError(f"x_test: unsupported image dtype {ex.dtype}")
        ex = _to_nchw(ex, layout, "x_test")
        ey = _labels(y_test, ex.shape[0], "y_test")
        if ex.shape[1:] != tx.shape[1:]:
            raise ValueError(f"x_test: image shape {tuple(ex.shape[1:])} differs from x's {tuple(tx.shape[1:])}")
    if tx.shape[0] == 0:
        raise ValueError("x: the training set is empty")
    c, h, w = tx.shape[1:]
    if h != w:
        raise ValueError(f"x: non-square images ({h}x{w}) are not supported; crop or pad them to square")
    top = int(max(ty.max().item(), ey.max().item() if ey.numel() else -1))
    if num_classes is None:
        num_classes = top + 1
    low = int(min(ty.min().item(), ey.min().item() if ey.numel() else 0))
    if low < 0:
        raise ValueError(f"y: labels must be class indices >= 0, got a minimum of {low}")
    if top >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{low}, {top}]")
    tx = tx.to(torch.float32) / float(scale)
    ex = ex.to(torch.float32) / float(scale)
    for what, t in (("x", tx), ("x_test", ex)):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{what}: {bad} pixel values are not finite (NaN or inf); clean the images first")
    if normalize:
        # float64 accumulation: 60000x28x28 sums in float32 lose ~4 digits.
        mean = tx.to(torch.float64).mean(dim=(0, 2, 3))
        std = tx.to(torch.float64).std(dim=(0, 2, 3), unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        m = mean.to(torch.float32).view(1, c, 1, 1)
        s = std.to(torch.float32).view(1, c, 1, 1)
        tx = ((tx - m) / s).contiguous()
        ex = ((ex - m) / s).contiguous()
        mean_t, std_t = tuple(mean.tolist()), tuple(std.tolist())
    else:
        mean_t, std_t = (0.0,) * c, (1.0,) * c
    if classes is not None:
        classes = tuple(str(s) for s in classes)
        if len(classes) != num_classes:
            raise ValueError(f"classes: got {len(classes)} names for {num_classes} classes")
    return Dataset(
        name=name, train_x=tx.contiguous(), train_y=ty.contiguous(), test_x=ex.contiguous(),
        test_y=ey.contiguous(), num_classes=int(num_classes), in_channels=int(c), resolution=int(h),
        mean=mean_t, std=std_t, classes=classes, augment=augment, scale=float(scale), layout=source_layout,
        raw_dtype=raw_dtype)
