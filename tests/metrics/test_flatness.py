from __future__ import annotations

import io
import logging
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastnas
from fastnas.metrics import FlatnessConfig, MultiSigmaEvaluator, flatness, flatness_score, kendall_tau
from fastnas.metrics.flatness import PRESETS, supernet_flatness
from fastnas.ops.layout import ParamLayout
from fastnas.spaces.darts import DARTS, DARTS_V2
from fastnas.spaces.nb201 import NB201

ARCH = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "none", "nor_conv_3x3")


def _bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def _linear_data(n=32, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


# ---- the formula on hand-computed losses --------------------------------------------------------

def test_flatness_formula_on_hand_computed_losses():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = _linear_data()
    sigmas = (0.05, 0.2, 0.5)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    losses = []
    for i, s in enumerate(sigmas):  # independent noise: stream i, offsets from named_parameters order
        z = fastnas.noise(w.numel() + b.numel(), seed=7, stream=i)
        wp = w + s * z[:w.numel()].view_as(w)
        bp = b + s * z[w.numel():]
        losses.append(F.cross_entropy(x @ wp.T + bp, y).item())
    res = flatness(model, (x, y), sigmas, seed=7, alpha=0.5)
    assert res.losses == pytest.approx(losses, rel=1e-5)
    want = 1 / (abs(losses[1] - losses[0]) / 0.15 + abs(losses[2] - losses[1]) / 0.3 + 0.5 * losses[0] / 0.05 + 1e-5)
    assert res.score == pytest.approx(want, rel=1e-4)
    assert res.score == pytest.approx(flatness_score(res.losses, sigmas, alpha=0.5), rel=1e-12)
    assert res.sigmas == sigmas and not res.flagged and len(res.accuracies) == 3


def test_data_forms_agree_and_weights_bit_identical():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    model.train()
    model[1].eval()  # mixed modes must come back as they were
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 3, 8, 8, generator=g), torch.randint(0, 10, (30,), generator=g)
    before = _bytes(model)
    a = flatness(model, (x, y), [0.01, 0.1], samples=2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    b = flatness(model, loader, [0.01, 0.1], samples=2)
    c = flatness(model, [(x[:10], y[:10]), (x[10:], y[10:])], [0.01, 0.1], samples=2, batch_size=4)
    assert a.losses == pytest.approx(b.losses, rel=1e-5) and a.losses == pytest.approx(c.losses, rel=1e-5)
    assert a.report["folded_bn"] == 1
    assert _bytes(model) == before
    assert model.training and model[0].training and not model[1].training


def test_weights_bit_identical_when_criterion_raises():
    model = nn.Linear(5, 3)
    x, y = _linear_data()
    before = _bytes(model)
    calls = []

    def bad(logits, target):
        calls.append(1)
        if len(calls) == 2:  # fail at the second level, while perturbed
            raise RuntimeError("boom")
        return F.cross_entropy(logits, target)

    with pytest.raises(RuntimeError, match="boom"):
        flatness(model, (x, y), [0.1, 0.2], criterion=bad)
    assert _bytes(model) == before
    calls.clear()
    with pytest.raises(RuntimeError, match="boom"):
        flatness(model, (x, y), [0.1, 0.2, 0.3], criterion=bad, noise="cumulative")
    assert _bytes(model) == before


# ---- noise modes ------------------------------------------------------------------------------------

_SEEN: list = []


class _Recorder(nn.Module):
    """Zero weights; every forward records the (perturbed) weight, i.e. the noise itself."""

    def __init__(self, n=20000):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        _SEEN.append(self.w.detach().clone())
        return x @ torch.zeros(x.shape[1], 2) + self.w[:2]


@pytest.mark.parametrize("mode", ["independent", "cumulative", "shared"])
def test_noise_mode_statistics(mode):
    _SEEN.clear()
    sigmas = (0.1, 0.3, 0.4)
    flatness(_Recorder(), (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), sigmas, noise=mode, seed=3)
    d = torch.stack(_SEEN)  # (levels, n), one batch per level
    assert d.shape[0] == 3
    std = d.std(dim=1)
    corr = torch.corrcoef(d)
    if mode == "independent":
        assert std.tolist() == pytest.approx(sigmas, rel=0.03)
        assert corr[0, 1].abs() < 0.05 and corr[1, 2].abs() < 0.05
    elif mode == "cumulative":
        eff = [0.1, math.sqrt(0.1 ** 2 + 0.2 ** 2), math.sqrt(0.1 ** 2 + 0.2 ** 2 + 0.1 ** 2)]
        assert std.tolist() == pytest.approx(eff, rel=0.03)
        assert corr[0, 1] == pytest.approx(0.1 / eff[1], abs=0.05)  # shares the first increment
        assert corr[1, 2] == pytest.approx(eff[1] / eff[2], abs=0.05)
    else:
        assert torch.allclose(d[1] / sigmas[1], d[0] / sigmas[0], rtol=1e-5, atol=1e-6)
        assert torch.allclose(d[2] / sigmas[2], d[0] / sigmas[0], rtol=1e-5, atol=1e-6)


def test_samples_use_distinct_streams_and_are_averaged():
    _SEEN.clear()
    res = flatness(_Recorder(), (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), [0.1], samples=3)
    d = torch.stack(_SEEN)
    assert d.shape[0] == 3 and torch.corrcoef(d)[0, 1].abs() < 0.05
    assert len(res.sample_losses[0]) == 3
    assert res.losses[0] == pytest.approx(sum(res.sample_losses[0]) / 3)


# ---- supernet: path == whole supernet, scope, NaN ------------------------------------------------

def _nb201():
    torch.manual_seed(0)
    return NB201(C=4, N=1, resolution=8).supernet()


def _images(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("noise", ["independent", "cumulative", "shared"])
def test_path_perturbation_equals_whole_supernet(noise):
    sn = _nb201()
    x, y = _images()
    sigmas = (0.01, 0.05, 0.2)
    ev = MultiSigmaEvaluator(sn, x, y, sigmas=sigmas, noise=noise, seed=5, fold_bn=False, channels_last=False)
    got = ev.evaluate(ARCH).mean_losses
    assert ev.report()["path"] == "extracted"
    layout = ParamLayout.from_module(sn)
    sn.eval()
    want, prev, backups = [], 0.0, []
    with torch.no_grad():
        for i, s in enumerate(sigmas):
            if noise == "cumulative":
                backups.append(fastnas.perturb_(sn, s - prev, 5, i, layout=layout))
                prev = s
            else:
                backups.append(fastnas.perturb_(sn, s, 5, 0 if noise == "shared" else i, layout=layout))
            want.append(F.cross_entropy(sn(x, ARCH), y).item())
            if noise != "cumulative":
                fastnas.restore_(sn, backups.pop())
        if noise == "cumulative":
            fastnas.restore_(sn, backups[0])
    assert list(got) == pytest.approx(want, rel=1e-5)
    # the fast path (folded BN, channels-last) and the supernet path agree
    fast = MultiSigmaEvaluator(sn, x, y, sigmas=sigmas, noise=noise, seed=5).evaluate(ARCH).mean_losses
    slow = MultiSigmaEvaluator(sn, x, y, sigmas=sigmas, noise=noise, seed=5, extract=False).evaluate(ARCH).mean_losses
    assert list(fast) == pytest.approx(want, rel=1e-4) and list(slow) == pytest.approx(want, rel=1e-5)


def test_darts_path_equals_whole_supernet():
    torch.manual_seed(0)
    sn = DARTS(C=4, layers=3, resolution=8).supernet(C=4, layers=3)
    x, y = _images(16)
    ev = MultiSigmaEvaluator(sn, x, y, sigmas=(0.01, 0.1))
    got = ev.evaluate(DARTS_V2).mean_losses
    assert ev.report()["path"] == "extracted" and ev.report()["folded_bn"] > 0
    ref = MultiSigmaEvaluator(sn, x, y, sigmas=(0.01, 0.1), extract=False).evaluate(DARTS_V2).mean_losses
    assert list(got) == pytest.approx(list(ref), rel=1e-4)


def test_scope_cells_perturbs_only_cells():
    sn = _nb201()
    x, y = _images()
    ev = MultiSigmaEvaluator(sn, x, y, sigmas=(0.1,), scope="cells", extract=False)
    ev.evaluate(ARCH)
    path = sn.path_parameters(ARCH)
    cells = [n for n in path if n.startswith(("cells.0.", "cells.2.", "cells.4."))]
    assert ev.report()["perturbed_tensors"] == len(cells) < len(path)
    ev2 = MultiSigmaEvaluator(sn, x, y, sigmas=(0.1,), scope="cells")
    assert ev2.evaluate(ARCH).mean_losses == pytest.approx(ev.evaluate(ARCH).mean_losses, rel=1e-4)


def test_route_and_reason_are_reported():
    sn = _nb201()
    x, y = _images()
    ev = MultiSigmaEvaluator(sn, x, y, sigmas=(0.1,))
    ev.evaluate(ARCH)
    r = ev.report()
    assert r["route"] == r["path"] == "extracted"
    assert "name map" in r["route_reason"] and "CPU" in r["route_reason"]
    ev = MultiSigmaEvaluator(sn, x, y, sigmas=(0.1,), extract=False, batched=False)
    ev.evaluate(ARCH)
    assert ev.report()["route"] == "supernet" and ev.report()["route_reason"] == "batched=False; extract=False"
    ev = MultiSigmaEvaluator(nn.Linear(5, 3), *_linear_data(), sigmas=(0.1,))
    ev.evaluate()
    assert ev.report()["route"] == "model" and ev.report()["route_reason"] == "a plain module"


class _NoMapSupernet(nn.Module):
    """A supernet whose extract() predates name maps: the slower supernet route runs, and says why."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.space = inner.space

    def forward(self, x, arch):
        return self.inner(x, arch)

    def path_parameters(self, arch):
        return ["inner." + n for n in self.inner.path_parameters(arch)]

    def recalibrate(self, arch, batches, mode="exact"):
        return self.inner.recalibrate(arch, batches, mode=mode)

    def extract(self, arch):
        return self.inner.extract(arch)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_missing_name_map_is_reported_not_silent():
    sn = _nb201()
    x, y = _images()
    wrapped = _NoMapSupernet(sn)
    ev = MultiSigmaEvaluator(wrapped, x, y, sigmas=(0.01, 0.1))
    # our own handler (the CLI may have configured the "fastnas" logger in this process)
    log, records = logging.getLogger("fastnas.metrics.evaluator"), _Records()
    log.addHandler(records)
    propagate, log.propagate = log.propagate, False
    try:
        got = ev.evaluate(ARCH).mean_losses
    finally:
        log.removeHandler(records)
        log.propagate = propagate
    r = ev.report()
    assert r["route"] == "supernet" and "no name map" in r["route_reason"]
    assert any("no name map" in m for m in records.messages)
    want = MultiSigmaEvaluator(sn, x, y, sigmas=(0.01, 0.1)).evaluate(ARCH).mean_losses
    assert list(got) == pytest.approx(list(want), rel=1e-4)  # same noise: the layout keys agree


class _WrongMapSupernet(type(_nb201())):
    def extract(self, arch, *, return_map=False):
        net, name_map = super().extract(arch, return_map=True)
        a, b = "classifier.weight", "stem.0.weight"
        name_map[a], name_map[b] = name_map[b], name_map[a]
        return (net, name_map) if return_map else net


def test_wrong_name_map_is_an_error():
    torch.manual_seed(0)
    sn = _WrongMapSupernet(NB201(C=4, N=1, resolution=8))
    x, y = _images()
    with pytest.raises(ValueError, match="whose values differ"):
        MultiSigmaEvaluator(sn, x, y, sigmas=(0.1,)).evaluate(ARCH)


def test_unusable_route_choices_are_errors():
    x, y = _images()
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    torch.manual_seed(0)
    darts = DARTS(C=4, layers=3, resolution=8).supernet()
    with pytest.raises(ValueError, match="batched=True: DARTSSupernet has no batched forward"):
        MultiSigmaEvaluator(darts, x, y, sigmas=(0.1,), batched=True)
    with pytest.raises(ValueError, match="batched=True: noise='cumulative'"):
        MultiSigmaEvaluator(_nb201(), x, y, sigmas=(0.1,), batched=True, noise="cumulative")
    with pytest.raises(ValueError, match="scope='cells'.*names no searched cells"):
        MultiSigmaEvaluator(tiny, x, y, sigmas=(0.1,), scope="cells")


def test_supernet_state_untouched_and_recalibration():
    sn = _nb201()
    x, y = _images()
    before = _bytes(sn)
    cfg = FlatnessConfig(sigmas=(0.01, 0.02), bn_batches=2, bn_batch_size=8, noise="cumulative")
    r = supernet_flatness(sn, ARCH, x, y, cfg, calib_x=x)
    assert _bytes(sn) == before and not r.flagged and r.score > 0


def test_nan_loss_is_flagged():
    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)
            self.p = nn.Parameter(torch.ones(1))

        def forward(self, x):  # NaN once the noise moves p by more than 0.5
            bad = (self.p - 1.0).abs() > 0.5
            return self.lin(x) * torch.where(bad, torch.tensor(float("nan")), torch.tensor(1.0))

    torch.manual_seed(0)
    x, y = _linear_data()
    res = flatness(Fragile(), (x, y), [1e-3, 1e3])
    assert res.flagged and math.isnan(res.score)
    assert math.isfinite(res.losses[0]) and math.isnan(res.losses[1])


# ---- config and bad input -----------------------------------------------------------------------

def test_config_roundtrip_presets_and_validation():
    cfg = FlatnessConfig.preset("darts-cifar100", samples=2)
    assert cfg.sigmas == (1e-3, 3e-3, 6e-3) and cfg.samples == 2
    assert FlatnessConfig.from_dict(cfg.to_dict()) == cfg
    assert PRESETS["nb201"] == (2e-3, 1e-2, 2e-2) and PRESETS["darts-cifar10"] == (1e-5, 5e-5, 1e-4)
    with pytest.raises(ValueError, match="did you mean 'sigmas'"):
        FlatnessConfig.from_dict({"sigma": [0.1]})
    with pytest.raises(ValueError, match="noise=.*did you mean 'shared'"):
        FlatnessConfig(noise="shard")
    with pytest.raises(ValueError, match="preset"):
        FlatnessConfig.preset("nb2011x")


def test_presets_are_the_spaces():
    # GeNAS's sigmas (NB201: its Table 5; DARTS: CIFAR-10 and CIFAR-100), looked up through the spaces
    assert PRESETS["darts-cifar100"] == (1e-3, 3e-3, 6e-3) == DARTS().presets("cifar100").sigmas
    assert PRESETS["darts"] == PRESETS["darts-mnist"] == (1e-5, 5e-5, 1e-4)
    assert PRESETS["nb201-cifar100"] == PRESETS["nb201"] == NB201().presets().sigmas
    assert "darts-cifar10" in PRESETS and "nb201" in list(PRESETS) and "nb2011x" not in PRESETS
    with pytest.raises(KeyError):
        PRESETS["darts-"]
    # supernet_flatness without a config uses the space's sigmas
    torch.manual_seed(0)
    sn = DARTS(C=4, layers=3, resolution=8).supernet()
    x, y = _images(8)
    assert supernet_flatness(sn, DARTS_V2, x, y).sigmas == (1e-5, 5e-5, 1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigmas=[0.1, 0.05]), "sigmas"),
    (dict(sigmas=[0.0, 0.1]), "sigmas"),
    (dict(sigmas=[]), "sigmas"),
    (dict(sigmas=0.1), "sigmas"),
    (dict(sigmas=[0.1], noise="cumulativ"), "noise=.*did you mean 'cumulative'"),
    (dict(sigmas=[0.1], samples=0), "samples"),
    (dict(sigmas=[0.1], precision="fp16"), "precision"),
    (dict(sigmas=[0.1], alpha=-1), "alpha"),
])
def test_bad_arguments(kwargs, match):
    x, y = _linear_data()
    with pytest.raises(ValueError, match=match):
        flatness(nn.Linear(5, 3), (x, y), **kwargs)


def test_bad_data():
    with pytest.raises(ValueError, match="data"):
        flatness(nn.Linear(5, 3), torch.zeros(3, 5), [0.1])
    with pytest.raises(ValueError, match="data"):
        flatness(nn.Linear(5, 3), [torch.zeros(3, 5)], [0.1])
    with pytest.raises(ValueError, match="data"):
        flatness(nn.Linear(5, 3), [], [0.1])


# ---- bf16 rank fidelity ---------------------------------------------------------------------------

def _trained_supernet(C, N, res, steps, n):
    from fastnas.train.spos import train_step
    torch.manual_seed(0)
    space = NB201(C=C, N=N, resolution=res)
    sn = space.supernet()
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(10, 3, res, res, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    x = protos[y] + 0.8 * torch.randn(n, 3, res, res, generator=g)
    opt = torch.optim.SGD(sn.parameters(), lr=0.05, momentum=0.9)
    rng = random.Random(0)
    sn.train()
    for step in range(steps):
        i = (step * 32) % n
        train_step(sn, space.sample(rng), x[i:i + 32], y[i:i + 32], opt)
    return space, sn, x, y


def _bf16_tau(C, N, res, steps, n, candidates):
    space, sn, x, y = _trained_supernet(C, N, res, steps, n)
    rng = random.Random(1)
    archs = []
    while len(archs) < candidates:
        a = space.sample(rng)
        if a not in archs:
            archs.append(a)
    scores = {}
    for precision in ("fp32", "bf16"):
        ev = MultiSigmaEvaluator(sn, x[:128], y[:128], sigmas=(2e-3, 1e-2, 2e-2), precision=precision,
                                 calib_x=x[128:], bn_batches=2, bn_batch_size=32)
        scores[precision] = [flatness_score(ev.evaluate(a).mean_losses, (2e-3, 1e-2, 2e-2)) for a in archs]
    return kendall_tau(scores["fp32"], scores["bf16"])


def test_bf16_rank_fidelity_small():
    assert _bf16_tau(C=4, N=1, res=8, steps=30, n=256, candidates=20) >= 0.9


@pytest.mark.slow
def test_bf16_rank_fidelity_50_candidates():
    assert _bf16_tau(C=8, N=2, res=16, steps=100, n=512, candidates=50) >= 0.9


@pytest.mark.parametrize("noise", ["independent", "shared"])
def test_batched_route_equals_in_place_route(noise):
    """K perturbed copies in one mixed-op pass give the losses of K in-place perturb/forward/restore cycles."""
    sn = _nb201()
    x, y = _images()
    before = _bytes(sn)
    kw = dict(sigmas=(0.01, 0.05, 0.2), samples=2, noise=noise, seed=3, calib_x=x, bn_batches=2, bn_batch_size=8)
    batched = MultiSigmaEvaluator(sn, x, y, batched=True, **kw)
    got = batched.evaluate(ARCH, clean=True)
    assert batched.report()["path"] == "batched"
    want = MultiSigmaEvaluator(sn, x, y, batched=False, **kw).evaluate(ARCH, clean=True)
    assert got.clean_loss == pytest.approx(want.clean_loss, rel=1e-4)
    for a, b in zip(got.losses, want.losses):
        assert list(a) == pytest.approx(list(b), rel=1e-4)
    assert _bytes(sn) == before
    with pytest.raises(ValueError, match="batched="):
        MultiSigmaEvaluator(sn, x, y, batched="yes")


def test_auto_batched_choice_is_measured_off_cpu():
    """On a GPU, batched='auto' asks the space's batched forward which is faster (measured here on CPU by
    pretending the evaluator's device is not a CPU; only the choice is checked)."""
    from fastnas.spaces.nb201_batched import choices

    sn = _nb201()
    x, y = _images()
    ev = MultiSigmaEvaluator(sn, x, y, sigmas=(0.01, 0.1), batched="auto")
    assert ev._use_batched(ARCH) == (False, "batched='auto' never batches on CPU (measured slower there)")
    ev.device = torch.device("cuda")  # the choice only; nothing is run on that device
    use, reason = ev._use_batched(ARCH)
    choice = "batched" if use else "sequential"
    assert reason == f"batched='auto': the batched forward measured {choice} faster on cuda"
    assert any(c["k"] == 2 and c["choice"] == choice for c in choices())


def test_data_of_mismatched_lengths_says_so():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(100, 8), torch.randint(0, 3, (90,))
    with pytest.raises(ValueError, match="data: x has 100 samples but y has 90"):
        flatness(model, (x, y), (0.01, 0.02))
    with pytest.raises(ValueError, match=r"data: y has shape \(100, 1\); expected labels of shape \(N,\)"):
        flatness(model, (x, torch.zeros(100, 1, dtype=torch.long)), (0.01, 0.02))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_a_model_that_is_not_float32_is_a_clear_error(dtype):
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).to(dtype).eval()
    x, y = torch.randn(20, 8), torch.randint(0, 3, (20,))
    name = str(dtype).replace("torch.", "")
    with pytest.raises(ValueError, match=rf"model: its parameters are {name}; .*call model.float\(\)"):
        flatness(model, (x.to(dtype), y), (0.01, 0.02))
    assert math.isfinite(flatness(model.float(), (x, y), (0.01, 0.02)).score)
