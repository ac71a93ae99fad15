"""The protocol pieces a space owns: generic size keywords, presets, cell graphs (and how plots lay them
out), searched cells; checked against hand-written values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fastnas.spaces import CellGraph, Presets, create_space, list_spaces
from fastnas.spaces.darts import DARTS, DARTS_V2
from fastnas.spaces.nb201 import NB201

ARCH = ("nor_conv_3x3", "none", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1")


@pytest.mark.parametrize("name, own", [("nb201", ("C", "N")), ("darts", ("C", "layers"))])
def test_generic_size_keywords(name, own):
    s = create_space(name, channels=8, cells=3, num_classes=7, in_channels=1, resolution=16)
    cfg = s.config()
    assert (cfg[own[0]], cfg[own[1]], cfg["num_classes"], cfg["in_channels"], cfg["resolution"]) == (8, 3, 7, 1, 16)
    assert create_space(name, **cfg).config() == cfg
    assert create_space(name, **{own[0]: 8, "channels": 8}).config()[own[0]] == 8  # both, agreeing
    with pytest.raises(ValueError, match=f"{own[1]}=2 and cells=3 disagree"):
        create_space(name, **{own[1]: 2, "cells": 3})
    with pytest.raises(ValueError, match="C=0"):
        create_space(name, channels=0)
    default = create_space(name).config()
    assert create_space(name, channels=None, cells=None, resolution=None).config() == default


def test_every_registered_space_takes_the_generic_keywords():
    for name in list_spaces():
        create_space(name, channels=4, cells=3, num_classes=3, in_channels=3, resolution=8)


def test_presets():
    # the supernet recipes: RLNAS's SPOS.config for NB201 (GeNAS's NB201 code), GeNAS's train.py for DARTS
    nb201 = {"lr": 0.025, "lr_min": 0.001, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "grad_clip": 0.0}
    assert NB201().presets("cifar100") == Presets(sigmas=(2e-3, 1e-2, 2e-2), train=nb201)
    assert dict(DARTS().presets("cifar10").train) == {"lr": 0.025, "lr_min": 0.001, "momentum": 0.9,
                                                      "nesterov": False, "weight_decay": 3e-4, "grad_clip": 5.0}
    assert DARTS().presets("CIFAR100").sigmas == (1e-3, 3e-3, 6e-3)
    assert DARTS().presets("/data/cifar100.npz").sigmas == (1e-3, 3e-3, 6e-3)
    assert DARTS().presets("cifar10").sigmas == DARTS().presets(None).sigmas == (1e-5, 5e-5, 1e-4)
    p = Presets(sigmas=[0.1, 0.2], train={"epochs": 3})
    assert p.sigmas == (0.1, 0.2) and dict(p.train) == {"epochs": 3}
    with pytest.raises(TypeError):
        p.train["epochs"] = 4  # read-only
    with pytest.raises(ValueError, match="strictly increasing"):
        Presets(sigmas=(0.2, 0.1))
    with pytest.raises(ValueError, match="sigmas"):
        Presets(sigmas=())


def test_default_sigmas_of_a_run_come_from_the_space():
    from fastnas.run.scoring import default_sigmas

    assert default_sigmas("darts", "cifar100") == (1e-3, 3e-3, 6e-3)
    assert default_sigmas("nb201", "cifar10") == (2e-3, 1e-2, 2e-2)
    assert default_sigmas(DARTS(), "digits") == (1e-5, 5e-5, 1e-4)


def test_run_passes_only_generic_keywords():
    from fastnas.run.config import RunConfig
    from fastnas.run.pipeline import space_kwargs

    data = SimpleNamespace(num_classes=5, in_channels=1, resolution=8)
    kw = space_kwargs(RunConfig(space="darts", channels=4, cells=3), data)
    assert kw == {"channels": 4, "cells": 3, "num_classes": 5, "in_channels": 1, "resolution": 8}
    assert create_space("darts", **kw).config()["layers"] == 3


def test_nb201_cell_graph_by_hand():
    (g,) = NB201().cell_graph(ARCH)
    assert g.title == NB201().format(ARCH) and g.nodes == ["in", "1", "2", "out"] and g.inputs == 1
    # edges (1,0) conv3x3, (2,1) skip, (3,1) pool, (3,2) conv1x1; the none edges are not drawn
    assert g.edges == [("in", "1", "nor_conv_3x3"), ("1", "2", "skip_connect"), ("1", "out", "avg_pool_3x3"),
                       ("2", "out", "nor_conv_1x1")]


def test_darts_cell_graphs_by_hand():
    normal, reduce = DARTS().cell_graph(DARTS_V2)
    assert (normal.title, reduce.title) == ("normal cell", "reduction cell")
    assert normal.nodes == ["k-2", "k-1", "0", "1", "2", "3", "out"] and normal.inputs == 2
    assert normal.edges[:2] == [("k-2", "0", "sep_conv_3x3"), ("k-1", "0", "sep_conv_3x3")]
    assert normal.edges[7] == ("0", "3", "dil_conv_3x3")  # ('dil_conv_3x3', 2): node 3 from node 0
    assert normal.edges[8:] == [(n, "out", "") for n in ("0", "1", "2", "3")]
    assert reduce.edges[0] == ("k-2", "0", "max_pool_3x3")


def test_cell_graph_validation():
    with pytest.raises(ValueError, match="edge"):
        CellGraph("c", ["a", "b"], [("a", "z", "op")])
    with pytest.raises(ValueError, match="distinct"):
        CellGraph("c", ["a", "a"], [])
    with pytest.raises(ValueError, match="inputs"):
        CellGraph("c", ["a"], [], inputs=2)


def test_plot_layout_of_cell_graphs():
    from fastnas.run.plots import cell_layout

    # layered left to right: a node one layer right of its rightmost predecessor, a layer's nodes stacked
    pos = cell_layout(NB201().cell_graph(ARCH)[0])
    assert [pos[k][0] for k in ("in", "1", "2", "out")] == [0.0, 2.0, 4.0, 6.0]
    normal = DARTS().cell_graph(DARTS_V2)[0]  # nodes 0, 1, 2 read only the cell inputs; node 3 reads node 0
    pos = cell_layout(normal)
    assert pos["k-2"][0] == pos["k-1"][0] == 0.0 and pos["k-2"][1] > pos["k-1"][1]
    assert {pos[k][0] for k in "012"} == {2.0} and pos["3"][0] == 4.0 and pos["out"][0] == 6.0


def test_plot_cell_draws_every_space(tmp_path):
    pytest.importorskip("matplotlib")
    from fastnas.run.plots import plot_cell

    for space, arch in ((NB201(), ARCH), (DARTS(), DARTS_V2)):
        plot_cell(space, arch, tmp_path / f"{space.name}.png")
        assert (tmp_path / f"{space.name}.png").stat().st_size > 1000


def test_searched_prefixes():
    nb = NB201(C=4, N=1, resolution=8).supernet()
    assert nb.searched_prefixes() == ("cells.0.", "cells.2.", "cells.4.")  # not the residual blocks 1, 3
    assert DARTS(C=4, layers=3).supernet().searched_prefixes() == ("cells.0.", "cells.1.", "cells.2.")
