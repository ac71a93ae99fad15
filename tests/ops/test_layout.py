from __future__ import annotations

import pytest
import torch
from torch import nn

import fastnas


def test_offsets_follow_named_parameters_order():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    layout = fastnas.ParamLayout.from_module(model)
    assert layout.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [layout.offset(n) for n in layout.names] == [0, 12, 16, 24]
    assert layout.total == 26 and len(layout) == 4
    assert list(layout)[2] == ("2.weight", 16, 8)


def test_shared_parameters_counted_once():
    lin = nn.Linear(2, 2)
    model = nn.ModuleDict({"a": lin, "b": lin})
    assert fastnas.ParamLayout.from_module(model).total == 6


def test_bad_entries():
    with pytest.raises(ValueError, match="duplicate name 'x'"):
        fastnas.ParamLayout([("x", 3), ("x", 4)])
    with pytest.raises(ValueError, match="numel of 'y' is -1"):
        fastnas.ParamLayout([("y", -1)])
    with pytest.raises(TypeError, match="module"):
        fastnas.ParamLayout.from_module(torch.randn(3))
    layout = fastnas.ParamLayout([("conv.weight", 9)])
    with pytest.raises(ValueError, match="did you mean 'conv.weight'"):
        layout.offset("conv.weigh")
