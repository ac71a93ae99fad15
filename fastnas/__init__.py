"""fastnas: one-shot neural architecture search with fused native kernels."""

from __future__ import annotations

__version__ = "0.1.0"

from fastnas import _native  # noqa: F401  (loads fastnas._C once, warns once if it is missing)
from fastnas.ops import (Backup, BackendStatus, ParamLayout, backends, noise, perturb_, perturbed,
                         perturbed_copies, philox_words, restore_)

__all__ = [
    "__version__", "Backup", "BackendStatus", "ParamLayout", "backends", "noise", "perturb_", "perturbed",
    "perturbed_copies", "philox_words", "restore_",
]
