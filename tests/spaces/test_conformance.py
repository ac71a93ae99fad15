"""The conformance suite: what every search space must do, run on every registered space (small sizes)
and on two test-only spaces: the tiny one of ``_tiny_space.py`` (whole tensors) and the nested family of
``_nested_space.py``, whose paths are ``fastnas.ops.ParamSlice`` entries (``weight[:out, :in]``).

A new space passes this file by registering itself; an entry in ``SMALL`` keeps it fast. Path entries may
be names or slices: the tests resolve both through ``fastnas.ops.path_params``.
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

import fastnas
from fastnas.ops import ParamSlice, path_params
from fastnas.ops.layout import ParamLayout
from fastnas.spaces import CellGraph, Presets, create_space, list_spaces

from _nested_space import NestedSpace
from _tiny_space import TinySpace

#: Small sizes per registered space (generic keywords); unlisted spaces get channels=4, resolution=8.
SMALL = {"nb201": {"cells": 1}, "darts": {"cells": 3}, "elastic_resnet": {"cells": 2},
         "nb201_size": {"candidates": (2, 4)}}
SPACES = [*list_spaces(), "tiny", "nested"]
B, RES = 4, 8


def make_space(name: str):
    if name == "tiny":
        return TinySpace(channels=4, cells=3, num_classes=3, resolution=RES)
    if name == "nested":
        return NestedSpace(widths=(2, 4), cells=2, num_classes=3, resolution=RES)
    return create_space(name, channels=4, resolution=RES, num_classes=3, **SMALL.get(name, {}))


class Case:
    """A space, its supernet with moved weights and warmed-up BatchNorm statistics, and a few archs."""

    def __init__(self, name: str) -> None:
        torch.manual_seed(0)
        self.name = name
        self.space = make_space(name)
        self.supernet = self.space.supernet()
        self.initial_state = {k: v.clone() for k, v in self.supernet.state_dict().items()}
        rng = random.Random(0)
        self.archs = []
        for _ in range(50):  # three distinct archs where the space has them
            arch = self.space.sample(rng)
            if arch not in self.archs:
                self.archs.append(arch)
            if len(self.archs) == 3:
                break
        if hasattr(self.space, "smallest") and self.space.smallest() not in self.archs:
            self.archs.append(self.space.smallest())  # a family's smallest member slices every layer
        c = self.space.in_channels
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(B, c, RES, RES, generator=g)
        with torch.no_grad():
            for p in self.supernet.parameters():  # move the weights away from their initial values
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            self.supernet.train()
            for arch in self.archs:  # non-trivial running statistics on every path
                self.supernet(torch.randn(8, c, RES, RES, generator=g), arch)
        self.supernet.eval()


_CASES: dict = {}


@pytest.fixture(params=SPACES)
def case(request) -> Case:
    if request.param not in _CASES:
        _CASES[request.param] = Case(request.param)
    return _CASES[request.param]


# ---- architectures ---------------------------------------------------------------------------------

def test_sample_mutate_crossover_are_valid_and_determined_by_the_rng(case):
    s = case.space

    def run(seed):
        rng = random.Random(seed)
        a, b = s.sample(rng), s.sample(rng)
        return [a, b, s.mutate(a, 0.5, rng), s.mutate(b, 1.0, rng), s.crossover(a, b, rng)]

    first = run(7)
    assert run(7) == first
    for arch in first:
        assert s.validate(arch) == arch
        hash(arch)
    many = {s.sample(random.Random(seed)) for seed in range(20)}
    assert len(many) > 1, "sample ignores the rng"


def test_text_form_round_trips(case):
    s = case.space
    for arch in case.archs:
        text = s.format(arch)
        assert isinstance(text, str)
        assert s.parse(text) == arch
        assert s.format(s.parse(text)) == text
    with pytest.raises(ValueError):
        s.parse("not an architecture")


def test_canonical_presets_and_cell_graph(case):
    s = case.space
    for arch in case.archs:
        c = s.canonical(arch)
        assert s.validate(c) == c and s.canonical(c) == c
        for g in s.cell_graph(arch):
            assert isinstance(g, CellGraph) and g.nodes and g.edges
    p = s.presets(None)
    assert isinstance(p, Presets) and len(p.sigmas) >= 1 and list(p.sigmas) == sorted(p.sigmas)
    assert isinstance(s.presets("cifar10"), Presets)


# ---- supernet ----------------------------------------------------------------------------------------

def test_extract_equals_forward(case):
    sn = case.supernet
    with torch.no_grad():
        for arch in case.archs:
            net = sn.extract(arch)
            assert not net.training
            torch.testing.assert_close(net(case.x), sn(case.x, arch), rtol=1e-5, atol=1e-5)


def _name(entry) -> str:
    """The parameter name of a path entry (a name, or a slice's ``.name``)."""
    return entry.name if isinstance(entry, ParamSlice) else entry


def test_name_map_points_at_equal_tensors_on_the_path(case):
    sn = case.supernet
    for arch in case.archs:
        net, name_map = sn.extract(arch, return_map=True)
        ext = dict(net.named_parameters())
        assert set(name_map) == set(ext)
        values = list(name_map.values())
        assert len(set(values)) == len(values)
        assert set(values) == set(sn.path_parameters(arch))
        # path_params resolves names and slices alike; a slice pairs with its full supernet tensor
        resolved = dict(zip(name_map, path_params(sn, values)))
        for en, (entry, full) in resolved.items():
            want = entry.view(full) if isinstance(entry, ParamSlice) else full
            assert ext[en].shape == want.shape and torch.equal(ext[en], want), (en, str(entry))
            assert ext[en].data_ptr() != want.data_ptr()  # a copy, not the supernet's tensor


def test_path_parameters_are_in_named_parameters_order(case):
    order = [n for n, _ in case.supernet.named_parameters()]
    for arch in case.archs:
        path = [_name(e) for e in case.supernet.path_parameters(arch)]
        assert len(set(path)) == len(path)
        assert path == [n for n in order if n in set(path)]


def test_path_perturbation_equals_whole_supernet_perturbation(case):
    sn = case.supernet
    layout = ParamLayout.from_module(sn)
    whole = copy.deepcopy(sn)
    fastnas.perturb_(whole, 0.05, seed=3, stream=2)
    want = dict(whole.named_parameters())
    arch = case.archs[0]
    named = dict(sn.named_parameters())
    before = {n: t.detach().clone() for n, t in named.items()}
    # expected: the whole perturbation on every path element, the old values everywhere else
    expected = {n: t.clone() for n, t in before.items()}
    for entry in sn.path_parameters(arch):
        if isinstance(entry, ParamSlice):
            entry.view(expected[entry.name]).copy_(entry.view(want[entry.name]))
        else:
            expected[entry] = want[entry].detach().clone()
    params = path_params(sn, sn.path_parameters(arch))
    backup = fastnas.perturb_(params, 0.05, seed=3, stream=2, layout=layout)
    try:
        for n, t in named.items():
            assert torch.equal(t, expected[n]), n
    finally:
        fastnas.restore_(params, backup)
    assert all(torch.equal(named[n], before[n]) for n in named)


def test_angle_pieces_name_supernet_parameters(case):
    named = dict(case.supernet.named_parameters())
    for arch in case.archs:
        pieces = case.supernet.angle_pieces(arch)
        if pieces is None:
            continue
        for piece, count in pieces.items():
            assert count >= 1
            if piece[0] == "param":
                assert _name(piece[1]) in named
                if isinstance(piece[1], ParamSlice):
                    piece[1].view(named[piece[1].name])  # the box fits the tensor
            else:
                assert piece[0] == "const" and piece[1] in ("pool", "eye") and piece[2] >= 1


def test_searched_prefixes_name_modules(case):
    names = [n for n, _ in case.supernet.named_parameters()]
    for prefix in case.supernet.searched_prefixes():
        assert prefix.endswith(".") and any(n.startswith(prefix) for n in names), prefix


def test_batched_forward_equals_sequential(case):
    bf = case.supernet.batched_forward()
    if bf is None:
        pytest.skip(f"{case.name} has no batched forward")
    with torch.no_grad():
        got = bf.forward(bf.prepare(case.archs), case.x)
        want = torch.stack([case.supernet(case.x, a) for a in case.archs])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ---- standalone networks -----------------------------------------------------------------------------

def test_params_counts_the_network_a_search_gives(case):
    # params(arch): the supernet's path as a standalone network (what `fastnas export` writes), for the
    # sampled architectures and their class representatives (NB201: dead edges made `none`)
    s = case.space
    for arch in case.archs + [s.canonical(a) for a in case.archs]:
        net = case.supernet.extract(arch)
        assert s.params(arch) == sum(p.numel() for p in net.parameters())
    bench = s.params_benchmark(case.archs[0])
    assert bench is None or (isinstance(bench, int) and bench > 0)


def _build_matches_extract(case):
    # build(arch) is the network of the space's own sizes: every weight of the extracted path (conv and
    # linear weights, >= 2-D) appears in it with the same shape (BatchNorm affine pairs may differ).
    for arch in case.archs:
        built = {n: p.shape for n, p in case.space.build(arch).named_parameters()}
        for n, p in case.supernet.extract(arch).named_parameters():
            if p.dim() >= 2:
                assert built.get(n) == p.shape, (n, built.get(n), p.shape)


@pytest.mark.parametrize("name", SPACES)
def test_build_is_the_network_of_the_space_sizes(name):
    if name not in _CASES:
        _CASES[name] = Case(name)
    _build_matches_extract(_CASES[name])


def test_export_source_runs_without_fastnas(case, tmp_path):
    arch = case.archs[0]
    sn = case.supernet
    (tmp_path / "net.py").write_text(sn.export_source(arch, class_name="Network"))
    net = sn.extract(arch)
    torch.save({"state": net.state_dict(), "x": case.x, "y": net(case.x).detach()}, tmp_path / "data.pt")
    script = textwrap.dedent("""
        import sys
        sys.modules["fastnas"] = None  # any import of fastnas fails
        import torch
        ns = {"__name__": "exported"}
        exec(compile(open("net.py").read(), "net.py", "exec"), ns)
        d = torch.load("data.pt")
        net = ns["Network"]()
        net.load_state_dict(d["state"])
        net.eval()
        with torch.no_grad():
            torch.testing.assert_close(net(d["x"]), d["y"], rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---- scoring and search --------------------------------------------------------------------------------

def test_scoring_and_evolution_run(case):
    from fastnas.metrics import FlatnessConfig, make_score_fn

    s = case.space
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, s.in_channels, RES, RES, generator=g)
    y = torch.randint(0, s.num_classes, (16,), generator=g)
    cfg = FlatnessConfig(sigmas=s.presets().sigmas, bn_batches=1, bn_batch_size=8)
    fn = make_score_fn("angle+flatness", case.supernet, s, valid=(x, y), initial_state=case.initial_state,
                       flatness_config=cfg)
    score = fn(case.archs[0])
    assert not score.flagged and set(score.parts) >= {"angle", "flatness"}
    report = fn.evaluator.report()
    assert report["route"] == "extracted", report["route_reason"]
    config = fastnas.EvolutionConfig(population=4, topk=2, mutations=2, crossovers=2, generations=2, seed=0)
    result = fastnas.evolve(s, fn, config)
    assert result.topk and all(s.validate(r.arch) == r.arch for r in result.topk)
    assert result.topk[0].score >= result.topk[-1].score


def test_extracted_route_equals_supernet_route(case):
    # The extracted module (slices perturbed in a copy of their full tensor, then copied in) sees the
    # noise that perturbing the supernet's own path in place gives: the same losses, and the supernet is
    # left bit-identical (parameters and BatchNorm buffers).
    from fastnas.metrics import MultiSigmaEvaluator

    s, sn = case.space, case.supernet
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, s.in_channels, RES, RES, generator=g)
    y = torch.randint(0, s.num_classes, (12,), generator=g)
    state = {k: v.clone() for k, v in sn.state_dict().items()}
    kw = dict(sigmas=(0.01, 0.05), samples=2, seed=4, bn_batches=1, bn_batch_size=6, fold_bn=False,
              channels_last=False, batched=False)
    routes = {}
    for extract in (True, False):
        ev = MultiSigmaEvaluator(sn, x, y, extract=extract, **kw)
        routes[extract] = [ev.evaluate(a, clean=True) for a in case.archs]
        assert ev.report()["route"] == ("extracted" if extract else "supernet"), ev.report()["route_reason"]
    for got, want in zip(routes[True], routes[False]):
        torch.testing.assert_close(torch.tensor(got.losses), torch.tensor(want.losses), rtol=1e-5, atol=1e-6)
        assert got.clean_loss == pytest.approx(want.clean_loss, rel=1e-5, abs=1e-6)
        assert got.losses != tuple((got.clean_loss,) * 2 for _ in got.losses)  # the noise did something
    for k, v in sn.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_params_angle_equals_the_concatenated_path_vector(case):
    # convention="params": the angle of the concatenated path entries (whole tensors and slice boxes)
    import math

    from fastnas.metrics import angle

    sn = case.supernet
    init = case.initial_state
    for arch in case.archs:
        entries = sn.path_parameters(arch)
        v0 = torch.cat([(e.view(init[e.name]) if isinstance(e, ParamSlice) else init[e]).reshape(-1)
                        for e in entries]).double()
        vt = torch.cat([(e.view(t) if isinstance(e, ParamSlice) else t).detach().reshape(-1)
                        for e, t in path_params(sn, entries)]).double()
        want = math.acos(max(-1.0, min(1.0, float(torch.dot(v0, vt) / (v0.norm() * vt.norm()))))) / math.pi
        assert angle(sn, arch, case.initial_state, convention="params") == pytest.approx(want, rel=1e-9, abs=1e-12)
