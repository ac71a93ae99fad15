"""Supernet training with each sampler: the fair step against hand-summed gradients, resume after a kill,
bf16 autocast and channels-last, and the checkpoint fingerprint of the new settings."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fastnas.spaces import NB201
from fastnas.train import (SAMPLERS, FairSampler, MultiPath, TrainConfig, load_checkpoint, train,
                           train_supernet)
from fastnas.train.loop import StepResult


class Killed(Exception):
    pass


def _nb201(seed=0):
    torch.manual_seed(seed)
    space = NB201(C=4, N=1, resolution=8)
    return space, space.supernet()


def _data(n=32, seed=0):
    """Images whose class (of 3) is where a bright square sits: learnable by a tiny network."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    for i in range(n):
        r = 2 * int(y[i])
        x[i, :, r:r + 3, r:r + 3] += 1.5
    return x, y


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fair_step_sums_the_path_gradients_and_steps_once():
    space, net = _nb201()
    x, y = _data(16)
    paths = FairSampler(space, seed=2).sample(0)
    lr, wd, mom = 0.1, 0.01, 0.9
    # Reference: each path's gradient alone (on a copy, train mode), summed; then SGD by hand.
    total = {}
    losses = []
    for arch in paths:
        m = copy.deepcopy(net)
        loss = F.cross_entropy(m(x, arch), y)
        loss.backward()
        losses.append(float(loss.detach()))
        for n, p in m.named_parameters():
            if p.grad is not None:
                total[n] = total[n] + p.grad if n in total else p.grad
    # A parameter no path's backward reaches (an op feeding a node nothing reads) has no gradient: SGD
    # skips it (no weight decay), as in the single-path step.
    expected = {n: p.detach() - lr * (total[n] + wd * p.detach()) if n in total else p.detach().clone()
                for n, p in net.named_parameters()}
    assert len(total) > len(expected) // 2

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=mom, weight_decay=wd)
    res = MultiPath().step(net, paths, x, y, opt)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-6, msg=n)
        assert (n in total) == ("momentum_buffer" in opt.state.get(p, {})), n
    assert isinstance(res, StepResult) and float(res.loss) == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_multi_path_skips_parameters_on_no_path():
    space, net = _nb201()
    x, y = _data(16)
    a = ("nor_conv_3x3",) * 6
    b = ("skip_connect",) * 6  # neither uses nor_conv_1x1
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    MultiPath().step(net, (a, b), x, y, opt, grad_clip=1.0)
    for n, p in net.named_parameters():
        if ".nor_conv_1x1." in n:
            assert torch.equal(p.detach(), before[n]) and p not in opt.state, n
        elif ".nor_conv_3x3." in n:
            assert not torch.equal(p.detach(), before[n]), n


def _kill_at(epoch, step):
    def progress(event, info):
        if event == "step" and info["epoch"] == epoch and info["step"] == step:
            raise Killed
    return progress


_NB201_SAMPLERS = [name for name in SAMPLERS if name != "sandwich"]  # sandwich: tests/train/test_sandwich.py


@pytest.mark.parametrize("sampler, speed", [(name, {}) for name in _NB201_SAMPLERS] + [
    ("per-cell", {"precision": "bf16", "channels_last": True})], ids=_NB201_SAMPLERS + ["per-cell-bf16-cl"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, sampler, speed):
    x, y = _data(32)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, sampler=sampler, seed=1, **speed)
    space, ref = _nb201()
    archs = []
    ref_res = train_supernet(ref, space, x, y, cfg,
                             progress=lambda e, i: archs.append(i["arch"]) if e == "step" else None)
    ckpt = tmp_path / "supernet.pt"
    space, net = _nb201()
    with pytest.raises(Killed):
        train_supernet(net, space, x, y, cfg, checkpoint_path=ckpt, progress=_kill_at(epoch=2, step=1))
    assert load_checkpoint(ckpt)["epoch"] == 2
    space, net = _nb201(seed=9)  # "new process": other initial weights, other global RNG
    torch.manual_seed(123)
    resumed = []
    res = train_supernet(net, space, x, y, cfg, checkpoint_path=ckpt,
                         progress=lambda e, i: resumed.append(i["arch"]) if e == "step" else None)
    _same(ref.state_dict(), net.state_dict())
    assert res.epoch_loss == ref_res.epoch_loss and res.resumed_from_epoch == 2
    assert resumed == archs[4:]  # the last epoch's choices again, step for step


def test_another_sampler_does_not_resume_the_checkpoint(tmp_path):
    x, y = _data(32)
    ckpt = tmp_path / "supernet.pt"
    space, net = _nb201()
    train_supernet(net, space, x, y, TrainConfig(epochs=1, batch_size=16), checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="sampler: checkpoint 'uniform' vs now 'fair'"):
        train_supernet(net, space, x, y, TrainConfig(epochs=1, batch_size=16, sampler="fair"), checkpoint_path=ckpt)


def test_new_fields_enter_the_fingerprint_only_off_their_defaults():
    base = TrainConfig(epochs=3)
    later = ("sampler", "precision", "channels_last", "sync_bn")
    assert set(later).isdisjoint(base.identity())
    assert {k: v for k, v in base.to_dict().items() if k not in later} == base.identity()
    assert TrainConfig(epochs=3, sync_bn=False).identity()["sync_bn"] is False
    assert TrainConfig(epochs=3, sampler="per-cell", precision="bf16", channels_last=True).identity()[
        "sampler"] == "per-cell"


def _train(cfg, dtypes=None, layouts=None):
    space, net = _nb201()
    x, y = _data(64)
    conv = net.cells[0].edges[3]["nor_conv_3x3"][1]
    hooks = []
    if dtypes is not None:
        hooks.append(conv.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype)))
    if layouts is not None:
        hooks.append(net.stem.register_forward_pre_hook(
            lambda m, i: layouts.add(i[0].is_contiguous(memory_format=torch.channels_last))))
    res = train_supernet(net, space, x, y, cfg)
    for h in hooks:
        h.remove()
    return net, res


def test_bf16_trains_under_autocast_and_its_loss_decreases_like_fp32():
    kw = dict(epochs=10, batch_size=16, lr=0.05, lr_min=0.01, seed=0)
    dtypes: set = set()
    _, fp32 = _train(TrainConfig(**kw), dtypes)
    assert dtypes == {torch.float32}
    dtypes.clear()
    net, bf16 = _train(TrainConfig(**kw, precision="bf16"), dtypes)
    assert torch.bfloat16 in dtypes  # the convolutions ran in bf16
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay fp32
    first, last = bf16.epoch_loss[0], bf16.epoch_loss[-1]
    assert last < 0.6 * first, bf16.epoch_loss
    assert fp32.epoch_loss[-1] < 0.6 * fp32.epoch_loss[0], fp32.epoch_loss
    assert abs(last - fp32.epoch_loss[-1]) < 0.25 * fp32.epoch_loss[0], (bf16.epoch_loss, fp32.epoch_loss)


def test_channels_last_trains_the_same_weights_and_ends_contiguous():
    kw = dict(epochs=2, batch_size=16, lr=0.05, seed=0)
    ref, ref_res = _train(TrainConfig(**kw))
    layouts: set = set()
    net, res = _train(TrainConfig(**kw, channels_last=True), layouts=layouts)
    assert layouts == {True}
    for (n, a), (_, b) in zip(ref.named_parameters(), net.named_parameters()):
        assert b.is_contiguous(), n
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=n)
    assert res.epoch_loss == pytest.approx(ref_res.epoch_loss, rel=1e-5)


class _OldStrategy:
    def step(self, model, choice, x, y, optimizer, *, grad_clip=0.0, label_smoothing=0.0):
        raise AssertionError("not reached")


def test_a_strategy_without_precision_is_refused_for_bf16():
    space, net = _nb201()
    x, y = _data(16)
    with pytest.raises(ValueError, match="precision='bf16': strategy _OldStrategy.step takes no precision"):
        train(net, _OldStrategy(), FairSampler(space), lambda e: [(x, y)], TrainConfig(epochs=1, precision="bf16"))
