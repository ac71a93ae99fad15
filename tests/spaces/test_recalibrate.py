"""BatchNorm recalibration: exact (mean of per-batch statistics) and the reference-code momentum variant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastnas.spaces import recalibrate_bn


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1),
                         nn.BatchNorm2d(2))


def _batch_stats(model, batches):
    """Hand-computed per-batch mean and unbiased variance at the first BatchNorm's input."""
    stats = []
    with torch.no_grad():
        for x in batches:
            h = model[0](x)
            stats.append((h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=True)))
    return stats


def test_exact_mode_is_the_mean_of_batch_statistics():
    model = _model()
    model[1].running_mean.fill_(5.0)  # must be reset first
    batches = [torch.randn(4, 2, 5, 5) * (1 + i) + i for i in range(4)]
    stats = _batch_stats(model, batches)
    assert recalibrate_bn(model, model, batches, mode="exact") == 4
    want_mean = torch.stack([m for m, _ in stats]).mean(0)
    want_var = torch.stack([v for _, v in stats]).mean(0)
    assert torch.allclose(model[1].running_mean, want_mean, atol=1e-6)
    assert torch.allclose(model[1].running_var, want_var, atol=1e-5)
    assert not model.training and model[1].momentum == 0.1  # eval mode, momentum restored


def test_momentum_mode_follows_the_reference_code():
    model = _model()
    batches = [torch.randn(4, 2, 5, 5) + i for i in range(3)]
    stats = _batch_stats(model, batches)
    mean, var = torch.zeros(3), torch.ones(3)  # reset values
    for m, v in stats:
        mean = 0.9 * mean + 0.1 * m
        var = 0.9 * var + 0.1 * v
    recalibrate_bn(model, model, batches, mode="momentum")
    assert torch.allclose(model[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(model[1].running_var, var, atol=1e-6)


def test_unused_layers_keep_their_statistics():
    model = _model()
    model[4].running_mean.fill_(7.0)
    recalibrate_bn(lambda x: model[1](model[0](x)), model, [torch.randn(2, 2, 4, 4)])
    assert torch.all(model[4].running_mean == 7.0)


def test_bad_mode():
    model = _model()
    with pytest.raises(ValueError, match="mode='fast'"):
        recalibrate_bn(model, model, [], mode="fast")
