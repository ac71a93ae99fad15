"""NB201's per-cell capability: a CellwiseArch gives each searched cell of the supernet its own cell."""

from __future__ import annotations

import random
import re

import pytest
import torch

from fastnas.spaces import NB201, CellwiseArch
from fastnas.spaces.nb201_ops import Cell, SuperCell

A = ("nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3", "none", "nor_conv_3x3")


def _setup(N=2, seed=0):
    torch.manual_seed(seed)
    space = NB201(C=4, N=N, resolution=8)
    net = space.supernet()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is not the identity
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    return space, net, x


def _hand_assembled(space, net, archs):
    """The network of per-cell ``archs`` built by hand: the standalone network of the first cell, every
    searched cell replaced by a ``Cell`` of its own architecture with the supernet's weights of its ops."""
    model = net.extract(archs[0])
    searched = [i for i, c in enumerate(net.cells) if isinstance(c, SuperCell)]
    assert len(searched) == len(archs)
    for i, arch in zip(searched, archs):
        channels = net.cells[i].edges[0]["nor_conv_1x1"][1].weight.shape[0]
        cell = Cell(arch, channels, affine=net.affine_cells)
        for k, op in enumerate(arch):
            if op in ("nor_conv_1x1", "nor_conv_3x3"):
                cell.edges[k].load_state_dict(net.cells[i].edges[k][op].state_dict())
        model.cells[i] = cell
    return model.eval()


def test_the_same_cell_everywhere_is_todays_forward():
    space, net, x = _setup()
    cw = CellwiseArch([A] * 6)
    net.eval()
    assert torch.equal(net(x, cw), net(x, A))
    assert net.path_parameters(cw) == net.path_parameters(A)
    net.train()  # train mode: same batch statistics, same running-statistics updates
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out_a = net(x, A)
    after_a = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(before)
    assert torch.equal(net(x, cw), out_a)
    for k, v in net.state_dict().items():
        assert torch.equal(v, after_a[k]), k


def test_different_cells_equal_a_hand_assembled_network():
    space, net, x = _setup()
    rng = random.Random(3)
    for _ in range(3):
        cw = space.sample_cellwise(rng)
        assert len(set(cw)) > 1
        ref = _hand_assembled(space, net, cw)
        net.eval()
        torch.testing.assert_close(net(x, cw), ref(x), rtol=0, atol=0)


def test_per_cell_path_parameters_and_gradients():
    space, net, x = _setup()
    cw = space.sample_cellwise(random.Random(1))
    searched = [i for i, c in enumerate(net.cells) if isinstance(c, SuperCell)]
    edge_key = re.compile(r"^cells\.(\d+)\.edges\.(\d+)\.(\w+)\.")
    expected = []
    for name, _ in net.named_parameters():  # independent: from the names alone
        m = edge_key.match(name)
        if m is None or int(m.group(1)) not in searched:
            expected.append(name)
        elif cw[searched.index(int(m.group(1)))][int(m.group(2))] == m.group(3):
            expected.append(name)
    assert net.path_parameters(cw) == expected
    net.train()
    net(x, cw).sum().backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    assert with_grad <= set(expected)
    # the convolutions into the output node always reach the loss (others may feed a node nobody reads)
    into_output = {n for n in expected if n.endswith(".1.weight") and re.search(r"\.edges\.[345]\.", n)}
    assert into_output and into_output <= with_grad


def test_bad_cellwise_input_is_named():
    space, net, x = _setup(N=1)  # 3 searched cells
    with pytest.raises(ValueError, match="CellwiseArch of 2 cell architectures; this supernet has 3"):
        net(x, CellwiseArch([A, A]))
    with pytest.raises(ValueError, match="edge 1<-0: unknown op 'conv'"):
        net(x, CellwiseArch([A, A, ("conv",) + A[1:]]))
    with pytest.raises(ValueError, match="is a CellwiseArch"):
        space.validate(CellwiseArch([A] * 3))
    with pytest.raises(ValueError, match="is a CellwiseArch"):
        net.extract(CellwiseArch([A] * 3))
