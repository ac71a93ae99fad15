"""The supernet samplers: uniform (SPOS), per-cell with RLNAS's redraw, FairNAS strict fairness."""

from __future__ import annotations

import collections
import itertools
import random

import pytest

from fastnas.seeds import derive_seed
from fastnas.spaces import DARTS, NB201, CellwiseArch, NB201Size
from fastnas.spaces.nb201 import EDGES, OPS
from fastnas.train import (SAMPLERS, FairSampler, MultiPath, PerCellSampler, SinglePath, UniformSampler,
                           supernet_plan)


def _space(N=2, sampler="uniform"):
    if sampler == "sandwich":  # needs a nested family
        return NB201Size(candidates=(2, 4), resolution=8)
    return NB201(C=4, N=N, resolution=8)


def _connected(cell) -> bool:
    """Independent check: every node (the output included) has a non-``none`` input from a non-zero node."""
    alive = {0}
    for node in (1, 2, 3):
        if any(to == node and src in alive and op != "none" for (to, src), op in zip(EDGES, cell)):
            alive.add(node)
    return 3 in alive and alive == {0, 1, 2, 3}


@pytest.mark.parametrize("name", SAMPLERS)
def test_choices_are_a_function_of_seed_and_step(name):
    space = _space(sampler=name)
    a, _ = supernet_plan(name, space, seed=3)
    b, _ = supernet_plan(name, _space(sampler=name), seed=3)
    other, _ = supernet_plan(name, space, seed=4)
    steps = [0, 1, 7, 1000]
    first = [a.sample(s) for s in steps]
    assert first == [b.sample(s) for s in reversed(steps)][::-1]  # any order, any object: same choices
    assert first == [a.sample(s) for s in steps]
    assert first != [other.sample(s) for s in steps]
    assert a.sample(0) != a.sample(1)


def test_uniform_is_todays_spos_sampler():
    space = _space()
    s = UniformSampler(space, seed=5)
    assert [s.sample(k) for k in range(4)] == [space.sample(random.Random(derive_seed(5, "arch", k)))
                                               for k in range(4)]
    sampler, strategy = supernet_plan("uniform", space, 5)
    assert isinstance(sampler, UniformSampler) and isinstance(strategy, SinglePath)


def test_fair_paths_hold_every_op_of_every_edge_exactly_once():
    space = _space()
    sampler, strategy = supernet_plan("fair", space, seed=1)
    assert isinstance(sampler, FairSampler) and isinstance(strategy, MultiPath)
    orders = set()
    for step in range(50):
        paths = sampler.sample(step)
        assert len(paths) == len(OPS)
        for arch in paths:
            assert space.validate(arch) == arch
        for k in range(len(EDGES)):
            assert sorted(p[k] for p in paths) == sorted(OPS), (step, k)
        orders.add(paths)
    assert len(orders) == 50  # random permutations, not a fixed schedule


def test_per_cell_never_yields_a_disconnected_cell_and_cells_differ():
    space = _space(N=2)  # 6 searched cells
    sampler, strategy = supernet_plan("per-cell", space, seed=0)
    assert isinstance(sampler, PerCellSampler) and isinstance(strategy, SinglePath)
    distinct = []
    for step in range(300):
        choice = sampler.sample(step)
        assert isinstance(choice, CellwiseArch) and len(choice) == 6
        for cell in choice:
            assert space.validate(cell) == cell and _connected(cell), (step, cell)
        distinct.append(len(set(choice)))
    assert min(distinct) >= 2 and sum(d == 6 for d in distinct) > 250


def test_per_cell_redraw_is_rlnas_node_by_node_rejection():
    """Each node's incoming ops uniform over the combinations that are not all ``none`` (RLNAS's
    ``forward_urs``): node 1 over 4 ops, node 2 over 24 pairs, node 3 over 124 triples; and the whole
    cell is not redrawn (nodes are independent). Checked on the frequencies of 20,000 cells."""
    space = _space()
    rng = random.Random(0)
    cells = [space.sample_connected(rng) for _ in range(20000)]
    node1 = collections.Counter(c[0] for c in cells)
    assert set(node1) == set(OPS) - {"none"}
    assert all(abs(n / 20000 - 1 / 4) < 0.02 for n in node1.values())
    pairs = collections.Counter(c[1:3] for c in cells)
    assert set(pairs) == set(itertools.product(OPS, repeat=2)) - {("none", "none")}
    assert all(abs(n / 20000 - 1 / 24) < 0.01 for n in pairs.values())
    triples = collections.Counter(c[3:] for c in cells)
    assert ("none", "none", "none") not in triples and len(triples) == 124
    # independence of nodes 1 and 3 (a whole-cell redraw would also be independent; a repair that
    # fills a "none" from the other nodes would not): P(node1 = conv3 and edge 3<-0 = none)
    joint = sum(c[0] == "nor_conv_3x3" and c[3] == "none" for c in cells) / 20000
    p3_none = sum(c[3] == "none" for c in cells) / 20000
    assert abs(joint - 0.25 * p3_none) < 0.01
    assert abs(p3_none - 24 / 124) < 0.01  # edge 3<-0 is none in 25 - 1 = 24 of the 124 triples


def test_spaces_without_the_capability_are_refused():
    darts = DARTS(C=8, layers=3)
    with pytest.raises(ValueError, match="sampler='per-cell' is not available for space 'darts'.*shared by all"):
        supernet_plan("per-cell", darts)
    with pytest.raises(ValueError, match="sampler='fair' is not available for space 'darts'"):
        supernet_plan("fair", darts)
    assert isinstance(supernet_plan("uniform", darts)[0], UniformSampler)
    genotype = darts.sample(random.Random(0))
    with pytest.raises(ValueError, match="is a CellwiseArch: the DARTS supernet has no per-cell"):
        darts.supernet().path_parameters(CellwiseArch([genotype] * 4))
    with pytest.raises(ValueError, match="sampler='percell'.*did you mean 'per-cell'"):
        supernet_plan("percell", _space())
    with pytest.raises(ValueError, match="has no sample_cellwise"):
        PerCellSampler(object())
