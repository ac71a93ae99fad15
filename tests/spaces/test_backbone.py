"""NAR's backbone space (fastnas.spaces.backbone): sites found on the torch.fx graph, the skip structure
kept, the supernet's paths, costs, and one clear error per bad input. Small resolutions (8x8) and widths."""

from __future__ import annotations

import random

import pytest
import torch
from torch import fx, nn

from fastnas.spaces import create_space
from fastnas.spaces.backbone import BackboneSpace
from fastnas.spaces.resnets import resnet18, resnet20

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class TinyRes(nn.Module):
    """A user-defined residual net: a functional ``torch.add`` skip, a stride-2 block with a 1x1
    projection, a 3x3 conv outside any block (stem) and one after the blocks (head)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.a2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.b1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.proj = nn.Conv2d(4, 8, 1, stride=2)
        self.head = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.add(x, self.bn(self.a2(torch.relu(self.a1(x)))))
        x = torch.relu(self.b1(x)) + self.proj(x)
        x = self.head(x)
        return self.fc(x.mean((2, 3)))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck layout (1x1, 3x3, 1x1, ``out += identity``, downsample)."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, 4 * width, 1, stride=stride, bias=False),
                                        nn.BatchNorm2d(4 * width))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class BottleneckNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.layer = nn.Sequential(Bottleneck(8, 2, 1), Bottleneck(8, 4, 2))
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layer(self.conv1(x)), 1), 1))


def _signature(gm: fx.GraphModule, sites) -> list:
    """The graph as data: per node its op, its target (site modules collapsed to ``SITE``) and the indices
    of its input nodes -- equal signatures mean the same adds, skips and connectivity."""
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    out = []
    for n in gm.graph.nodes:
        target = "SITE" if n.op == "call_module" and n.target in sites else str(n.target)
        out.append((n.op, target, tuple(index[a] for a in n.all_input_nodes)))
    return out


class _SiteLeaves(fx.Tracer):
    def __init__(self, sites) -> None:
        super().__init__()
        self.sites = sites

    def is_leaf_module(self, m, qualname):
        return qualname in self.sites or super().is_leaf_module(m, qualname)


def _space(model, granularity="conv", **kw):
    torch.manual_seed(0)
    return BackboneSpace(model, X, granularity=granularity, **kw)


# ---- sites ---------------------------------------------------------------------------------------------------

def test_resnet_sites_are_the_3x3_convs_of_the_blocks():
    s = _space(resnet20(width=4))
    assert len(s.sites) == 18 and all(t.target.endswith(("conv1", "conv2")) and t.target.startswith("layers.")
                                      for t in s.sites)
    assert "conv1" not in {t.target for t in s.sites}  # the stem
    assert len(_space(resnet20(width=4), "block").gene_ops) == 9
    s18 = _space(resnet18(width=4))
    assert len(s18.gene_ops) == 16 and len(_space(resnet18(width=4), "block").gene_ops) == 8
    assert not any("shortcut" in t.target for t in s18.sites)  # 1x1 projections are no sites


def test_user_nets_sites():
    s = _space(TinyRes())
    assert [t.target for t in s.sites] == ["a1", "a2", "b1"]  # not the stem, not the head
    assert [t.block for t in s.sites] == [0, 0, 1]
    b = _space(BottleneckNet())  # `out += identity` (iadd), the 3x3 of each bottleneck only
    assert [t.target for t in b.sites] == ["layer.0.conv2", "layer.1.conv2"]


def test_default_candidates_have_no_more_parameters_than_the_original():
    s = _space(TinyRes())
    a1 = s.sites[0]
    assert "conv_5x5" not in a1.allowed and "conv_3x3" in a1.allowed and "max_pool_3x3" in a1.allowed
    assert "conv_5x5" in _space(TinyRes(), max_params=None).sites[0].allowed
    assert "conv_5x5" in _space(TinyRes(), max_params=3).sites[0].allowed
    assert "conv_5x5" not in _space(TinyRes(), max_params=2).sites[0].allowed  # 25/9 > 2


def test_block_granularity_applies_one_op_to_the_block():
    s = _space(TinyRes(), "block")
    assert len(s.gene_ops) == 2 and s.gene_sites == ((0, 1), (2,))
    pool = s.candidates.index("max_pool_3x3") + 1
    assert s.site_ops((pool, 0)) == {"a1": "max_pool_3x3", "a2": "max_pool_3x3", "b1": "original"}


# ---- graph and supernet ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: resnet20(width=4, num_classes=3), lambda: resnet18(width=2),
                                  TinyRes, BottleneckNet])
@pytest.mark.parametrize("granularity", ["conv", "block"])
def test_refined_graph_keeps_every_skip(make, granularity):
    model = make()
    s = _space(model, granularity)
    sites = {t.target for t in s.sites}
    base = fx.GraphModule(model, _SiteLeaves(sites).trace(model))
    sn = s.supernet()
    for arch in (s.original(), s.sample(random.Random(1)), tuple(max(ok) for ok in s.gene_ops)):
        net = sn.extract(arch)
        retraced = fx.GraphModule(net, _SiteLeaves(sites).trace(net))
        assert _signature(retraced, sites) == _signature(base, sites)
        assert sum(n.target in (torch.add,) or "add" in str(n.target) for n in retraced.graph.nodes) >= 1
        assert net(X).shape == model(X).shape


@pytest.mark.parametrize("make", [lambda: resnet20(width=4, num_classes=3), TinyRes, BottleneckNet])
def test_original_path_is_the_model(make):
    model = make().eval()
    s = _space(model)
    sn = s.supernet().eval()
    with torch.no_grad():
        torch.testing.assert_close(sn(X, s.original()), model(X))
        torch.testing.assert_close(sn.extract(s.original())(X), model(X))
    assert s.params(s.original()) == sum(p.numel() for p in model.parameters())


def test_every_path_runs_and_trains_only_its_ops():
    s = _space(TinyRes(), max_params=None)
    sn = s.supernet().train()
    for v in range(1, len(s.candidates) + 1):
        arch = (v, v, v)
        sn.zero_grad()
        sn(X, arch).sum().backward()
        used = set(sn.path_parameters(arch))
        for name, p in sn.named_parameters():
            assert (p.grad is not None) == (name in used), (arch, name)
        net = sn.extract(arch).eval()
        sn.eval()
        with torch.no_grad():
            torch.testing.assert_close(net(X), sn(X, arch))
        sn.train()
        assert s.params(arch) == sum(p.numel() for p in net.parameters())


def test_pool_keeps_the_stride_and_projects_channels():
    s = _space(TinyRes())
    sn = s.supernet()
    pool = s.candidates.index("avg_pool_3x3") + 1
    op = sn.extract((0, 0, pool)).get_submodule("b1")  # 4 -> 8 channels, stride 2
    assert op.pool.stride == 2 and op.proj.in_channels == 4 and op.proj.out_channels == 8
    same = sn.extract((pool, 0, 0)).get_submodule("a1")
    assert same.proj is None and sum(p.numel() for p in same.parameters()) == 0


def test_flops_are_multiply_adds_per_image():
    s = _space(TinyRes())
    # stem 8*8*4*27, a1/a2 8*8*4*36, b1 4*4*8*36, proj 4*4*8*4, head 4*4*8*72, fc 5*8
    base = 8 * 8 * 4 * 27 + 2 * 8 * 8 * 4 * 36 + 4 * 4 * 8 * 36 + 4 * 4 * 8 * 4 + 4 * 4 * 8 * 72 + 5 * 8
    assert s.flops(s.original()) == pytest.approx(base / 1e6)
    pool = s.candidates.index("max_pool_3x3") + 1
    sep = s.candidates.index("sep_conv_3x3") + 1
    want = base - 2 * 8 * 8 * 4 * 36 + 8 * 8 * 4 * (9 + 4)  # a1 sep (depthwise 9 + pointwise 4), a2 pool
    assert s.flops((sep, pool, 0)) == pytest.approx(want / 1e6)


def test_text_form_and_describe():
    s = _space(TinyRes())
    pool = s.candidates.index("max_pool_3x3") + 1
    assert s.parse(f"[{pool}, 0,0]") == (pool, 0, 0) and s.format((pool, 0, 0)) == f"[{pool},0,0]"
    assert s.describe((pool, 0, 0)) == ["max_pool_3x3", "original", "original"]
    with pytest.raises(ValueError, match="entry 0 .*conv_5x5|entry 0"):
        s.validate((2, 0, 0))  # conv_5x5 is not allowed by default
    with pytest.raises(ValueError, match="expected 3 op indices"):
        s.parse("[1,0]")


def test_build_has_fresh_weights_and_the_refined_shapes():
    s = _space(TinyRes())
    sn = s.supernet()
    arch = s.sample(random.Random(3))
    built, ext = s.build(arch), sn.extract(arch)
    assert {n: p.shape for n, p in built.named_parameters()} == {n: p.shape for n, p in ext.named_parameters()}
    assert built.training and not torch.equal(built.get_submodule("stem").weight, ext.get_submodule("stem").weight)


def test_registered_builtins_round_trip_config():
    s = create_space("backbone", backbone="resnet18", channels=2, resolution=8, granularity="block")
    assert len(s.gene_ops) == 8 and s.num_classes == 10
    assert create_space("backbone", **s.config()).config() == s.config()


# ---- bad input ----------------------------------------------------------------------------------------------

class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return x
        return -x


class HasBranchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.inner = nn.Sequential(nn.ReLU(), Branchy())

    def forward(self, x):
        return x + self.inner(self.conv(x))


def test_untraceable_model_names_the_submodule():
    with pytest.raises(ValueError, match=r"HasBranchy cannot be traced by torch\.fx .*'inner\.1' \(Branchy\).*"
                                         r"TraceError"):
        _space(HasBranchy())


def test_no_refinable_conv():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match="Sequential has no refinable convolution"):
        _space(plain)


def test_unknown_candidate_op_suggests_close_names():
    with pytest.raises(ValueError, match="'sep_conv_3x' is not a known candidate op.*did you mean 'sep_conv_3x3'"):
        _space(TinyRes(), candidates=("sep_conv_3x", "max_pool_3x3"))


def test_candidates_leaving_no_choice():
    with pytest.raises(ValueError, match=r"leave no choice but the original conv at 3 site\(s\) of TinyRes .*"
                                         r"conv_5x5 has 400 parameters > 144"):
        _space(TinyRes(), candidates=("conv_5x5",))


def test_input_that_does_not_fit():
    with pytest.raises(ValueError, match=r"example_input of shape \(2, 1, 8, 8\) does not fit model TinyRes"):
        BackboneSpace(TinyRes(), torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="example_input"):
        BackboneSpace(TinyRes(), "not a tensor")


@pytest.mark.parametrize("kw, match", [({"granularity": "blocks"}, "granularity='blocks'.*did you mean 'block'"),
                                       ({"max_params": -1}, "max_params=-1"),
                                       ({"candidates": "conv_3x3"}, "candidates='conv_3x3'")])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        _space(TinyRes(), **kw)


def test_unknown_builtin_backbone():
    with pytest.raises(ValueError, match="backbone='resnet19'.*did you mean"):
        create_space("backbone", backbone="resnet19")
