"""The one training loop: plug points, bit-identity with hand-written loops, checkpoints and resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastnas.data import Batches
from fastnas.seeds import derive_seed
from fastnas.train import (Checkpointing, FixedSampler, SinglePath, Standalone, StepResult, TrainConfig,
                           UniformSampler, load_checkpoint, save_checkpoint, train)

from spos_toy import make_data, make_toy


class Killed(Exception):
    pass


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


CFG = TrainConfig(epochs=3, batch_size=16, lr=0.1, lr_min=0.01, momentum=0.9, nesterov=True, weight_decay=1e-2,
                  grad_clip=0.5, label_smoothing=0.1, seed=4)


def _batches(x, y, cfg):
    return lambda epoch: Batches(x, y, cfg.batch_size, seed=cfg.seed, epoch=epoch)


def _reference_standalone(model, x, y, cfg):
    """The plain PyTorch loop the docs describe, written out: what train(Standalone) must equal bit for bit."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
    losses = []
    model.train()
    for epoch in range(cfg.epochs):
        total, seen = 0.0, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "torch", epoch))
            for xb, yb in Batches(x, y, cfg.batch_size, seed=cfg.seed, epoch=epoch):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                total += float(loss.detach()) * yb.shape[0]
                seen += yb.shape[0]
        sched.step()
        losses.append(total / seen)
    return losses


def test_standalone_equals_the_plain_pytorch_loop():
    x, y = make_data(40)
    ref = _net()
    ref_losses = _reference_standalone(ref, x, y, CFG)
    net = _net()
    res = train(net, Standalone(), FixedSampler(), _batches(x, y, CFG), CFG)
    _same(ref.state_dict(), net.state_dict())
    assert res.epoch_loss == ref_losses and res.steps == 9
    assert res.epoch_lr[0] == CFG.lr and res.initial_state == {}


def test_single_path_with_uniform_sampler_trains_only_sampled_paths():
    net, space = make_toy(choices=2)  # op 2 of each layer is never sampled
    x, y = make_data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    archs = []
    train(net, SinglePath(), UniformSampler(space, seed=3), _batches(x, y, CFG), CFG,
          progress=lambda e, i: archs.append(i["arch"]) if e == "step" else None)
    assert archs == [space.sample(__import__("random").Random(derive_seed(3, "arch", s))) for s in range(12)]
    for k, v in net.state_dict().items():
        if k.startswith(("layer1.2.", "layer2.2.")):
            assert torch.equal(v, before[k]), k


class _TwoPaths:
    """A sandwich-shaped plug: two paths per step, gradients accumulated, one optimizer step."""

    def step(self, model, archs, x, y, optimizer, *, grad_clip=0.0, label_smoothing=0.0):
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for arch in archs:
            loss = F.cross_entropy(model(x, arch), y)
            loss.backward()
            losses.append(loss.detach())
        on = set().union(*(model.path_parameters(a) for a in archs))
        for name, p in model.named_parameters():
            if name not in on:
                p.grad = None
        optimizer.step()
        return StepResult(losses[0], torch.zeros((), dtype=torch.int64), None)


class _Pairs:
    def sample(self, step):
        return ((0, 0), (1, 1))


def test_a_multi_path_strategy_plugs_in():
    net, _ = make_toy()
    x, y = make_data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    res = train(net, _TwoPaths(), _Pairs(), _batches(x, y, CFG), CFG,
                progress=lambda e, i: seen.append(i["arch"]) if e == "step" else None)
    assert res.steps == 12 and seen == [((0, 0), (1, 1))] * 12
    after = net.state_dict()
    for k in after:
        moved = not torch.equal(after[k], before[k])
        if k.startswith(("layer1.2.", "layer2.2.")):
            assert not moved, k
        elif k.endswith("weight") and not k.startswith("layer1.2"):
            assert moved, k


def test_plugs_are_checked():
    x, y = make_data()
    with pytest.raises(ValueError, match="strategy: object has no step"):
        train(_net(), object(), FixedSampler(), _batches(x, y, CFG), CFG)
    with pytest.raises(ValueError, match="sampler: int has no sample"):
        train(_net(), Standalone(), 3, _batches(x, y, CFG), CFG)
    with pytest.raises(ValueError, match="config: expected a TrainConfig"):
        train(_net(), Standalone(), FixedSampler(), _batches(x, y, CFG), {"epochs": 1})
    with pytest.raises(ValueError, match="epoch 0 produced no batches"):
        train(_net(), Standalone(), FixedSampler(), lambda e: [], CFG)


def _ckpt(path, fp="abc"):
    return Checkpointing(path=path, kind="test_loop", fingerprint=fp, meta={"note": "x"},
                         mismatch=lambda payload: f"other run: {payload['fingerprint']}")


@pytest.mark.parametrize("kill_epoch, kill_step", [(0, None), (1, 1), (2, 0)])
def test_resume_after_a_kill_is_bit_identical(tmp_path, kill_epoch, kill_step):
    x, y = make_data(40)
    ref = _net()
    ref_res = train(ref, Standalone(), FixedSampler(), _batches(x, y, CFG), CFG)

    def kill(event, info):
        if info.get("epoch") == kill_epoch and (
                (kill_step is None and event == "epoch") or (event == "step" and info["step"] == kill_step)):
            raise Killed

    path = tmp_path / "c.pt"
    with pytest.raises(Killed):
        train(_net(), Standalone(), FixedSampler(), _batches(x, y, CFG), CFG, checkpoint=_ckpt(path), progress=kill)
    payload = load_checkpoint(path, expected_kind="test_loop")
    assert payload["epoch"] == (kill_epoch + 1 if kill_step is None else kill_epoch) and payload["note"] == "x"

    torch.manual_seed(999)  # another global RNG state, other initial weights: neither may matter
    starts = []
    net = _net(seed=7)
    res = train(net, Standalone(), FixedSampler(), _batches(x, y, CFG), CFG, checkpoint=_ckpt(path),
                on_start=starts.append)
    _same(ref.state_dict(), net.state_dict())
    assert res.epoch_loss == ref_res.epoch_loss and res.epoch_lr == ref_res.epoch_lr and res.steps == ref_res.steps
    assert res.resumed_from_epoch == payload["epoch"] and starts[0]["epoch"] == payload["epoch"]


def test_foreign_checkpoint_and_fresh_start(tmp_path):
    x, y = make_data()
    path = tmp_path / "c.pt"
    starts = []
    train(_net(), Standalone(), FixedSampler(), _batches(x, y, CFG), CFG, checkpoint=_ckpt(path), on_start=starts.append)
    assert starts == [None]
    with pytest.raises(ValueError, match="other run: abc"):
        train(_net(), Standalone(), FixedSampler(), _batches(x, y, CFG), CFG, checkpoint=_ckpt(path, fp="zzz"))
    fresh = Checkpointing(path=path, kind="test_loop", fingerprint="zzz", resume=False)
    res = train(_net(), Standalone(), FixedSampler(), _batches(x, y, CFG), CFG, checkpoint=fresh)
    assert res.resumed_from_epoch == 0 and load_checkpoint(path)["fingerprint"] == "zzz"


def test_resumes_a_checkpoint_without_learning_rates(tmp_path):
    # Retraining checkpoints of fastnas 0.1 kept no "lr" history and no step count.
    x, y = make_data(40)
    path = tmp_path / "c.pt"
    with pytest.raises(Killed):
        train(_net(), Standalone(), FixedSampler(), _batches(x, y, CFG), CFG, checkpoint=_ckpt(path),
              progress=lambda e, i: (_ for _ in ()).throw(Killed) if e == "epoch" and i["epoch"] == 1 else None)
    payload = load_checkpoint(path)
    del payload["history"]["lr"], payload["step"]
    save_checkpoint(path, payload)
    ref = _net()
    ref_res = train(ref, Standalone(), FixedSampler(), _batches(x, y, CFG), CFG)
    net = _net()
    res = train(net, Standalone(), FixedSampler(), _batches(x, y, CFG), CFG, checkpoint=_ckpt(path))
    _same(ref.state_dict(), net.state_dict())
    assert res.epoch_loss == ref_res.epoch_loss
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(res.epoch_lr, ref_res.epoch_lr))


def test_training_mode_and_global_rng_are_restored():
    x, y = make_data()
    net = _net().eval()
    state = torch.get_rng_state()
    train(net, Standalone(), FixedSampler(), _batches(x, y, CFG), CFG)
    assert not net.training and torch.equal(state, torch.get_rng_state())
