"""Search spaces: architectures, supernets, standalone networks."""

from __future__ import annotations

from fastnas.spaces.base import Space, Supernet, create_space, list_spaces, recalibrate_bn, register_space

__all__ = ["Space", "Supernet", "create_space", "list_spaces", "recalibrate_bn", "register_space"]
