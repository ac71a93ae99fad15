"""The dataset registry: ``load_dataset(name)``, ``list_datasets()``, ``register_dataset``."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Dict, List, Optional

from fastnas.data._paths import PathLike
from fastnas.data.cifar import load_cifar10, load_cifar100
from fastnas.data.dataset import Dataset
from fastnas.data.idx import load_fashion_mnist, load_mnist
from fastnas.data.npz import load_digits, load_npz

__all__ = ["register_dataset", "load_dataset", "list_datasets"]

Loader = Callable[..., Dataset]
_REGISTRY: Dict[str, Loader] = {}


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator registering ``fn(data_dir=None, seed=0, **kw) -> Dataset`` under ``name``."""
    key = _canonical(name)

    def deco(fn: Loader) -> Loader:
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            raise ValueError(f"dataset {key!r} is already registered")
        _REGISTRY[key] = fn
        return fn

    return deco


register_dataset("digits")(load_digits)
register_dataset("mnist")(load_mnist)
register_dataset("fashion-mnist")(load_fashion_mnist)
register_dataset("cifar10")(load_cifar10)
register_dataset("cifar100")(load_cifar100)


def list_datasets(pattern: str = "*") -> List[str]:
    """Registered names matching a shell-style ``pattern``, sorted. A path ending in ``.npz`` is
    also accepted by :func:`load_dataset`."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def load_dataset(name: str, data_dir: Optional[PathLike] = None, seed: int = 0, **kwargs) -> Dataset:
    """Loads a dataset by registry name or ``.npz`` path.

    Args:
        name: a name from :func:`list_datasets` (case-insensitive, ``_`` = ``-``; ``fashion_mnist``,
            ``cifar-10`` work) or a path ending in ``.npz``.
        data_dir: where the files are; None searches ``$FASTNAS_DATA_DIR`` and system locations.
        seed: seeds the train/test split of datasets without an official one (digits, npz).
        **kwargs: passed to :func:`~fastnas.data.from_tensors` (``normalize``, ...). ``None`` values
            are dropped, so empty CLI flags do not override defaults.

    Raises:
        ValueError: unknown name (with close matches) or a corrupt file.
        FileNotFoundError: files not found; the message lists every path tried.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if str(name).lower().endswith(".npz"):
        return load_npz(name, data_dir=data_dir, seed=seed, **kwargs)
    key = _canonical(str(name))
    fn = _REGISTRY.get(key) or _REGISTRY.get(key.replace("-", "")) or _REGISTRY.get(
        {"fashionmnist": "fashion-mnist"}.get(key.replace("-", ""), ""))
    if fn is None:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown dataset: {name!r}.{hint} Available: {', '.join(list_datasets())}, "
                         "or a path ending in .npz")
    return fn(data_dir=data_dir, seed=seed, **kwargs)
