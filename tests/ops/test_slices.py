"""Slices of parameters (ParamSlice): perturbing a box equals perturbing its whole tensor, restricted.

Every backend runnable here (reference, cpp, triton under TRITON_INTERPRET=1) is checked against the
reference normals of the FULL tensor, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastnas
from fastnas.ops import ParamSlice, path_params
from fastnas.ops.layout import MAX_OUTER_RANK, resolve_params
from fastnas.ops.perturb import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
STATUS = fastnas.backends()
BACKENDS = ["reference"] + [b for b in ("cpp", "triton") if STATUS[b].available and "cpu" in STATUS[b].devices]

# (full shape, index): odd sizes, one partial dim, several, a run of one element, the whole tensor,
# and boxes with more partial dims than the kernels' two outer dims (split into several segments).
CASES = [
    ((13,), ((3, 10),)),
    ((7, 5, 3, 3), ((1, 4), (2, 5))),
    ((7, 5, 3, 3), ((0, 7), (0, 5), (1, 2))),
    ((7, 5, 3, 3), ((2, 3), (1, 4), (0, 2), (1, 3))),
    ((4, 5, 6, 7), ((1, 3), (1, 4), (2, 5), (3, 4))),
    ((3, 4, 5, 6, 2), ((0, 2), (1, 3), (1, 4), (2, 5), (1, 2))),
    ((9, 11), ((0, 9), (0, 11))),
    ((6, 10), ((5, 6),)),
]


def full_expected(t: torch.Tensor, sigma: float, seed: int, stream: int, offset: int) -> torch.Tensor:
    """t + sigma * z over the whole tensor, from the reference normals of its global indices."""
    z = reference.normals(t.numel(), seed, stream, offset).view(t.shape)
    if t.dtype == torch.float64:
        return t + z.double() * sigma
    return (t.float() + z * torch.tensor(sigma, dtype=torch.float32)).to(t.dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def box_mask(s: ParamSlice, shape) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    s.view(m).fill_(True)
    return m


# ---- ParamSlice and path_params ------------------------------------------------------------------

def test_param_slice_shape_view_and_text():
    s = ParamSlice("conv.weight", ((0, 32), (0, 16)))
    assert str(s) == "conv.weight[0:32, 0:16]"
    assert s.shape_of((64, 32, 3, 3)) == (32, 16, 3, 3)
    assert s.numel((64, 32, 3, 3)) == 32 * 16 * 9
    w = torch.randn(64, 32, 3, 3)
    assert s.view(w).data_ptr() == w.data_ptr() and torch.equal(s.view(w), w[0:32, 0:16])
    assert ParamSlice("conv.weight", [[0, 32], [0, 16]]) == s  # lists normalised to tuples
    assert hash(ParamSlice("conv.weight", [(0, 32), (0, 16)])) == hash(s)
    assert len({s, ParamSlice("conv.weight", ((0, 32), (0, 16))), ParamSlice("conv.weight", ((0, 31),))}) == 2
    assert str(ParamSlice("b", ())) == "b[:]"
    assert fastnas.ParamSlice is ParamSlice


@pytest.mark.parametrize("index,exc,pattern", [
    (((3, 3),), ValueError, r"range 3:3 of dim 0 is empty"),
    (((4, 2),), ValueError, r"range 4:2 of dim 0"),
    (((-1, 2),), ValueError, r"range -1:2"),
    (((0, 1.5),), TypeError, r"pair of ints"),
    (((0, True),), TypeError, r"pair of ints"),
    ((0, 3), TypeError, r"index\[0\] = 0"),
    (5, TypeError, r"sequence of \(start, stop\) pairs"),
])
def test_param_slice_rejects_bad_ranges(index, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ParamSlice("w", index)


def test_param_slice_checks_the_tensor_shape():
    s = ParamSlice("w", ((0, 4), (2, 9)))
    with pytest.raises(ValueError, match=r"w\[0:4, 2:9\]: range 2:9 of dim 1 is out of bounds for shape \(4, 8\)"):
        s.shape_of((4, 8))
    with pytest.raises(ValueError, match=r"2 ranges for a tensor of shape \(4,\)"):
        s.view(torch.zeros(4))
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="out of bounds"):
        fastnas.perturb_([(s, lin.weight)], 0.1)


def test_path_params_mixes_names_and_slices():
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    s = ParamSlice("0.weight", ((0, 4), (0, 6)))
    got = path_params(model, ["1.bias", s])
    assert got[0] == ("1.bias", model[1].bias)
    assert got[1][0] == s and got[1][1] is model[0].weight
    with pytest.raises(ValueError, match=r"no parameter '0.weigth'.*did you mean '0.weight'"):
        path_params(model, ["0.weigth"])
    with pytest.raises(ValueError, match=r"no parameter"):
        path_params(model, [ParamSlice("2.weight", ((0, 1),))])
    with pytest.raises(ValueError, match="out of bounds"):
        path_params(model, [ParamSlice("0.weight", ((0, 9),))])
    with pytest.raises(TypeError, match=r"entries\[0\]: expected a parameter name"):
        path_params(model, [3])


def test_layout_accepts_a_module():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    layout = fastnas.ParamLayout(model)
    want = fastnas.ParamLayout.from_module(model)
    assert list(layout) == list(want) and layout.total == 26
    assert layout.name_of(model[2].weight) == "2.weight"  # tensors found by identity, as from_module
    assert ParamSlice("2.weight", ((0, 1),)) in layout
    assert layout.offset(ParamSlice("2.weight", ((0, 1),))) == 16
    with pytest.raises(TypeError, match="entries\\[0\\]: expected a \\(name, numel\\) pair"):
        fastnas.ParamLayout([model[0]])
    with pytest.raises(TypeError, match="from_named"):
        fastnas.ParamLayout(torch.zeros(3))


def test_boxes_split_into_segments_of_at_most_two_outer_dims():
    t = torch.zeros(3, 4, 5, 6, 2)
    s = ParamSlice("t", ((0, 2), (1, 3), (1, 4), (2, 5), (1, 2)))
    segs = resolve_params([(s, t)], None)
    assert len(segs) == 2 * 2  # two lead dims enumerated, two kept as the kernels' outer grid
    assert all(seg.size0 * seg.size1 * seg.run == seg.numel for seg in segs)
    assert [seg.pos for seg in segs] == [k * segs[0].numel for k in range(4)]
    assert sum(seg.numel for seg in segs) == s.numel(t.shape)
    flat = torch.cat([seg.flat_indices().reshape(-1) for seg in segs])
    want = s.view(torch.arange(t.numel()).view(t.shape)).reshape(-1)
    assert torch.equal(flat, want)
    assert MAX_OUTER_RANK == 2
    # Whole dims merge: weight[0:3] of (8, 5, 3, 3) is one run of 3 * 45 elements.
    (seg,) = resolve_params([(ParamSlice("w", ((0, 3),)), torch.zeros(8, 5, 3, 3))], None)
    assert (seg.run, seg.size0, seg.size1) == (135, 1, 1)


# ---- values on every backend ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_slice_equals_whole_tensor_perturbation_restricted(backend, dtype):
    g = torch.Generator().manual_seed(1)
    cases = CASES if backend != "triton" else CASES[:5]  # the interpreter is slow
    for shape, index in cases:
        w = torch.randn(shape, generator=g).to(dtype)
        layout = fastnas.ParamLayout([("a", 11), ("w", w.numel())])  # a nonzero, unaligned offset
        s = ParamSlice("w", index)
        want = full_expected(w, 0.05, 3, 7, 11)
        p = w.clone()
        backup = fastnas.perturb_([(s, p)], 0.05, seed=3, stream=7, layout=layout, backend=backend)
        mask = box_mask(s, shape)
        assert torch.equal(bits(p[mask]), bits(want[mask])), (shape, index)
        assert torch.equal(bits(p[~mask]), bits(w[~mask])), (shape, index)  # nothing outside the box moves
        fastnas.restore_([(s, p)], backup, backend=backend)
        assert torch.equal(bits(p), bits(w)), (shape, index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_whole_tensors_and_slices_equal_the_whole_model(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3), nn.Linear(6, 5))
    layout = fastnas.ParamLayout(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    full = {n: full_expected(p, 0.1, 9, 2, layout.offset(n)) for n, p in before.items()}
    entries = ["0.bias", ParamSlice("0.weight", ((1, 5), (0, 2))), "1.weight",
               ParamSlice("2.weight", ((0, 6), (3, 7), (1, 2))), ParamSlice("3.weight", ((2, 4),))]
    params = path_params(model, entries)
    with torch.no_grad(), fastnas.perturbed(params, 0.1, seed=9, stream=2, layout=layout, backend=backend):
        named = dict(model.named_parameters())
        for e in entries:
            name = e if isinstance(e, str) else e.name
            mask = torch.ones(before[name].shape, dtype=torch.bool) if isinstance(e, str) else \
                box_mask(e, before[name].shape)
            assert torch.equal(named[name][mask], full[name][mask]), str(e)
            assert torch.equal(named[name][~mask], before[name][~mask]), str(e)
        for name in ("1.bias", "2.bias", "3.bias"):
            assert torch.equal(named[name], before[name])
    for n, p in model.named_parameters():
        assert torch.equal(bits(p.detach()), bits(before[n])), n


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_slices_of_one_tensor(backend):
    w = torch.randn(10, 7)
    layout = fastnas.ParamLayout([("w", 70)])
    a, b, c = ParamSlice("w", ((0, 3),)), ParamSlice("w", ((3, 10), (0, 2))), ParamSlice("w", ((5, 8), (4, 7)))
    p = w.clone()
    backup = fastnas.perturb_([(a, p), (b, p), (c, p)], 0.2, seed=1, stream=0, layout=layout, backend=backend)
    want = full_expected(w, 0.2, 1, 0, 0)
    mask = box_mask(a, w.shape) | box_mask(b, w.shape) | box_mask(c, w.shape)
    assert torch.equal(p[mask], want[mask]) and torch.equal(p[~mask], w[~mask])
    fastnas.restore_([(a, p), (b, p), (c, p)], backup, backend=backend)
    assert torch.equal(bits(p), bits(w))


def test_without_a_layout_slices_share_their_tensor_offset():
    w, v = torch.randn(6, 5), torch.randn(9)
    a, b = ParamSlice("w", ((0, 2),)), ParamSlice("w", ((4, 6), (1, 3)))
    p, q = w.clone(), v.clone()
    fastnas.perturb_([(a, p), ("v", q), (b, p)], 0.3, seed=4)
    want_w, want_v = full_expected(w, 0.3, 4, 0, 0), full_expected(v, 0.3, 4, 0, 30)
    mask = box_mask(a, w.shape) | box_mask(b, w.shape)
    assert torch.equal(p[mask], want_w[mask]) and torch.equal(q, want_v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perturbed_copies_of_slices(backend):
    w, v = torch.randn(5, 4, 3), torch.randn(7)
    layout = fastnas.ParamLayout([("v", 7), ("w", 60)])
    s = ParamSlice("w", ((1, 4), (1, 3)))
    orig_w = w.clone()
    outs = fastnas.perturbed_copies([("v", v), (s, w)], [0.01, 0.1], seed=2, stream=5, layout=layout,
                                    backend=backend)
    assert torch.equal(w, orig_w)  # the master is never written
    assert outs[0].shape == (2, 7) and outs[1].shape == (2, 3, 2, 3) and outs[1].is_contiguous()
    for k, sigma in enumerate([0.01, 0.1]):
        assert torch.equal(outs[1][k], s.view(full_expected(w, sigma, 2, 5 + k, 7)))
        assert torch.equal(outs[0][k], full_expected(v, sigma, 2, 5 + k, 0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backup_reuse_and_restore_checks_with_slices(backend):
    w = torch.randn(8, 6)
    s, t = ParamSlice("w", ((0, 4),)), ParamSlice("w", ((0, 5),))
    backup = None
    for i in range(3):
        backup = fastnas.perturb_([(s, w)], 0.1 * (i + 1), seed=i, backend=backend, backup=backup)
        with pytest.raises(ValueError, match="does not belong"):
            fastnas.restore_([(t, w)], backup)
        with pytest.raises(ValueError, match="does not belong"):
            fastnas.restore_([w], backup)
        before = w.clone()
        fastnas.restore_([(s, w)], backup, backend=backend)
        assert torch.equal(w[4:], before[4:])


def test_overlapping_entries_are_rejected():
    w = torch.randn(6, 6)
    a, b = ParamSlice("w", ((0, 3), (0, 3))), ParamSlice("w", ((2, 5), (2, 5)))
    orig = w.clone()
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] overlap"):
        fastnas.perturb_([(a, w), (b, w)], 0.1)
    with pytest.raises(ValueError, match="overlap"):
        fastnas.perturb_([("w", w), (a, w)], 0.1)
    assert torch.equal(w, orig)
    # Touching boxes do not overlap.
    fastnas.restore_([(a, w), (ParamSlice("w", ((3, 6),)), w)],
                     fastnas.perturb_([(a, w), (ParamSlice("w", ((3, 6),)), w)], 0.1))
    assert torch.equal(w, orig)


def test_slice_paired_with_its_view_is_rejected_with_a_hint():
    lin = nn.Linear(6, 4)
    layout = fastnas.ParamLayout(lin)
    s = ParamSlice("weight", ((0, 2),))
    with pytest.raises(ValueError, match="paired with its FULL tensor"):
        fastnas.perturb_([(s, s.view(lin.weight).contiguous())], 0.1, layout=layout)
    with pytest.raises(ValueError, match="not contiguous"):
        fastnas.perturb_([("weight", lin.weight[:, :3])], 0.1)


# ---- GPU -----------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_slices_equal_the_same_backends_whole_tensor(backend, dtype):
    if not STATUS[backend].available:
        pytest.skip(f"{backend}: {STATUS[backend].reason}")
    g = torch.Generator().manual_seed(2)
    for shape, index in CASES + [((300, 257), ((5, 290), (3, 250))), ((40, 5000), ((1, 39), (3, 4999)))]:
        w = torch.randn(shape, generator=g).to(dtype).cuda()
        layout = fastnas.ParamLayout([("a", 11), ("w", w.numel())])
        s = ParamSlice("w", index)
        full, part = w.clone(), w.clone()
        fastnas.perturb_([("w", full)], 0.05, seed=3, stream=7, layout=layout, backend=backend)
        backup = fastnas.perturb_([(s, part)], 0.05, seed=3, stream=7, layout=layout, backend=backend)
        mask = box_mask(s, shape).cuda()
        assert torch.equal(bits(part[mask]), bits(full[mask])), (shape, index)  # same device: bit for bit
        assert torch.equal(bits(part[~mask]), bits(w[~mask])), (shape, index)
        copies = fastnas.perturbed_copies([(s, w)], [0.05], seed=3, stream=7, layout=layout, backend=backend)
        assert torch.equal(bits(copies[0][0]), bits(s.view(full).contiguous())), (shape, index)
        fastnas.restore_([(s, part)], backup, backend=backend)
        assert torch.equal(bits(part), bits(w)), (shape, index)
