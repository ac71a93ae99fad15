"""Writers for small files in the real on-disk formats (IDX, CIFAR pickles)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    """IDX: 0x0000, dtype 0x08 (ubyte), ndim, big-endian uint32 dims, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def make_idx_set(d: Path, n_train: int = 40, n_test: int = 20, size: int = 6, gz: bool = False,
                 seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, a in arrays.items():
        write_idx(d / name, a, gz=gz)
    return arrays


def write_cifar_batch(path: Path, n: int, label_key: bytes, num_classes: int, seed: int,
                      protocol: int = 2) -> tuple:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, n)]
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", label_key: labels, b"data": data,
                     b"filenames": [b"x.png"] * n}, f, protocol=protocol)
    return data, labels


