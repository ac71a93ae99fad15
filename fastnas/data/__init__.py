"""fastnas.data: datasets with no network access — bundled, on-disk formats, user tensors.

``load_dataset(name)`` returns a :class:`Dataset` of normalised float32 NCHW tensors;
``split_for_search`` halves its training set for supernet training and search; ``batches`` yields
deterministic, optionally augmented mini-batches.
"""

from __future__ import annotations

from fastnas.data._paths import DataNotFoundError
from fastnas.data.batches import Batches, augment, batches
from fastnas.data.cifar import load_cifar10, load_cifar100, read_cifar_batch
from fastnas.data.dataset import Dataset, from_tensors, stratified_split
from fastnas.data.idx import FASHION_MNIST_DIR, load_fashion_mnist, load_mnist, read_idx
from fastnas.data.npz import load_digits, load_npz
from fastnas.data.registry import list_datasets, load_dataset, register_dataset
from fastnas.data.splits import SearchSplit, split_for_search

__all__ = [
    "Dataset", "from_tensors", "load_dataset", "list_datasets", "register_dataset",
    "split_for_search", "SearchSplit", "augment", "Batches", "batches", "stratified_split",
    "read_idx", "read_cifar_batch", "load_digits", "load_mnist", "load_fashion_mnist",
    "load_cifar10", "load_cifar100", "load_npz", "DataNotFoundError", "FASHION_MNIST_DIR",
]
