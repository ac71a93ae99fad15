"""Test-session setup: Triton kernels run interpreted on CPU when there is no GPU."""

from __future__ import annotations

import os

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

# Must be set before triton.jit decorates the kernels (at import of fastnas.ops.perturb.triton).
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # Tests use tiny tensors: one intra-op thread avoids thread hand-off costs on small, shared
    # machines. Tests about threading set the count they need explicitly.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
