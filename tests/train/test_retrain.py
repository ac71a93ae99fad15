"""Retraining a found network: the one training loop with Standalone steps, against the plain loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastnas.data import Batches
from fastnas.run.retrain import RETRAIN_KIND, derived_seed, evaluate, retrain
from fastnas.seeds import derive_seed
from fastnas.train import load_checkpoint

nb201 = pytest.importorskip("fastnas.spaces.nb201")

ARCH = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
KW = dict(epochs=3, batch_size=16, lr=0.05, lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0,
          augment=True, fill=(0.1, 0.2, 0.3), seed=3)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def setup():
    space = nb201.NB201(C=4, N=1, num_classes=10, in_channels=3, resolution=8)
    g = torch.Generator().manual_seed(1)
    train = (torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    test = (torch.randn(30, 3, 8, 8, generator=g), torch.randint(0, 10, (30,), generator=g))
    return space, space.parse(ARCH), train, test


def _reference(space, arch, train, test, *, epochs, batch_size, lr, lr_min, momentum, weight_decay, grad_clip,
               augment, fill, seed):
    """Retraining as fastnas 0.1 wrote it out (its own loop): the values the one loop must reproduce."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "retrain-init"))
        model = space.build(arch)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=lr_min)
    losses, accs = [], []
    for epoch in range(epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, f"retrain-epoch-{epoch}"))
            for xb, yb in Batches(*train, batch_size, seed=derive_seed(seed, "retrain-batches"), epoch=epoch,
                                  augment=augment, fill=fill):
                opt.zero_grad(set_to_none=True)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                loss_sum += float(loss.detach()) * yb.shape[0]
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += yb.shape[0]
        sched.step()
        losses.append(loss_sum / seen)
        accs.append(correct / seen)
    model.eval()
    with torch.no_grad():
        logits = model(test[0])
    acc = int((logits.argmax(1) == test[1]).sum()) / test[1].shape[0]
    return model, losses, accs, acc


@pytest.mark.parametrize("augment", [False, True])
def test_retrain_equals_the_plain_loop(setup, augment):
    space, arch, train, test = setup
    kw = {**KW, "augment": augment}
    _, losses, accs, acc = _reference(space, arch, train, test, **kw)
    events = []
    out = retrain(space, arch, train, test, **kw, progress=lambda e, i: events.append(e))
    assert out["epoch_loss"] == losses and out["epoch_accuracy"] == accs
    assert out["test_accuracy"] == acc and out["epochs"] == 3
    assert out["params"] == sum(p.numel() for p in space.build(arch).parameters())
    assert events == ["start", "epoch", "epoch", "epoch", "end"]


def test_retrain_resumes_bit_identical_after_a_kill(setup, tmp_path):
    space, arch, train, test = setup
    ref = retrain(space, arch, train, test, **KW)
    ckpt = tmp_path / "retrain.pt"

    def kill(event, info):
        if event == "epoch" and info["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        retrain(space, arch, train, test, **KW, checkpoint_path=ckpt, progress=kill)
    assert load_checkpoint(ckpt, expected_kind=RETRAIN_KIND)["epoch"] == 2
    torch.manual_seed(42)
    again = retrain(space, arch, train, test, **KW, checkpoint_path=ckpt)
    assert again == ref
    with pytest.raises(ValueError, match="belongs to another retraining"):
        retrain(space, arch, train, test, **{**KW, "lr": 0.01}, checkpoint_path=ckpt)


def test_retrain_checks_epochs(setup):
    space, arch, train, test = setup
    with pytest.raises(ValueError, match="epochs=0: expected an integer >= 1"):
        retrain(space, arch, train, test, **{**KW, "epochs": 0})


def test_evaluate_matches_one_pass(setup):
    space, arch, _, (x, y) = setup
    torch.manual_seed(0)
    model = space.build(arch)
    acc, loss = evaluate(model, x, y, batch_size=7)
    with torch.no_grad():
        logits = model.eval()(x)
    assert acc == int((logits.argmax(1) == y).sum()) / 30
    assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)


def test_derived_seed_is_derive_seed():
    assert derived_seed(5, "retrain-init") == derive_seed(5, "retrain-init")
