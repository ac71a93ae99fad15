from __future__ import annotations

import pytest
import torch

from fastnas.metrics import accuracy, calibration_batches
from fastnas.spaces.darts import DARTS, DARTS_V2
from fastnas.spaces.nb201 import NB201

ARCH = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "none", "nor_conv_3x3")


@pytest.fixture(scope="module")
def nb201():
    torch.manual_seed(0)
    return NB201(C=4, N=1, resolution=8).supernet()


def _data(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _manual(supernet, arch, x, y, calib, batches, bs):
    supernet.recalibrate(arch, calibration_batches(calib, batches, bs, 0), mode="exact")
    supernet.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], 10):
            correct += int((supernet(x[i:i + 10], arch).argmax(1) == y[i:i + 10]).sum())
    return correct / x.shape[0]


def test_accuracy_matches_manual_loop_and_leaves_supernet_untouched(nb201):
    x, y = _data()
    calib, _ = _data(40, seed=2)
    before = {k: v.clone() for k, v in nb201.state_dict().items()}
    got = accuracy(nb201, ARCH, x, y, calib_x=calib, bn_batches=3, bn_batch_size=16)
    after = nb201.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # stats recalibrated on a copy
    assert got == pytest.approx(_manual(nb201, ARCH, x, y, calib, 3, 16), abs=1e-12)
    nb201.load_state_dict(before)


def test_accuracy_darts_and_bf16():
    torch.manual_seed(0)
    sn = DARTS(C=4, layers=3, resolution=8).supernet(C=4, layers=3)
    x, y = _data(24)
    got = accuracy(sn, DARTS_V2, x, y, calib_x=x, bn_batches=2, bn_batch_size=12)
    assert got == pytest.approx(_manual(sn, DARTS_V2, x, y, x, 2, 12), abs=1e-12)
    assert 0.0 <= accuracy(sn, DARTS_V2, x, y, bn_batches=0, precision="bf16") <= 1.0


def test_calibration_batches_deterministic():
    x = torch.arange(10.0).view(10, 1)
    a = calibration_batches(x, 4, 3, seed=5)
    b = calibration_batches(x, 4, 3, seed=5)
    assert len(a) == 4 and all(t.shape == (3, 1) for t in a)
    assert all(torch.equal(s, t) for s, t in zip(a, b))
    first = torch.cat(a)[:10].view(-1).sort().values
    assert torch.equal(first, torch.arange(10.0))  # one full permutation before any repeat


def test_evaluator_rejects_out_of_range_labels_on_every_call():
    from fastnas.metrics import MultiSigmaEvaluator

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    ev = MultiSigmaEvaluator(model, torch.randn(8, 4), torch.tensor([0, 1, 2, 5, 0, 1, 2, 0]), sigmas=(0.01,))
    for _ in range(2):  # a failed first check must not switch the check off
        with pytest.raises(ValueError, match="labels"):
            ev.evaluate()
