"""IDX files (MNIST, Fashion-MNIST): a strict parser and the two loaders.

IDX layout (big-endian): two zero bytes, a dtype code, the number of dims ``d``, then ``d`` uint32
sizes, then the data. Files may be gzip-compressed (detected by content, not by name).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from fastnas.data._paths import PathLike, not_found, search_roots
from fastnas.data.dataset import Dataset, from_tensors

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist", "FASHION_MNIST_DIR"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the four ``*-ubyte.gz`` files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: PathLike) -> np.ndarray:
    """Parses one IDX file (optionally gzip-compressed) into a native-endian numpy array.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: bad magic number, unknown dtype code, or a size that does not match the header
            (truncated or trailing bytes); the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()}; expected "
                         f"0000 + dtype code in {sorted(hex(c) for c in _DTYPES)} + ndim >= 1)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dims)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX file {kind}: header says dims {dims} of {dtype.name} "
                         f"({expected} bytes), file has {len(raw)} bytes")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find(roots, subdirs, stem: str, tried: list) -> Optional[Path]:
    # MNIST mirrors spell the stem with "-" or "." before "idx" ("train-images.idx3-ubyte").
    names = [stem, stem.replace("-idx", ".idx")]
    for root in roots:
        for sub in subdirs:
            d = root / sub if sub else root
            for n in names:
                for suffix in ("", ".gz"):
                    p = d / (n + suffix)
                    tried.append(p)
                    if p.is_file():
                        return p
    return None


def _load_idx_set(name: str, data_dir, defaults, subdirs, hint: str, **kw) -> Dataset:
    roots = search_roots(data_dir, defaults)
    tried: list = []
    found = {}
    for key, stem in _FILES.items():
        p = _find(roots, subdirs, stem, tried)
        if p is None:
            dirs = [r / s if s else r for r in roots for s in subdirs]
            raise not_found(f"{name}: file {stem}[.gz]", dirs,
                            f"{hint}\nExpected the four files {', '.join(_FILES.values())} "
                            "(each optionally .gz) in one of these directories.")
        found[key] = p
    arrays = {k: read_idx(p) for k, p in found.items()}
    for k in ("train_x", "test_x"):
        if arrays[k].ndim != 3:
            raise ValueError(f"{found[k]}: expected 3-D images (N,H,W), got shape {arrays[k].shape}")
    for k in ("train_y", "test_y"):
        if arrays[k].ndim != 1:
            raise ValueError(f"{found[k]}: expected 1-D labels (N,), got shape {arrays[k].shape}")
    for xk, yk in (("train_x", "train_y"), ("test_x", "test_y")):
        if len(arrays[xk]) != len(arrays[yk]):
            raise ValueError(f"{found[xk]} has {len(arrays[xk])} images but {found[yk]} has "
                             f"{len(arrays[yk])} labels")
    return from_tensors(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                        name=name, num_classes=10, **kw)


def load_fashion_mnist(data_dir: Optional[PathLike] = None, seed: int = 0, **kw) -> Dataset:
    """Fashion-MNIST (60000 train / 10000 test, 1x28x28, 10 classes) from IDX files.

    Looks in ``data_dir`` (and its ``fashion-mnist/``, ``FashionMNIST/raw/`` subfolders); when
    ``data_dir`` is None, in ``$FASTNAS_DATA_DIR`` and then Debian's ``/usr/share/datasets/fashion-mnist``.
    ``seed`` is unused (official split); extra keywords go to :func:`from_tensors`.
    """
    del seed
    kw.setdefault("classes", FASHION_CLASSES)
    return _load_idx_set(
        "fashion-mnist", data_dir, [FASHION_MNIST_DIR],
        ["", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"],
        "Install it with `apt-get install dataset-fashion-mnist` (files in "
        f"{FASHION_MNIST_DIR}) or pass data_dir= a directory holding the IDX files.", **kw)


def load_mnist(data_dir: Optional[PathLike] = None, seed: int = 0, **kw) -> Dataset:
    """MNIST (60000 train / 10000 test, 1x28x28, 10 classes) from IDX files.

    Looks in ``data_dir`` (and its ``mnist/``, ``MNIST/raw/`` subfolders), or ``$FASTNAS_DATA_DIR``
    when ``data_dir`` is None. ``seed`` is unused (official split).
    """
    del seed
    return _load_idx_set(
        "mnist", data_dir, [], ["", "mnist", "MNIST/raw"],
        "Pass data_dir= (or set $FASTNAS_DATA_DIR to) a directory holding the MNIST IDX files; "
        "fastnas never downloads.", **kw)
