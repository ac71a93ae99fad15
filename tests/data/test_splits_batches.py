from __future__ import annotations

import numpy as np
import pytest
import torch

from fastnas.data import Batches, augment, batches, from_tensors, load_dataset, split_for_search


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ---- split_for_search ----------------------------------------------------------------------------

@pytest.mark.parametrize("stratified", [True, False])
def test_split_sizes_disjoint_deterministic(stratified):
    n = 101
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.arange(n) % 3
    ds = from_tensors(x, y, x[:5], y[:5], normalize=False)
    s = split_for_search(ds, seed=7, stratified=stratified)
    (a, ya), (b, yb) = s.supernet_train, s.search_valid
    assert a.shape[0] + b.shape[0] == n and abs(a.shape[0] - b.shape[0]) <= 3
    ia, ib = set(a[:, 0, 0, 0].long().tolist()), set(b[:, 0, 0, 0].long().tolist())
    assert not ia & ib and ia | ib == set(range(n))
    assert ya.tolist() == [i % 3 for i in sorted(ia)]  # labels travel with their images
    assert s.test[0] is ds.test_x
    s2 = split_for_search(ds, seed=7, stratified=stratified)
    assert torch.equal(s2.supernet_train[0], a) and torch.equal(s2.search_valid[1], yb)
    s3 = split_for_search(ds, seed=8, stratified=stratified)
    assert not torch.equal(s3.supernet_train[0], a)
    if stratified:
        for c in range(3):
            assert abs((ya == c).sum().item() - (yb == c).sum().item()) <= 1


def test_split_digits(digits):
    s = split_for_search(digits, seed=0)
    (a, ya), (b, yb) = s.supernet_train, s.search_valid
    assert a.shape[0] + b.shape[0] == digits.train_x.shape[0]
    assert abs(a.shape[0] - b.shape[0]) <= 10
    assert set(ya.tolist()) == set(yb.tolist()) == set(range(10))


def test_split_bad_fraction(digits):
    with pytest.raises(ValueError, match="fraction"):
        split_for_search(digits, valid_fraction=1.0)
    with pytest.raises(ValueError, match="valid_fraction"):
        split_for_search(digits, valid_fraction=0.0, stratified=False)


# ---- augment -------------------------------------------------------------------------------------

def test_augment_deterministic_and_changes_images():
    x = torch.randn(64, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    changed = (a != x).flatten(1).any(1)
    assert changed.float().mean() > 0.8  # P(no shift, no flip) = 1/162
    assert torch.equal(x, x.clone())  # input untouched


def test_augment_matches_per_image_reference():
    torch.manual_seed(0)
    x = torch.randn(20, 2, 7, 7)
    g = torch.Generator().manual_seed(5)
    out = augment(x, g, padding=3, fill=(0.5, -1.0))
    g = torch.Generator().manual_seed(5)
    off = torch.randint(0, 7, (2, 20), generator=g)
    flips = torch.rand(20, generator=g) < 0.5
    for i in range(20):
        p = torch.empty(2, 13, 13)
        p[0], p[1] = 0.5, -1.0
        p[:, 3:10, 3:10] = x[i]
        ref = p[:, off[0, i]:off[0, i] + 7, off[1, i]:off[1, i] + 7]
        if flips[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_augment_no_padding_no_flip_is_identity():
    x = torch.randn(4, 1, 5, 5)
    assert torch.equal(augment(x, torch.Generator(), padding=0, flip=False), x)
    with pytest.raises(ValueError, match="fill"):
        augment(x, torch.Generator(), fill=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        augment(x[0], torch.Generator())


# ---- batches -------------------------------------------------------------------------------------

def _data(n=50):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return x, torch.arange(n)


def test_batches_cover_and_deterministic():
    x, y = _data()
    got = list(batches(x, y, 16, shuffle=True, seed=3, epoch=2))
    assert [b[0].shape[0] for b in got] == [16, 16, 16, 2]
    ys = torch.cat([b[1] for b in got])
    assert sorted(ys.tolist()) == list(range(50)) and ys.tolist() != list(range(50))
    for xb, yb in got:
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)
    again = list(batches(x, y, 16, shuffle=True, seed=3, epoch=2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, again))
    other = torch.cat([b[1] for b in batches(x, y, 16, shuffle=True, seed=3, epoch=3)])
    assert not torch.equal(other, ys)
    assert len(Batches(x, y, 16)) == 4 and len(Batches(x, y, 16, drop_last=True)) == 3
    assert [b[0].shape[0] for b in batches(x, y, 16, drop_last=True)] == [16, 16, 16]
    assert torch.cat([b[1] for b in batches(x, y, 16, shuffle=False)]).tolist() == list(range(50))


def test_batches_resume_reproduces_augmented_batches():
    x = torch.randn(70, 3, 8, 8)
    y = torch.arange(70)
    full = list(batches(x, y, 10, seed=1, epoch=4, augment=True))
    resumed = list(Batches(x, y, 10, seed=1, epoch=4, augment=True, start=3))
    assert len(resumed) == len(full) - 3 == len(Batches(x, y, 10, start=3))
    for (a, ya), (b, yb) in zip(full[3:], resumed):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    plain = list(batches(x, y, 10, seed=1, epoch=4))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full, plain))
    assert not torch.equal(full[0][0], plain[0][0])


def test_batches_validation():
    x, y = _data(5)
    with pytest.raises(ValueError, match="batch_size"):
        Batches(x, y, 0)
    with pytest.raises(ValueError, match="samples"):
        Batches(x, y[:4], 2)


def _calibration_reference(x, n_batches, batch_size, seed):
    """The recalibration draw of fastnas 0.1 (metrics.evaluator.calibration_batches), written out."""
    n = x.shape[0]
    if n == 0 or n_batches == 0:
        return []
    g = torch.Generator().manual_seed(seed)
    perms, have = [], 0
    while have < n_batches * batch_size:
        perms.append(torch.randperm(n, generator=g))
        have += n
    idx = torch.cat(perms)[:n_batches * batch_size]
    return list(x.index_select(0, idx).split(batch_size))


@pytest.mark.parametrize("n, n_batches, batch_size", [(50, 3, 16), (50, 7, 16), (10, 5, 4), (16, 2, 8), (5, 0, 2)])
def test_batches_serve_recalibration(n, n_batches, batch_size):
    x, _ = _data(n)
    ref = _calibration_reference(x, n_batches, batch_size, seed=11)
    b = Batches(x, None, batch_size, order_seed=11, num_batches=n_batches)
    got = list(b)
    assert len(b) == len(got) == len(ref) == n_batches
    for (xb, yb), r in zip(got, ref):
        assert yb is None and torch.equal(xb, r)
    assert list(Batches(x[:0], None, 4, num_batches=3)) == [] and len(Batches(x[:0], None, 4, num_batches=3)) == 0
    with pytest.raises(ValueError, match="num_batches"):
        Batches(x, None, 4, num_batches=-1)


def test_batches_serve_evaluation_and_take_an_order_seed():
    x, y = _data(50)
    got = list(Batches(x, y, 16, shuffle=False))
    assert [b[1].tolist() for b in got] == [list(range(i, min(i + 16, 50))) for i in range(0, 50, 16)]
    assert all(torch.equal(xb, x[yb]) for xb, yb in got)
    # order_seed replaces the (seed, epoch) permutation: the SPOS trainer's historical batch order.
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(99))
    seeded = torch.cat([yb for _, yb in Batches(x, y, 16, seed=5, epoch=3, order_seed=99)])
    assert seeded.tolist() == perm.tolist()
    with pytest.raises(ValueError, match="batch_size"):
        Batches(x, y, 2.0)
    with pytest.raises(ValueError, match="start"):
        Batches(x, y, 2, start=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_and_batches_on_cuda():
    x = torch.randn(33, 3, 8, 8)
    cpu = augment(x, torch.Generator().manual_seed(3), fill=(0.1, 0.2, 0.3))
    gpu = augment(x.cuda(), torch.Generator().manual_seed(3), fill=(0.1, 0.2, 0.3))
    assert torch.equal(cpu, gpu.cpu())
    a = list(batches(x, torch.arange(33), 8, seed=2, augment=True))
    b = list(batches(x, torch.arange(33), 8, seed=2, augment=True, device="cuda"))
    assert all(torch.equal(p[0], q[0].cpu()) and q[0].is_cuda for p, q in zip(a, b))


@pytest.mark.parametrize("size", [1, 7, 100, 333, 1000])
def test_stratified_split_exact_size(size):
    from fastnas.data import stratified_split

    rng = np.random.default_rng(size)
    y = rng.integers(0, 7, 1234)
    first, second = stratified_split(y, size / len(y), seed=4, size=size)
    assert len(second) == size and len(first) + len(second) == len(y)
    assert len(np.intersect1d(first, second)) == 0
    for c in range(7):  # every class within one sample of its share
        n_c = int((y == c).sum())
        assert abs(int((y[second] == c).sum()) - n_c * size / len(y)) < 1 + 1e-9


def test_stratified_split_size_is_the_plain_split_where_rounding_hits():
    from fastnas.data import stratified_split

    y = np.repeat(np.arange(10), 60)
    plain = stratified_split(y, 0.1, seed=9)
    sized = stratified_split(y, 0.1, seed=9, size=60)
    assert all((a == b).all() for a, b in zip(plain, sized))
