"""Search spaces: architectures, supernets, standalone networks.

Importing this package registers the built-in spaces: ``create_space("nb201")``, ``create_space("darts")``, ``create_space("backbone", backbone="resnet20")``.
"""

from __future__ import annotations

from fastnas.spaces.base import (
    BatchedForward, CellGraph, CellwiseArch, Presets, Space, Supernet, create_space, list_spaces, recalibrate_bn, register_space,
)
from fastnas.spaces.backbone import BackboneSpace
from fastnas.spaces.darts import DARTS
from fastnas.spaces.elastic_resnet import ElasticResNet
from fastnas.spaces.nb201 import NB201
from fastnas.spaces.nb201_size import NB201Size

#: The space a run searches when none is named (the no-option ``fastnas search``).
DEFAULT_SPACE = "nb201"

__all__ = ["BackboneSpace", "BatchedForward", "CellGraph", "CellwiseArch", "DARTS", "DEFAULT_SPACE", "ElasticResNet", "NB201",
           "NB201Size", "Presets", "Space", "Supernet", "create_space", "list_spaces", "recalibrate_bn",
           "register_space"]
