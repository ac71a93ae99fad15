"""The trainer on the real NAS-Bench-201 supernet (skipped until the space exists)."""

from __future__ import annotations

import pytest
import torch

nb201 = pytest.importorskip("fastnas.spaces.nb201")

from fastnas.train import TrainConfig, train_supernet  # noqa: E402


def test_nb201_supernet_trains_a_few_steps():
    torch.manual_seed(0)
    space = nb201.NB201(C=4, N=1, num_classes=10, in_channels=1, resolution=8)
    net = space.supernet()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    archs = []
    res = train_supernet(net, space, x, y, TrainConfig(epochs=2, batch_size=8),
                         progress=lambda e, i: archs.append(i["arch"]) if e == "step" else None)
    assert res.steps == 4 and all(l == l and l > 0 for l in res.epoch_loss)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, res.initial_state[k])}
    used = set().union(*(net.path_parameters(a) for a in archs))
    params = {n for n, _ in net.named_parameters()}
    assert changed & params <= used  # parameters off every sampled path never move
    assert changed & params  # and some on them do
