"""GeNAS flatness of family members: a member's slices get the noise that perturbing the whole supernet
gives there, so nested members see identical noise on the weights they share (common random numbers).

Not asserted, because it does not hold by design: a member's score equal to ``fastnas.flatness`` of its
extracted standalone module. That module has its own parameter layout (offsets from its own
``named_parameters()``), so the same noise keys give it other noise than its slices get in the supernet.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fastnas import ParamLayout
from fastnas.metrics import FlatnessConfig, make_score_fn, noise_stream
from fastnas.ops import ParamSlice, path_params
from fastnas.ops.perturb import perturb_
from fastnas.spaces import create_space

SMALL, BIG = (2, 2, 2, 2, 2), (4, 4, 3, 4, 4)


@pytest.fixture(scope="module")
def family():
    space = create_space("nb201_size", channels=4, cells=1, num_classes=5, in_channels=1, resolution=8)
    assert space.contains(BIG, SMALL) and not space.contains(SMALL, BIG)
    torch.manual_seed(0)
    net = space.supernet().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return space, net


def _box(entry, full):
    if isinstance(entry, str):
        return entry, tuple(slice(None) for _ in full.shape)
    return entry.name, tuple(slice(lo, hi) for lo, hi in entry.index)


def _perturbed(net, entries, sigma=0.1, seed=7, stream=3):
    """A copy of ``net`` with ``entries`` (None: every parameter) perturbed in the supernet's layout."""
    out = copy.deepcopy(net)
    params = out if entries is None else path_params(out, entries)
    perturb_(params, sigma, seed, stream, layout=ParamLayout(out))
    return dict(out.named_parameters())


def test_nested_members_get_identical_noise_on_shared_weights(family):
    space, net = family
    small_path, big_path = net.path_parameters(SMALL), net.path_parameters(BIG)
    assert any(isinstance(e, ParamSlice) for e in small_path)
    original = {n: p.detach().clone() for n, p in net.named_parameters()}
    small, big, whole = _perturbed(net, small_path), _perturbed(net, big_path), _perturbed(net, None)
    for entry in small_path:
        name, box = _box(entry, original[entry if isinstance(entry, str) else entry.name])
        assert not torch.equal(small[name][box], original[name][box]), name
        assert torch.equal(small[name][box], big[name][box]), name  # the same noise on the shared weights
        assert torch.equal(small[name][box], whole[name][box]), name  # = perturbing the whole supernet
        outside = torch.ones_like(original[name], dtype=torch.bool)
        outside[box] = False
        assert torch.equal(small[name][outside], original[name][outside]), name  # nothing else moved
    for entry in big_path:
        name, box = _box(entry, original[entry if isinstance(entry, str) else entry.name])
        assert torch.equal(big[name][box], whole[name][box]), name
    used = {e if isinstance(e, str) else e.name for e in big_path}
    for name in set(original) - used:  # a tensor no member of the two uses is untouched
        assert torch.equal(big[name], original[name])


def test_member_flatness_score_is_the_whole_supernet_perturbation_and_leaves_it_intact(family):
    space, net = family
    torch.manual_seed(1)
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 5, (24,))
    sigmas = (1e-2, 2e-2, 5e-2)
    fn = make_score_fn("flatness", net, space, valid=(x, y),
                       flatness_config=FlatnessConfig(sigmas=sigmas, bn_batches=0, seed=5))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    scores = {}
    for arch in (SMALL, BIG, SMALL):
        scorer = make_score_fn("flatness", net, space, valid=(x, y),
                               flatness_config=FlatnessConfig(sigmas=sigmas, bn_batches=0, seed=5)) \
            if arch in scores else fn
        score = scorer(arch)
        after = net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical supernet
        if arch in scores:  # scoring BIG in between changed nothing SMALL sees
            assert score.value == scores[arch].value and score.parts == scores[arch].parts
        scores[arch] = score
        assert scorer.evaluator.report()["perturbed_tensors"] == len(net.path_parameters(arch))
        losses = [v for k, v in score.parts.items() if k.startswith("loss@")]
        assert len(losses) == len(sigmas)
        for i, sigma in enumerate(sigmas):
            whole = copy.deepcopy(net)
            perturb_(whole, sigma, 5, noise_stream(i, 0), layout=ParamLayout(whole))
            with torch.no_grad():
                expected = F.cross_entropy(whole.eval()(x, arch), y).item()
            # the evaluator runs the member's extracted module with conv+BN folded: equal to float rounding
            assert losses[i] == pytest.approx(expected, rel=1e-5, abs=1e-6), (arch, sigma)
