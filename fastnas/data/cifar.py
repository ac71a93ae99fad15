"""CIFAR-10 / CIFAR-100 from the official python-pickle batches.

CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``;
CIFAR-100: ``cifar-100-python/{train, test, meta}``. Each batch is a pickled dict with bytes keys:
``b'data'`` (N, 3072) uint8 in channel-major order (R plane, G plane, B plane of 32x32) and
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100).

The pickles are read with a restricted unpickler that only resolves the numpy names an array needs,
so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from fastnas.data._paths import PathLike, not_found, search_roots
from fastnas.data.dataset import Dataset, from_tensors

__all__ = ["load_cifar10", "load_cifar100", "read_cifar_batch"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core"):
            # numpy>=2 moved numpy.core to numpy._core; the old path warns on import.
            try:
                return super().find_class("numpy._core" + module[len("numpy.core"):], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, MemoryError) as e:
        raise ValueError(f"{path}: corrupt or truncated CIFAR pickle ({type(e).__name__}: {e})") from None


def read_cifar_batch(path: PathLike, label_key: bytes = b"labels") -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> ``(x (N,3,32,32) uint8, y (N,) int64)``; ``ValueError`` naming the file."""
    path = Path(path)
    d = _unpickle(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    for key in (b"data", label_key):
        if key not in d:
            keys = sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in d)
            raise ValueError(f"{path}: missing key {key!r} (has {keys})")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: b'data' has dtype {data.dtype}, expected uint8")
    if labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(f"{path}: {label_key!r} has shape {labels.shape}, expected ({len(data)},)")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_names(path: Path, key: bytes, count: int) -> Optional[Tuple[str, ...]]:
    if not path.is_file():
        return None
    try:
        d = _unpickle(path)
        names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in d[key])
    except Exception:  # class names are optional; a bad meta file must not block training
        return None
    return names if len(names) == count else None


def _find_dir(name: str, data_dir, folder: str, marker: str, hint: str) -> Path:
    tried: List[Path] = []
    for root in search_roots(data_dir):
        for d in (root, root / folder):
            tried.append(d / marker)
            if (d / marker).is_file():
                return d
    raise not_found(f"{name}: {marker}", tried, hint)


def _hint(folder: str, files: str, url: str) -> str:
    return (f"Put the python version of the dataset ({folder}/ with {files}, from {url}) under a "
            f"directory and pass it as data_dir= (the {folder}/ folder itself or its parent), or set "
            "$FASTNAS_DATA_DIR. fastnas never downloads.")


def load_cifar10(data_dir: Optional[PathLike] = None, seed: int = 0, **kw) -> Dataset:
    """CIFAR-10 (50000 / 10000, 3x32x32, 10 classes). ``seed`` is unused (official split)."""
    del seed
    folder = "cifar-10-batches-py"
    d = _find_dir("cifar10", data_dir, folder, "data_batch_1",
                  _hint(folder, "data_batch_1..5 and test_batch",
                        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"))
    parts = []
    for i in range(1, 6):
        p = d / f"data_batch_{i}"
        if not p.is_file():
            raise not_found(f"cifar10: {p.name}", [p], "CIFAR-10 needs data_batch_1..5 and test_batch.")
        parts.append(read_cifar_batch(p))
    if not (d / "test_batch").is_file():
        raise not_found("cifar10: test_batch", [d / "test_batch"], "CIFAR-10 needs data_batch_1..5 and test_batch.")
    tx, ty = read_cifar_batch(d / "test_batch")
    kw.setdefault("classes", _read_names(d / "batches.meta", b"label_names", 10))
    kw.setdefault("augment", True)
    return from_tensors(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                        tx, ty, name="cifar10", num_classes=10, layout="nchw", **kw)


def load_cifar100(data_dir: Optional[PathLike] = None, seed: int = 0, **kw) -> Dataset:
    """CIFAR-100 (50000 / 10000, 3x32x32, 100 fine classes). ``seed`` is unused (official split)."""
    del seed
    folder = "cifar-100-python"
    d = _find_dir("cifar100", data_dir, folder, "train",
                  _hint(folder, "train and test", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"))
    x, y = read_cifar_batch(d / "train", b"fine_labels")
    if not (d / "test").is_file():
        raise not_found("cifar100: test", [d / "test"], "CIFAR-100 needs both train and test.")
    tx, ty = read_cifar_batch(d / "test", b"fine_labels")
    kw.setdefault("classes", _read_names(d / "meta", b"fine_label_names", 100))
    kw.setdefault("augment", True)
    return from_tensors(x, y, tx, ty, name="cifar100", num_classes=100, layout="nchw", **kw)
