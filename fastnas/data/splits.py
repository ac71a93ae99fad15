"""The GeNAS / SPOS split: the training set halved into supernet-train and search-valid.

The supernet trains on one half; candidates are scored (accuracy, flatness, ...) on the other half;
the official test set is held out for the final report only.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch

from fastnas.data.dataset import Dataset, stratified_split

__all__ = ["SearchSplit", "split_for_search"]

Pair = Tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass(frozen=True, eq=False)
class SearchSplit:
    """``(x, y)`` pairs: ``supernet_train`` and ``search_valid`` from the training set, ``test`` held out."""

    supernet_train: Pair
    search_valid: Pair
    test: Pair


def split_for_search(dataset: Dataset, seed: int = 0, *, valid_fraction: float = 0.5,
                     stratified: bool = True) -> SearchSplit:
    """Splits ``dataset``'s training set in two, seeded; the two halves are disjoint and cover it.

    Args:
        dataset: the data.
        seed: the same seed gives the same split.
        valid_fraction: share of the training set for ``search_valid`` (GeNAS: 0.5).
        stratified: per-class split (each class halved); else a plain random permutation.
    """
    y = dataset.train_y
    n = y.shape[0]
    if stratified:
        tr, va = stratified_split(y, valid_fraction, seed)
        tr, va = torch.from_numpy(tr), torch.from_numpy(va)
    else:
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"Invalid valid_fraction: {valid_fraction} (expected 0 < valid_fraction < 1)")
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=g)
        k = int(round(n * valid_fraction))
        va, tr = perm[:k].sort().values, perm[k:].sort().values
    tr, va = tr.to(y.device), va.to(y.device)
    x = dataset.train_x
    return SearchSplit(supernet_train=(x[tr], y[tr]), search_valid=(x[va], y[va]),
                       test=(dataset.test_x, dataset.test_y))
