from __future__ import annotations

import pytest

from fastnas.train import TrainConfig


def test_defaults_are_the_genas_recipe():
    c = TrainConfig()
    assert (c.batch_size, c.lr, c.lr_min, c.momentum, c.weight_decay, c.grad_clip) == (64, 0.025, 0.001, 0.9, 3e-4, 5.0)


def test_roundtrip_and_none_keeps_default():
    c = TrainConfig(epochs=3, nesterov=True, seed=7, label_smoothing=0.1)
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig.from_dict({"epochs": 2, "lr": None}).lr == 0.025


def test_frozen():
    with pytest.raises(Exception):
        TrainConfig().lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("kw, needle", [
    ({"momentum": -1}, "Invalid momentum value: -1"),
    ({"epochs": 0}, "Invalid epochs value: 0"),
    ({"lr_min": 1.0}, "Invalid lr_min value: 1.0"),
    ({"grad_clip": -1.0}, "Invalid grad_clip"),
    ({"label_smoothing": 1.0}, "Invalid label_smoothing"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov"),
    ({"batch_size": 2.5}, "Invalid batch_size"),
])
def test_bad_values_are_named(kw, needle):
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**kw)


def test_unknown_key_suggests():
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})


def test_numbers_are_normalized_for_the_fingerprint():
    a = TrainConfig(lr=1, lr_min=0, weight_decay=0, grad_clip=0)
    b = TrainConfig(lr=1.0, lr_min=0.0, weight_decay=0.0, grad_clip=0.0)
    assert a.to_dict() == b.to_dict() and repr(a) == repr(b) and isinstance(a.lr, float)
