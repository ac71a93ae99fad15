"""Fixtures: tiny CIFAR directories in the real pickle format."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from _data_writers import write_cifar_batch


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        write_cifar_batch(d / f"data_batch_{i}", 6, b"labels", 10, seed=i)
    write_cifar_batch(d / "test_batch", 5, b"labels", 10, seed=9)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f, protocol=2)
    return d


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    write_cifar_batch(d / "train", 12, b"fine_labels", 100, seed=1)
    write_cifar_batch(d / "test", 4, b"fine_labels", 100, seed=2)
    return d
