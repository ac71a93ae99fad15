"""Scenarios of the distributed-training tests, run by each rank of a spawned Gloo world and, with
``rank=None``, by one process as the reference (imported by ``test_distributed.py`` and by the spawned
processes, which find this module on the parent's ``sys.path``)."""

from __future__ import annotations

import datetime
import os
import random
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from fastnas.spaces import create_space
from fastnas.train import TrainConfig, train, train_family, train_supernet
from fastnas.train.samplers import UniformSampler
from fastnas.train.steps import SinglePath
from fastnas.data.batches import Batches

CLASSES = 10


#: The comparisons run in float64: in float32 the distributed run's other reduction order (a few ulp) can
#: flip a ReLU whose input is within rounding of zero, which moves a weight by ~lr * |x| * |g| (measured
#: up to 6e-5 after 8 steps of a C=8 supernet -- the same as perturbing the single-process run's
#: initial weights by 1e-7), so float32 runs agree only as far as the model's sensitivity allows.
DTYPE = torch.float64


def data(n: int, seed: int = 1, dtype: torch.dtype = DTYPE):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g).to(dtype), torch.randint(0, CLASSES, (n,), generator=g)


def nb201(dtype: torch.dtype = DTYPE):
    space = create_space("nb201", channels=4, cells=1, num_classes=CLASSES)
    torch.manual_seed(0)
    return space, space.supernet().to(dtype)


def family():
    space = create_space("nb201_size", candidates=(4, 8), N=1, resolution=8, num_classes=CLASSES)
    torch.manual_seed(0)
    return space, space.supernet().to(DTYPE)


def _state(net: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def spos(n: int = 32, epochs: int = 2, dtype: torch.dtype = DTYPE, **cfg: Any) -> Dict[str, Any]:
    """A few SPOS steps on the NB201 supernet (batch 16)."""
    space, net = nb201(dtype)
    x, y = data(n, dtype=dtype)
    init = _state(net)
    res = train_supernet(net, space, x, y, TrainConfig(epochs=epochs, batch_size=16, lr=0.1, **cfg))
    return {"init": init, "final": _state(net), "loss": res.epoch_loss, "acc": res.epoch_accuracy,
            "bn_classes": sorted({type(m).__name__ for m in net.modules() if "BatchNorm" in type(m).__name__})}


def sandwich() -> Dict[str, Any]:
    """Sandwich steps (largest, smallest, 2 random, distilled) on a nested family."""
    space, net = family()
    x, y = data(32, seed=2)
    init = _state(net)
    res = train_family(net, space, x, y, TrainConfig(epochs=1, batch_size=16, lr=0.1))
    return {"init": init, "final": _state(net), "loss": res.epoch_loss}


class RankSampler:
    """A sampler that (wrongly) depends on the rank from step 2 on."""

    def __init__(self, space: Any, rank: int) -> None:
        self.space, self.rank = space, rank

    def sample(self, step: int) -> Any:
        return self.space.sample(random.Random(step * 10 + (self.rank if step >= 2 else 0)))


def mismatch(rank: int) -> Dict[str, Any]:
    space, net = nb201()
    x, y = data(64)
    cfg = TrainConfig(epochs=1, batch_size=16)
    try:
        train(net, SinglePath(), RankSampler(space, rank), lambda e: Batches(x, y, 16, shuffle=False), cfg,
              debug_dist=True)
    except Exception as e:  # the test checks the type and the message
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None}


def indivisible() -> Dict[str, Any]:
    space, net = nb201()
    x, y = data(30)
    try:
        train_supernet(net, space, x, y, TrainConfig(epochs=1, batch_size=15))
    except ValueError as e:
        return {"error": "ValueError", "message": str(e), "trained": False}
    return {"error": None}


def resumable(ckpt: Path, die_at: Optional[int] = None, rank: int = 0) -> Dict[str, Any]:
    """3 epochs with a checkpoint; rank 1 dies (``os._exit``) at global step ``die_at``. Records which
    ranks wrote files."""
    import fastnas.train.loop as loop
    import fastnas.train.spos as spos_mod

    writers = []

    def recording(save: Callable) -> Callable:
        def wrapped(path, payload):
            writers.append(Path(path).name)
            return save(path, payload)
        return wrapped

    saved = loop.save_checkpoint, spos_mod.save_checkpoint
    loop.save_checkpoint, spos_mod.save_checkpoint = recording(saved[0]), recording(saved[1])

    def progress(event: str, info: Dict[str, Any]) -> None:
        if event == "step" and die_at is not None and rank == 1 and info["global_step"] == die_at:
            os._exit(3)  # a kill: no clean-up, no exception

    space, net = nb201()
    x, y = data(32)
    try:
        res = train_supernet(net, space, x, y, TrainConfig(epochs=3, batch_size=16, lr=0.1), checkpoint_path=ckpt,
                             progress=progress)
    finally:
        loop.save_checkpoint, spos_mod.save_checkpoint = saved
    return {"final": _state(net), "loss": res.epoch_loss, "resumed_from": res.resumed_from_epoch,
            "writers": writers}


SCENARIOS: Dict[str, Callable[[int], Dict[str, Any]]] = {
    "spos_sync": lambda rank: spos(),
    "spos_sync_uneven": lambda rank: spos(n=35, epochs=1),  # last batch 3: shards of 1 and 2
    "spos_sync_fp32": lambda rank: spos(dtype=torch.float32),
    "spos_nosync": lambda rank: spos(sync_bn=False),
    "sandwich": lambda rank: sandwich(),
    "mismatch": mismatch,
    "indivisible": lambda rank: indivisible(),
}


def worker(rank: int, world_size: int, init_file: str, out_dir: str, names: list, kwargs: dict) -> None:
    """One rank: joins the Gloo world, runs the scenarios ``names``, saves ``{name}_rank{rank}.pt``."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        for name in names:
            try:
                if name == "resume":  # last: with die_at, rank 1 dies in it
                    out = resumable(Path(kwargs["ckpt"]), kwargs.get("die_at"), rank)
                else:
                    out = SCENARIOS[name](rank)
            except Exception as e:  # recorded for the test to show
                out = {"crash": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
            torch.save(out, Path(out_dir) / f"{name}_rank{rank}.pt")
            if "crash" in out:
                break
    finally:
        torch.distributed.destroy_process_group()
