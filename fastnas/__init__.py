"""fastnas: one-shot neural architecture search with fused native kernels."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
