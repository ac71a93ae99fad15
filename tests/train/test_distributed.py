"""Supernet and family training on torch.distributed (2 Gloo processes on the CPU) against one process.

The spawned ranks run the scenarios of ``dist_worker.py`` once per module (one spawn for most tests);
this process runs the same scenarios without ``torch.distributed`` as the reference: the same global
batch, data and seeds.

Tolerance of "equal to the single-process run": the comparisons run in float64 (``dist_worker.DTYPE``),
with ``rtol=1e-10, atol=1e-12`` on every weight and buffer. The distributed run computes the same sums
in another order -- the batch mean of the loss as two half means, the BatchNorm statistics as
all-reduced sums -- so values differ by rounding only: measured at most 1e-14 here (100x below the
tolerance). float64 because in float32 that rounding (a few ulp, ~1e-7) can flip a ReLU whose input is
within rounding of zero, which moves a weight by ~lr * |x| * |g| at once: an fp32 NB201 C=8 run moved by
6e-5 in 8 steps -- as much as the single-process run moves when its initial weights are scaled by
1 + 1e-7 -- so fp32 agreement is bounded by the model's sensitivity, not by the distributed code. One
float32 run checks that path with ``rtol=1e-4, atol=1e-5`` (measured 2.4e-7 on its tiny model). Without
synchronised BatchNorm the runs differ by ~0.3 (``test_without_sync_bn_the_trajectory_differs``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import dist_worker
from fastnas.spaces.elastic_resnet_ops import ElasticBatchNorm2d
from fastnas.train import distributed as fdist
from fastnas.train.sync_batchnorm import SyncBatchNorm2d, sync_batchnorm, synced_batchnorm, unsync_batchnorm

WORLD = 2
RTOL, ATOL = 1e-10, 1e-12  # float64 (see the module docstring)
RTOL32, ATOL32 = 1e-4, 1e-5  # float32


def _spawn(tmp: Path, names: List[str], timeout: float = 120.0, **kwargs) -> List[int]:
    """Runs ``dist_worker.worker`` on ``WORLD`` spawned ranks; returns their exit codes."""
    ctx = multiprocessing.get_context("spawn")
    init_file = tmp / f"init_{time.monotonic_ns()}"
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        procs = [ctx.Process(target=dist_worker.worker, args=(r, WORLD, str(init_file), str(tmp), names, kwargs))
                 for r in range(WORLD)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
        codes = []
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
                codes.append(None)
            else:
                codes.append(p.exitcode)
        return codes
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load(tmp: Path, name: str) -> List[Dict]:
    outs = []
    for r in range(WORLD):
        f = tmp / f"{name}_rank{r}.pt"
        assert f.exists(), f"rank {r} wrote no result for {name!r}"
        out = torch.load(f, weights_only=False)
        assert "crash" not in out, f"rank {r} crashed in {name!r}: {out['crash']}"
        outs.append(out)
    return outs


class World:
    """The results of one spawn of the scenarios; the last one, ``resume``, with rank 1 killed in it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ckpt = tmp / "resume" / "supernet.pt"
        # resume: 3 epochs of 2 steps; rank 1 dies at the 6th step, after the checkpoint of epoch 2
        self.codes = _spawn(tmp, list(dist_worker.SCENARIOS) + ["resume"], die_at=5, ckpt=str(self.ckpt))

    def __call__(self, name: str) -> List[Dict]:
        return _load(self.tmp, name)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("dist"))
    assert world.codes[0] == 0, f"exit codes of the ranks: {world.codes}"
    return world


def _close(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], rtol: float = RTOL, atol: float = ATOL) -> float:
    """Asserts ``a`` and ``b`` agree within the tolerance; returns the largest absolute difference."""
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")
            worst = max(worst, float((a[k] - b[k]).abs().max()))
        else:
            assert torch.equal(a[k], b[k]), k
    return worst


def _same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _untouched(out: Dict) -> List[str]:
    """Parameters equal (bit for bit) to their initial values."""
    return [k for k in out["init"] if k in out["final"] and torch.equal(out["init"][k], out["final"][k])
            and "running" not in k and "num_batches" not in k]


@pytest.mark.parametrize("name, kwargs", [
    ("spos_sync", {}),
    ("spos_sync_uneven", {"n": 35, "epochs": 1}),  # a last batch of 3: shards of 1 and 2, weighted
    ("spos_sync_fp32", {"dtype": torch.float32}),
])
def test_spos_with_sync_bn_equals_one_process(ranks, name, kwargs):
    ref = dist_worker.spos(**kwargs)
    r0, r1 = ranks(name)
    _same(r0["final"], r1["final"])  # the ranks hold one model
    tol = {"rtol": RTOL32, "atol": ATOL32} if kwargs.get("dtype") == torch.float32 else {}
    _close(ref["final"], r0["final"], **tol)
    assert r0["loss"] == pytest.approx(ref["loss"], rel=1e-5) and r0["acc"] == ref["acc"]
    # off-path parameters: bit-identical to their initial values, the same ones as in one process
    off = _untouched(ref)
    assert off, "a few SPOS steps leave some ops untrained"
    assert _untouched(r0) == off and _untouched(r1) == off
    assert r0["bn_classes"] == ["BatchNorm2d"]  # converted for training only


def test_without_sync_bn_the_trajectory_differs(ranks):
    ref = dist_worker.spos()
    r0, r1 = ranks("spos_nosync")
    _same(r0["final"], r1["final"])  # weights all-reduced, running statistics averaged over the ranks
    diffs = {k: float((ref["final"][k] - r0["final"][k]).abs().max()) for k in ref["final"]
             if ref["final"][k].is_floating_point()}
    assert max(v for k, v in diffs.items() if "running_var" in k) > 1e-3  # half-batch statistics
    assert max(v for k, v in diffs.items() if "running" not in k) > 1e-3  # and other weights
    assert _untouched(r0) == _untouched(ref)


def test_sandwich_step_on_a_family_equals_one_process(ranks):
    ref = dist_worker.sandwich()
    r0, r1 = ranks("sandwich")
    _same(r0["final"], r1["final"])
    _close(ref["final"], r0["final"])
    assert r0["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_debug_mode_names_the_step_and_ranks_that_sample_another_path(ranks):
    for out in ranks("mismatch"):
        assert out["error"] == "DistributedMismatchError"
        assert "step 2: ranks [1] sample another architecture than rank 0" in out["message"]


def test_batch_size_not_divisible_by_world_size_is_a_clear_error(ranks):
    for out in ranks("indivisible"):
        assert out["error"] == "ValueError"
        assert "batch_size=15 cannot be split over world size 2" in out["message"]


def test_resume_after_a_rank_is_killed(ranks, tmp_path):
    # the spawn of the fixture: rank 1 was killed (os._exit) in the third epoch, rank 0 failed with it
    assert ranks.codes[1] == 3
    crashed = torch.load(ranks.tmp / "resume_rank0.pt", weights_only=False)
    assert "Connection" in crashed["crash"] or "closed" in crashed["crash"], crashed["crash"][:500]
    assert not (ranks.tmp / "resume_rank1.pt").exists()
    # restart both ranks: they resume from the checkpoint of epoch 2
    codes = _spawn(tmp_path, ["resume"], ckpt=str(ranks.ckpt))
    assert codes == [0, 0]
    r0, r1 = _load(tmp_path, "resume")
    assert r0["resumed_from"] == 2 and r1["resumed_from"] == 2
    assert r0["writers"] == ["supernet.pt"] and r1["writers"] == []  # rank 0 alone writes
    _same(r0["final"], r1["final"])
    ref = dist_worker.resumable(tmp_path / "ref" / "supernet.pt")
    assert ref["writers"] == ["supernet_init.pt", "supernet.pt", "supernet.pt", "supernet.pt"]
    _close(ref["final"], r0["final"])
    assert r0["loss"] == pytest.approx(ref["loss"], rel=1e-5)


# ---- one process: the helpers are a world of size one ------------------------------------------------

def test_one_process_is_a_world_of_one():
    assert fdist.world() == (0, 1) and fdist.is_main()
    fdist.barrier()
    x, y = torch.randn(5, 2), torch.arange(5)
    sx, sy = fdist.shard_batch(x, y)
    assert sx is x and sy is y
    assert fdist.all_reduce_sum(x) is x


def test_shard_bounds_cover_the_batch_contiguously():
    for n, w in ((16, 2), (35, 4), (3, 2), (7, 7)):
        bounds = [fdist.shard_bounds(n, r, w) for r in range(w)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    x = torch.arange(10)
    assert torch.equal(fdist.shard_batch(x, None, rank=1, world_size=2)[0], x[5:])
    with pytest.raises(ValueError, match="a batch of 1 samples cannot be split over world size 2"):
        fdist.shard_batch(x[:1], None, rank=0, world_size=2)
    with pytest.raises(ValueError, match="batch_size=10 cannot be split over world size 3"):
        fdist.check_batch_size(10, 3)


def test_debug_flag_reads_the_environment(monkeypatch):
    monkeypatch.delenv(fdist.DEBUG_ENV, raising=False)
    assert not fdist.debug_enabled()
    monkeypatch.setenv(fdist.DEBUG_ENV, "1")
    assert fdist.debug_enabled() and not fdist.debug_enabled(False)
    monkeypatch.setenv(fdist.DEBUG_ENV, "0")
    assert not fdist.debug_enabled()


def test_sync_batchnorm_converts_in_place_and_back():
    space, net = dist_worker.family()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    n = sync_batchnorm(net)
    assert n == len(bns) and all(isinstance(m, torch.nn.BatchNorm2d) for m in bns)
    assert all(type(m).__name__ == ("SyncElasticBatchNorm2d" if isinstance(m, ElasticBatchNorm2d) else "SyncBatchNorm2d")
               for m in bns)
    _same(state, net.state_dict())
    # one process: the converted layers compute exactly what the plain ones do
    x = torch.randn(4, 3, 8, 8, dtype=dist_worker.DTYPE)
    arch = space.smallest()
    out_synced = net(x, arch)
    assert unsync_batchnorm(net) == n
    net.load_state_dict(state)
    assert torch.equal(out_synced, net(x, arch))
    with synced_batchnorm(net):
        assert all(type(m).__name__.startswith("Sync") for m in bns)
    assert not any(type(m).__name__.startswith("Sync") for m in bns)


def test_sync_batchnorm_names_a_module_it_cannot_convert():
    class MyBN(torch.nn.BatchNorm2d):
        pass

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), MyBN(2))
    with pytest.raises(ValueError, match=r"module '1' is a .*MyBN, a BatchNorm class it cannot convert"):
        sync_batchnorm(net)
    assert type(net[1]) is MyBN
    assert not isinstance(net[1], SyncBatchNorm2d)


def test_a_strategy_without_reduce_grads_is_refused_under_distributed():
    from fastnas.train.loop import _check_plugs
    from fastnas.train.samplers import FixedSampler

    class OldStrategy:
        def step(self, model, choice, x, y, optimizer, *, grad_clip=0.0, label_smoothing=0.0):
            raise AssertionError("not called")

    _check_plugs(OldStrategy(), FixedSampler(None), "fp32", world_size=1)  # one process: as before
    with pytest.raises(ValueError, match=r"OldStrategy.step takes no reduce_grads argument, so it cannot train "
                                         r"under torch.distributed \(world size 2\)"):
        _check_plugs(OldStrategy(), FixedSampler(None), "fp32", world_size=2)
