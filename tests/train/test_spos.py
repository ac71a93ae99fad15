"""Semantics of the SPOS trainer: path-only updates, determinism, schedule, clipping."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fastnas.train import TrainConfig, cosine_lr, train_step, train_supernet

from spos_toy import make_data, make_toy


def _snapshot(net, opt, names):
    params = dict(net.named_parameters())
    weights = {n: params[n].detach().clone() for n in names}
    bufs = {}
    for n in names:
        st = opt.state.get(params[n], {})
        bufs[n] = st["momentum_buffer"].clone() if st.get("momentum_buffer") is not None else None
    return weights, bufs


@pytest.mark.parametrize("foreach", [False, True])
def test_off_path_parameters_get_no_update(foreach):
    net, _ = make_toy()
    x, y = make_data(16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1, foreach=foreach)
    # Warm up so that every op has a momentum buffer.
    for arch in [(0, 0), (1, 1), (2, 2)]:
        train_step(net, arch, x, y, opt, grad_clip=5.0)
    arch = (0, 1)
    on = set(net.path_parameters(arch))
    off = [n for n, _ in net.named_parameters() if n not in on]
    assert off and on
    w_off, b_off = _snapshot(net, opt, off)
    w_on, b_on = _snapshot(net, opt, sorted(on))
    assert all(b is not None for b in b_off.values())

    train_step(net, arch, x, y, opt, grad_clip=5.0)

    w_off2, b_off2 = _snapshot(net, opt, off)
    w_on2, b_on2 = _snapshot(net, opt, sorted(on))
    for n in off:
        assert torch.equal(w_off[n], w_off2[n]), n
        assert torch.equal(b_off[n], b_off2[n]), n
    for n in on:
        assert not torch.equal(w_on[n], w_on2[n]), n
        assert not torch.equal(b_on[n], b_on2[n]), n


def test_never_sampled_op_keeps_its_initial_weights():
    net, space = make_toy(choices=2)  # op 2 of each layer is never sampled
    x, y = make_data()
    res = train_supernet(net, space, x, y, TrainConfig(epochs=2, batch_size=16, weight_decay=0.1))
    state = net.state_dict()
    for k, v in state.items():
        if k.startswith(("layer1.2.", "layer2.2.")):
            assert torch.equal(v, res.initial_state[k]), k
        elif k.startswith(("layer1.0.weight", "layer2.1.weight", "head.weight")):
            assert not torch.equal(v, res.initial_state[k]), k


def test_only_path_gradients_reach_the_optimizer():
    net, space = make_toy()
    x, y = make_data()
    seen, archs = [], []
    names = {p: n for n, p in net.named_parameters()}

    def pre_hook(opt, args, kwargs):
        seen.append({names[p] for g in opt.param_groups for p in g["params"] if p.grad is not None})

    def progress(event, info):
        if event == "step":
            archs.append(info["arch"])

    handle = register_optimizer_step_pre_hook(pre_hook)
    try:
        res = train_supernet(net, space, x, y, TrainConfig(epochs=2, batch_size=16), progress=progress)
    finally:
        handle.remove()
    assert res.steps == 8 == len(seen) == len(archs)
    assert len(set(archs)) > 1
    for got, arch in zip(seen, archs):
        assert got == set(net.path_parameters(arch))


def test_gradient_clipping_bounds_the_path_norm():
    net, space = make_toy()
    x, y = make_data()
    clip = 1e-3
    norms = []

    def pre_hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(pre_hook)
    try:
        train_supernet(net, space, x, y, TrainConfig(epochs=1, batch_size=16, grad_clip=clip))
    finally:
        handle.remove()
    assert norms and max(norms) <= clip * (1 + 1e-5)

    # train_step reports the norm before clipping, which did exceed the bound.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    r = train_step(net, (0, 0), x, y, opt, grad_clip=clip)
    assert float(r.grad_norm) > clip
    assert train_step(net, (0, 0), x, y, opt, grad_clip=0.0).grad_norm is None


def _run(init_seed=0, **cfg):
    net, space = make_toy(init_seed)
    x, y = make_data()
    res = train_supernet(net, space, x, y, TrainConfig(**{"epochs": 2, "batch_size": 16, **cfg}))
    return net.state_dict(), res


def test_same_seed_is_bit_identical():
    a, ra = _run(nesterov=True)
    b, rb = _run(nesterov=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ra.epoch_loss == rb.epoch_loss and ra.epoch_accuracy == rb.epoch_accuracy
    c, _ = _run(nesterov=True, seed=1)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_global_rng_is_left_alone():
    net, space = make_toy()
    x, y = make_data()
    before = torch.get_rng_state()
    train_supernet(net, space, x, y, TrainConfig(epochs=1, batch_size=16))
    assert torch.equal(before, torch.get_rng_state())


def test_cosine_schedule_matches_closed_form():
    net, space = make_toy()
    x, y = make_data(16)
    step_lrs = {}

    def progress(event, info):
        if event == "step":
            step_lrs.setdefault(info["epoch"], set()).add(info["lr"])

    cfg = TrainConfig(epochs=6, batch_size=8, lr=0.1, lr_min=0.002)
    res = train_supernet(net, space, x, y, cfg, progress=progress)
    assert res.epoch_lr[0] == cfg.lr
    for e, lr in enumerate(res.epoch_lr):
        assert lr == pytest.approx(cosine_lr(e, lr=cfg.lr, lr_min=cfg.lr_min, epochs=cfg.epochs), rel=1e-12)
        assert step_lrs[e] == {lr}  # constant within an epoch
    assert cosine_lr(cfg.epochs, lr=0.1, lr_min=0.002, epochs=cfg.epochs) == pytest.approx(0.002)
    assert math.isclose(res.epoch_lr[3], 0.002 + 0.098 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_result_and_progress_events():
    net, space = make_toy()
    x, y = make_data(40)
    events = []
    res = train_supernet(net, space, x, y, TrainConfig(epochs=2, batch_size=16),
                         progress=lambda e, i: events.append(e))
    assert events[0] == "start" and events[-1] == "end"
    assert events.count("step") == 6 and events.count("epoch") == 2  # ceil(40 / 16) = 3 steps per epoch
    assert res.steps == 6 and len(res.epoch_loss) == len(res.epoch_accuracy) == len(res.epoch_time) == 2
    assert all(0 <= a <= 1 for a in res.epoch_accuracy) and all(l > 0 for l in res.epoch_loss)
    assert set(res.initial_state) == set(net.state_dict())
    assert all(v.device.type == "cpu" for v in res.initial_state.values())
    assert "initial_state" not in res.to_dict()


def test_drop_last():
    net, space = make_toy()
    x, y = make_data(40)
    res = train_supernet(net, space, x, y, TrainConfig(epochs=1, batch_size=16, drop_last=True))
    assert res.steps == 2


def test_batch_fn_overrides_batching():
    net, space = make_toy()
    x, y = make_data(32)
    calls = []

    def batch_fn(epoch):
        calls.append(epoch)
        return [(x[:8], y[:8]), (x[8:16], y[8:16])]

    res = train_supernet(net, space, None, None, TrainConfig(epochs=2, batch_size=999), batch_fn=batch_fn)
    assert calls == [0, 1] and res.steps == 4


@pytest.mark.parametrize("bad, needle", [
    ({"train_y": torch.zeros(64)}, "train_y: expected an int64"),
    ({"train_x": torch.zeros(64, 2, 5, 5, dtype=torch.int64)}, "train_x: expected a floating-point"),
    ({"train_y": torch.zeros(10, dtype=torch.int64)}, "64 samples but train_y has 10"),
])
def test_bad_data_raises(bad, needle):
    net, space = make_toy()
    x, y = make_data()
    kw = {"train_x": x, "train_y": y, **bad}
    with pytest.raises(ValueError, match=needle):
        train_supernet(net, space, kw["train_x"], kw["train_y"], TrainConfig(epochs=1))
