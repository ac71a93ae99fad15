from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from fastnas.metrics import angle, angle_pieces
from fastnas.metrics.angle import AngleScorer
from fastnas.spaces.darts import DARTS, DARTS_V2
from fastnas.spaces.nb201 import NB201


def _moved(sn, seed=0, scale=0.2):
    init = {k: v.clone() for k, v in sn.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return init


def test_nb201_two_edge_example_by_hand():
    torch.manual_seed(0)
    sn = NB201(C=4, N=1, resolution=8).supernet()
    init = _moved(sn)
    # Only edges 1<-0 (conv 3x3) and 3<-1 (avg pool) are on: one path [0, 1, 3] survives.
    arch = ("nor_conv_3x3", "none", "none", "none", "avg_pool_3x3", "none")
    now = {k: v.detach().numpy() for k, v in sn.state_dict().items()}
    ini = {k: v.numpy() for k, v in init.items()}
    cells = [0, 2, 4]  # search cells with N=1; cells 1 and 3 are the residual blocks
    v0, v1 = [], []
    for i in cells:  # path [0, 1, 3]: conv weight of edge 0, then the pool's constant (C, 3, 3) of 1/9
        c = now[f"cells.{i}.edges.0.nor_conv_3x3.1.weight"].shape[0]
        v0 += [ini[f"cells.{i}.edges.0.nor_conv_3x3.1.weight"].ravel(), np.full(c * 9, 1 / 9)]
        v1 += [now[f"cells.{i}.edges.0.nor_conv_3x3.1.weight"].ravel(), np.full(c * 9, 1 / 9)]
    fixed = [n for n, _ in sn.named_parameters() if not n.startswith(("cells.0.", "cells.2.", "cells.4."))]
    assert "cells.1.shortcut.1.weight" in fixed and "classifier.bias" in fixed and "stem.1.bias" in fixed
    v0 += [ini[n].ravel() for n in fixed]
    v1 += [now[n].ravel() for n in fixed]
    a, b = np.concatenate(v0).astype(np.float64), np.concatenate(v1).astype(np.float64)
    want = math.acos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert angle(sn, arch, init, normalize=False) == pytest.approx(want, rel=1e-9)
    assert angle(sn, arch, init) == pytest.approx(want / math.pi, rel=1e-9)


def test_nb201_multiplicity_dropped_paths_and_unmoved():
    torch.manual_seed(0)
    sn = NB201(C=4, N=1, resolution=8).supernet()
    init = {k: v.clone() for k, v in sn.state_dict().items()}
    arch = ("nor_conv_3x3", "none", "skip_connect", "none", "nor_conv_1x1", "nor_conv_3x3")
    assert angle(sn, arch, init) == pytest.approx(0.0, abs=1e-6)  # nothing moved
    pieces = angle_pieces(sn, arch)
    # edge 1<-0 lies on paths [0,1,2,3] and [0,1,3]
    assert pieces[("param", "cells.0.edges.0.nor_conv_3x3.1.weight")] == 2
    assert angle(sn, ("none",) * 6, init) == 0.0
    assert angle(sn, ("skip_connect", "none", "none", "none", "none", "none"), init) == 0.0  # 3 unreachable


def test_darts_pieces_and_cache():
    torch.manual_seed(0)
    sn = DARTS(C=4, layers=3, resolution=8).supernet(C=4, layers=3)
    init = _moved(sn)
    pieces = angle_pieces(sn, DARTS_V2)
    assert ("const", "eye", 4) in pieces  # stride-1 skip in a normal cell
    assert ("param", "classifier.weight") in pieces and ("param", "classifier.bias") not in pieces
    scorer = AngleScorer(sn, init)
    a1 = scorer(DARTS_V2)
    assert 0.0 < a1 < 1.0 and scorer(DARTS_V2) == a1
    with torch.no_grad():
        sn.classifier.weight.mul_(-1)  # version bump invalidates the cached sums
    assert scorer(DARTS_V2) != a1


def test_angle_bad_initial_state():
    sn = NB201(C=4, N=1, resolution=8).supernet()
    with pytest.raises(ValueError, match="initial_state"):
        angle(sn, ("nor_conv_3x3",) * 6, [1, 2])
    with pytest.raises(ValueError, match="no entry"):
        angle(sn, ("nor_conv_3x3",) * 6, {})


def _tiny():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces"))
    from _tiny_space import TinySpace

    torch.manual_seed(0)
    return TinySpace().supernet()


def test_space_without_own_vector_uses_path_parameters():
    sn = _tiny()
    init = _moved(sn)
    arch = ("conv3x3", "conv1x1", "conv3x3")
    path = sn.path_parameters(arch)
    assert angle_pieces(sn, arch) == angle_pieces(sn, arch, "params") == {("param", n): 1 for n in path}
    with pytest.raises(NotImplementedError, match="convention='rlnas'.*'tiny'"):
        angle(sn, arch, init, convention="rlnas")
    now = dict(sn.named_parameters())
    a = torch.cat([init[n].reshape(-1) for n in path]).double()
    b = torch.cat([now[n].detach().reshape(-1) for n in path]).double()
    want = math.acos(float(a @ b / a.norm() / b.norm())) / math.pi
    assert angle(sn, arch, init) == pytest.approx(want, rel=1e-9)


class _Box:
    """A slice of a parameter as a path entry (the ``ParamSlice`` protocol: ``name`` and ``view``)."""

    def __init__(self, name, rows):
        self.name, self.rows = name, rows

    def view(self, t):
        return t[:self.rows]

    def __hash__(self):
        return hash((self.name, self.rows))

    def __eq__(self, other):
        return isinstance(other, _Box) and (self.name, self.rows) == (other.name, other.rows)


def test_slice_pieces_use_the_box_only():
    sn = _tiny()
    init = _moved(sn)

    class Sliced(type(sn)):
        def angle_pieces(self, arch):
            return Counter({("param", _Box("classifier.weight", 2)): 1, ("param", "classifier.bias"): 1})

    sliced = Sliced(sn.space)
    sliced.load_state_dict(sn.state_dict())
    w0, b0 = init["classifier.weight"][:2].reshape(-1), init["classifier.bias"]
    w1, b1 = sn.classifier.weight.detach()[:2].reshape(-1), sn.classifier.bias.detach()
    a, b = torch.cat([w0, b0]).double(), torch.cat([w1, b1]).double()
    want = math.acos(float(a @ b / a.norm() / b.norm())) / math.pi
    assert angle(sliced, ("conv3x3",) * 3, init) == pytest.approx(want, rel=1e-9)
