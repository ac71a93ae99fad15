"""The family trainer: the sandwich sampler, one sandwich step against a hand computation, in-place
distillation against a hand-written KL, untouched parameters and elements, resume after a kill, the
refusal for a space that is not a family, and per-member BatchNorm recalibration."""

from __future__ import annotations

import copy
import math
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastnas.seeds import derive_seed
from fastnas.spaces import NB201, NB201Size
from fastnas.train import (Sandwich, SandwichSampler, TrainConfig, distillation_loss, load_checkpoint,
                           recalibrate_member, supernet_plan, train_family, train_supernet)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces"))
from _nested_space import NestedSpace  # noqa: E402


class Killed(Exception):
    pass


def _nested(seed=0):
    torch.manual_seed(seed)
    space = NestedSpace(widths=(2, 4), cells=2, num_classes=3, resolution=8)
    return space, space.supernet()


def _size(seed=0):
    torch.manual_seed(seed)
    space = NB201Size(candidates=(2, 4), num_classes=3, resolution=8)
    return space, space.supernet()


MAKERS = {"nested": _nested, "nb201_size": _size}


def _data(n=32, seed=0):
    """Images whose class (of 3) is where a bright square sits."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    for i in range(n):
        r = 2 * int(y[i])
        x[i, :, r:r + 3, r:r + 3] += 1.5
    return x, y


# ---- sampler ------------------------------------------------------------------------------------------

def test_sampler_is_largest_smallest_and_k_random_members_a_function_of_seed_and_step():
    space, _ = _size()
    s = SandwichSampler(space, k=3, seed=5)
    for step in (0, 1, 17):
        choice = s.sample(step)
        rng = random.Random(derive_seed(5, "arch-sandwich", step))
        assert choice == (space.largest(), space.smallest(), *(space.sample(rng) for _ in range(3)))
    assert [s.sample(t) for t in (3, 2, 1)] == [SandwichSampler(space, 3, 5).sample(t) for t in (3, 2, 1)]
    assert s.sample(0) != s.sample(1)
    assert SandwichSampler(space, k=0).sample(4) == (space.largest(), space.smallest())
    sampler, strategy = supernet_plan("sandwich", space, 5, sandwich_k=3, distill=False, temperature=2.0)
    assert isinstance(sampler, SandwichSampler) and sampler.k == 3 and sampler.sample(1) == s.sample(1)
    assert isinstance(strategy, Sandwich) and not strategy.distill and strategy.temperature == 2.0


# ---- one step -------------------------------------------------------------------------------------------

def _hand_step(net, choice, x, y, *, distill, temperature, lr, wd):
    """The sum of the members' loss gradients, each on its own copy, then one SGD step by hand (first step:
    the momentum buffer is the gradient plus weight decay) on the elements some member uses."""
    params = dict(net.named_parameters())
    used = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in params.items()}
    for arch in choice:
        for e in net.path_parameters(arch):
            if isinstance(e, str):
                used[e][...] = True
            else:
                used[e.name][tuple(slice(a, b) for a, b in e.index)] = True
    total = {}
    teacher = None
    for k, arch in enumerate(choice):
        m = copy.deepcopy(net)
        logits = m(x, arch)
        if k == 0:
            teacher = logits.detach()
        if k == 0 or not distill:
            loss = F.cross_entropy(logits, y)
        else:
            p = F.softmax(teacher / temperature, dim=1)
            q = F.log_softmax(logits / temperature, dim=1)
            loss = temperature ** 2 * (p * (p.log() - q)).sum(dim=1).mean()
        loss.backward()
        for n, t in m.named_parameters():
            if t.grad is not None:
                total[n] = total[n] + t.grad if n in total else t.grad.clone()
    return {n: torch.where(used[n], p.detach().add(total[n].add(p.detach(), alpha=wd), alpha=-lr), p.detach()) if n in total
            else p.detach().clone() for n, p in params.items()}


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("distill", [False, True])
def test_one_step_is_the_sum_of_the_member_gradients_and_one_sgd_step(name, distill):
    space, net = MAKERS[name]()
    x, y = _data(16)
    choice = SandwichSampler(space, k=2, seed=1).sample(0)
    lr, wd, T = 0.1, 0.01, 2.0
    expected = _hand_step(net, choice, x, y, distill=distill, temperature=T, lr=lr, wd=wd)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    res = Sandwich(distill=distill, temperature=T).step(net, choice, x, y, opt)
    for n, p in net.named_parameters():
        if distill:  # the hand-written KL rounds differently from F.kl_div
            torch.testing.assert_close(p.detach(), expected[n], rtol=1e-6, atol=1e-7, msg=n)
        else:  # the same operations in the same order: bit-identical
            assert torch.equal(p.detach(), expected[n]), n
    assert res.loss.shape == () and math.isfinite(float(res.loss)) and 0 <= int(res.correct) <= 16


def test_reported_values_are_the_largest_members():
    space, net = _nested()
    x, y = _data(16)
    choice = SandwichSampler(space, k=1, seed=0).sample(0)
    with torch.no_grad():
        ref = copy.deepcopy(net)(x, choice[0])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    res = Sandwich().step(net, choice, x, y, opt)
    assert float(res.loss) == pytest.approx(float(F.cross_entropy(ref, y)), rel=1e-6)
    assert int(res.correct) == int((ref.argmax(1) == y).sum())


# ---- distillation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1.0, 2.5])
def test_distillation_loss_is_t_squared_times_the_kl_of_the_softened_outputs(T):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    got = distillation_loss(s, t, T)
    ps = [[math.exp(v / T) for v in row] for row in t.tolist()]
    qs = [[math.exp(v / T) for v in row] for row in s.tolist()]
    kl = 0.0
    for p_row, q_row in zip(ps, qs):
        zp, zq = sum(p_row), sum(q_row)
        kl += sum(p / zp * (math.log(p / zp) - math.log(q / zq)) for p, q in zip(p_row, q_row))
    assert float(got.detach()) == pytest.approx(T * T * kl / 5, rel=1e-12)
    got.backward()
    assert t.grad is None and s.grad is not None  # the teacher is detached
    assert float(distillation_loss(t, t, T).detach()) == pytest.approx(0.0, abs=1e-12)


def test_bad_settings_are_refused():
    space, net = _nested()
    x, y = _data(16)
    with pytest.raises(ValueError, match="temperature=0"):
        Sandwich(temperature=0)
    with pytest.raises(ValueError, match="distill='yes'"):
        Sandwich(distill="yes")
    with pytest.raises(ValueError, match="non-empty tuple"):
        Sandwich().step(net, (), x, y, torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="expected the same"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# ---- what no member used stays untouched -------------------------------------------------------------------

def test_parameters_no_member_uses_keep_their_weights_and_optimizer_state():
    torch.manual_seed(0)
    net = NB201(C=4, N=1, resolution=8).supernet()
    x, y = _data(16)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    Sandwich().step(net, (("nor_conv_1x1",) * 6,), x, y, opt)  # momentum buffers on the 1x1 convs
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    bufs = {n: opt.state[p]["momentum_buffer"].clone() for n, p in net.named_parameters() if p in opt.state}
    choice = (("nor_conv_3x3",) * 6, ("skip_connect",) * 6)  # neither uses nor_conv_1x1
    Sandwich().step(net, choice, x, y, opt, grad_clip=1.0)
    one_by_one = [n for n, _ in net.named_parameters() if ".nor_conv_1x1." in n]
    assert one_by_one
    for n, p in net.named_parameters():
        if ".nor_conv_1x1." in n:
            assert torch.equal(p.detach(), before[n]), n
            assert torch.equal(opt.state[p]["momentum_buffer"], bufs[n]), n
        elif ".nor_conv_3x3." in n:
            assert not torch.equal(p.detach(), before[n]), n


def test_elements_outside_every_members_slice_keep_their_weights_and_momentum():
    # Cell 2 of the size space has a 1x1 projection when its width differs from the residual block's.
    space, net = _size()
    name = "cells.2.edges.3.0.weight"  # the skip_connect~0 projection, (4, 4, 1, 1) in the supernet
    p1 = (4, 2, 4, 4, 4)  # projection [:4, :2]
    p2 = (4, 4, 2, 4, 4)  # projection [:2, :4]
    assert [e for e in net.path_parameters(p1) if getattr(e, "name", e) == name][0].index[:2] == ((0, 4), (0, 2))
    x, y = _data(16)
    w = dict(net.named_parameters())[name]
    initial = w.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    Sandwich().step(net, (space.largest(), p1), x, y, opt)
    before, buf = w.detach().clone(), opt.state[w]["momentum_buffer"].clone()
    # after the first step: only [:4, :2] moved (no weight decay on the rest), the rest's momentum is zero
    assert torch.equal(before[:, 2:], initial[:, 2:]) and not torch.equal(before[:, :2], initial[:, :2])
    assert torch.count_nonzero(buf[:, :2]) == 8 and torch.count_nonzero(buf[:, 2:]) == 0
    Sandwich().step(net, (space.largest(), p2), x, y, opt)
    after, buf2 = w.detach(), opt.state[w]["momentum_buffer"]
    used = torch.zeros(4, 4, dtype=torch.bool)
    used[:2, :4] = True
    used = used[:, :, None, None]
    assert torch.equal(after[~used], before[~used]) and torch.equal(buf2[~used], buf[~used])
    assert not torch.equal(after[used], before[used])


# ---- resume ------------------------------------------------------------------------------------------------

def _kill_at(epoch, step):
    def progress(event, info):
        if event == "step" and info["epoch"] == epoch and info["step"] == step:
            raise Killed
    return progress


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, name):
    x, y = _data(32)
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=1, weight_decay=1e-3)
    space, ref = MAKERS[name]()
    choices = []
    ref_res = train_family(ref, space, x, y, cfg, sandwich_k=2, temperature=2.0,
                           progress=lambda e, i: choices.append(i["arch"]) if e == "step" else None)
    ckpt = tmp_path / "supernet.pt"
    space, net = MAKERS[name]()
    with pytest.raises(Killed):
        train_family(net, space, x, y, cfg, sandwich_k=2, temperature=2.0, checkpoint_path=ckpt,
                     progress=_kill_at(epoch=2, step=1))
    payload = load_checkpoint(ckpt)
    assert payload["epoch"] == 2 and payload["config"]["sampler"] == "sandwich"
    assert payload["sandwich"] == {"sandwich_k": 2, "distill": True, "temperature": 2.0}
    space, net = MAKERS[name](seed=9)  # "new process": other initial weights, other global RNG
    torch.manual_seed(123)
    resumed = []
    res = train_family(net, space, x, y, cfg, sandwich_k=2, temperature=2.0, checkpoint_path=ckpt,
                       progress=lambda e, i: resumed.append(i["arch"]) if e == "step" else None)
    a, b = ref.state_dict(), net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.epoch_loss == ref_res.epoch_loss and res.resumed_from_epoch == 2
    assert resumed == choices[4:]
    # other sandwich settings are another run
    with pytest.raises(ValueError, match="sandwich_k: checkpoint 2 vs now 3"):
        train_family(net, space, x, y, cfg, sandwich_k=3, temperature=2.0, checkpoint_path=ckpt)


def test_train_supernet_with_the_sandwich_sampler_is_train_family():
    x, y = _data(32)
    cfg = TrainConfig(epochs=1, batch_size=16, seed=2)
    space, a = _nested()
    ra = train_family(a, space, x, y, cfg)
    space, b = _nested()
    rb = train_supernet(b, space, x, y, TrainConfig(epochs=1, batch_size=16, seed=2, sampler="sandwich"))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert ra.epoch_loss == rb.epoch_loss
    with pytest.raises(ValueError, match="config.sampler='fair'"):
        train_family(a, space, x, y, TrainConfig(epochs=1, sampler="fair"))


# ---- refusals ----------------------------------------------------------------------------------------------

def test_a_space_without_largest_and_smallest_is_refused():
    space = NB201(C=4, N=1, resolution=8)
    with pytest.raises(ValueError, match=r"sampler='sandwich' needs a nested family space .*'nb201' has no "
                                         r"largest\(\), smallest\(\)"):
        SandwichSampler(space)
    x, y = _data(16)
    with pytest.raises(ValueError, match="needs a nested family space"):
        train_family(space.supernet(), space, x, y, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="sandwich_k=3: set for sampler='uniform'"):
        supernet_plan("uniform", space, 0, sandwich_k=3)
    with pytest.raises(ValueError, match="sandwich_k=-1"):
        SandwichSampler(_nested()[0], k=-1)


# ---- BatchNorm per member ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MAKERS))
def test_recalibrate_member_gives_the_members_own_statistics_and_leaves_the_supernet(name):
    space, net = MAKERS[name]()
    x, y = _data(32)
    train_family(net, space, x, y, TrainConfig(epochs=1, batch_size=16))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    arch = space.smallest()
    batches = [x[:16], x[16:]]
    member = recalibrate_member(net, arch, batches)
    assert not member.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    # the same statistics as recalibrating the supernet's shared ones in place, on the member's slice
    twin = copy.deepcopy(net)
    twin.recalibrate(arch, batches)
    with torch.no_grad():
        torch.testing.assert_close(member(x), twin(x, arch), rtol=1e-5, atol=1e-6)
    # and the plain mean of the per-batch statistics of the member's own forward (train mode)
    probe = copy.deepcopy(member).train()
    last = [m for m in probe.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    seen = []
    last.register_forward_pre_hook(lambda m, i: seen.append(i[0].mean(dim=(0, 2, 3))))
    with torch.no_grad():
        for b in batches:
            probe(b)
    mine = [m for m in member.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    torch.testing.assert_close(mine.running_mean, (seen[0] + seen[1]) / 2, rtol=1e-5, atol=1e-6)
