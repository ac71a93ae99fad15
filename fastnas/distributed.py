"""Processes of one run: ``torchrun --nproc_per_node=N -m fastnas search ...`` and one process alike.

torchrun (or any launcher that sets the same variables) starts N processes, each with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment.
:func:`process_group` reads them, joins the processes into one ``torch.distributed`` group and destroys
it at exit; with none of them set (or ``WORLD_SIZE=1``) it does nothing and the process is a world of
size one. The rest of fastnas sees only a :class:`World` (``rank``, ``size``, ``all_gather_object``,
``barrier``), so there is no ``if distributed:`` fork through the code: a world of one gathers a list of
one and its barrier returns at once.

* Backend: ``cpu:gloo,cuda:nccl`` when torch has CUDA and NCCL (CUDA tensors go through NCCL, CPU
  tensors and Python objects through Gloo), else ``gloo``. Each rank's GPU is ``cuda:LOCAL_RANK``
  (:func:`local_device`).
* Timeouts: joining the group waits at most ``FASTNAS_DIST_INIT_TIMEOUT`` seconds (default 120; a rank
  that never starts, or a wrong ``MASTER_ADDR``, is a clear error, not a hang); a collective waits at
  most ``FASTNAS_DIST_TIMEOUT`` seconds (default 1800, torch's own default) for the slowest rank.
* An incomplete environment (``WORLD_SIZE=2`` but no ``MASTER_ADDR``) is a ``ValueError`` naming what
  is missing, raised before anything waits.
* :func:`agree` is the first collective of a command: every rank reports its validated settings (or
  the bad-input error it met); rank 0 raises one error naming the setting that differs between ranks
  (or the first rank's error), every other rank raises :class:`Abandoned` (exit quietly, non-zero).

This module is ground: it imports nothing from fastnas.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, List, Mapping, Optional, Sequence

import torch

__all__ = ["World", "world", "is_main", "barrier", "process_group", "env_world", "local_device", "agree",
           "start_time", "Abandoned", "DistributedError", "ENV_KEYS", "INIT_TIMEOUT_ENV", "TIMEOUT_ENV"]

#: What a launcher sets for every process (torchrun sets all of them).
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
INIT_TIMEOUT_ENV = "FASTNAS_DIST_INIT_TIMEOUT"
TIMEOUT_ENV = "FASTNAS_DIST_TIMEOUT"
_DEFAULT_INIT_TIMEOUT = 120.0
_DEFAULT_TIMEOUT = 1800.0


class DistributedError(RuntimeError):
    """The process group could not be joined, or another rank was lost during a collective."""


class Abandoned(Exception):
    """Raised on the ranks other than 0 when :func:`agree` fails: rank 0 reports the error, these exit
    without a message (``exit_code``)."""

    exit_code = 2


@dataclass(frozen=True)
class World:
    """The processes of a run: this one is ``rank`` of ``size``; ``local_rank`` is its index on its node.

    ``World()`` is one process alone: its collectives return at once.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run directory and prints."""
        return self.rank == 0

    def shard(self, items: Sequence[Any]) -> List[Any]:
        """This rank's share of ``items``: ``items[rank::size]``."""
        return list(items)[self.rank::self.size]

    def all_gather_object(self, obj: Any) -> List[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``obj`` must pickle)."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: List[Any] = [None] * self.size
        with _collective("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        with _collective("broadcast_object_list"):
            dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        """Returns when every rank has called it (at once for a world of one)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        with _collective("barrier"):
            dist.barrier()


@contextlib.contextmanager
def _collective(name: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as e:  # Gloo/NCCL: a peer closed its connection, or the timeout passed
        if isinstance(e, DistributedError):
            raise
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(f"{name} failed: another rank stopped or did not answer within the collective "
                               f"timeout ({detail}); the run continues with --resume") from e


_STARTED: Optional[float] = None


def world() -> World:
    """The world of this process: the joined group's rank and size, else ``World()`` (one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size(),
                     local_rank=_int_env("LOCAL_RANK", 0))
    return World()


def is_main() -> bool:
    """Whether this process is rank 0 (always, for one process)."""
    return world().is_main


def barrier() -> None:
    """:meth:`World.barrier` of :func:`world`."""
    world().barrier()


def start_time() -> float:
    """When the command started: rank 0's clock, the same value on every rank once the group is joined
    (so a default run directory named after it is one directory); else ``time.time()`` now."""
    return _STARTED if _STARTED is not None and world().size > 1 else time.time()


def _int_env(key: str, default: Optional[int] = None) -> int:
    text = os.environ.get(key, "").strip()
    if not text:
        if default is None:
            raise ValueError(f"{key} is not set")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected an integer (as torchrun sets it)") from None


def _seconds_env(key: str, default: float) -> float:
    text = os.environ.get(key, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{key}={text!r}: expected a number of seconds > 0")
    return value


def env_world() -> Optional[World]:
    """The world the environment describes (``None``: no launcher variable is set).

    Raises:
        ValueError: the variables are incomplete or inconsistent for a world of more than one process
            (naming what is missing and how to start fastnas instead).
    """
    present = {k: os.environ.get(k, "").strip() for k in ENV_KEYS}
    present = {k: v for k, v in present.items() if v}
    if not any(k in present for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    how = ("start every process with torchrun (torchrun --nproc_per_node=N -m fastnas ...), or set "
           f"{', '.join(ENV_KEYS)} for each one; unset them all to run one process")
    if "WORLD_SIZE" not in present:
        raise ValueError(f"torchrun environment incomplete: {', '.join(f'{k}={v}' for k, v in present.items())} "
                         f"set but not WORLD_SIZE; {how}")
    size = _int_env("WORLD_SIZE")
    if size < 1:
        raise ValueError(f"WORLD_SIZE={size}: expected an integer >= 1")
    if size == 1:
        return World(rank=0, size=1, local_rank=_int_env("LOCAL_RANK", 0))
    missing = [k for k in ENV_KEYS if k not in present]
    if missing:
        given = ", ".join(f"{k}={v}" for k, v in present.items())
        raise ValueError(f"torchrun environment incomplete: {given} set but not {', '.join(missing)} (no rendezvous "
                         f"to join); {how}")
    rank, local_rank, port = _int_env("RANK"), _int_env("LOCAL_RANK"), _int_env("MASTER_PORT")
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank}: expected 0 <= RANK < WORLD_SIZE={size}")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK={local_rank}: expected an integer >= 0")
    if not 0 < port < 65536:
        raise ValueError(f"MASTER_PORT={port}: expected a TCP port in 1..65535")
    return World(rank=rank, size=size, local_rank=local_rank)


def _backend() -> str:
    import torch.distributed as dist

    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


@contextlib.contextmanager
def process_group() -> Iterator[World]:
    """Joins the processes the environment describes into one group for the body, destroys it after.

    One process (no launcher variables, or ``WORLD_SIZE=1``) joins nothing. A group already joined by
    the caller is used as it is (and left to the caller).

    Raises:
        ValueError: an incomplete environment (see :func:`env_world`) or a bad timeout setting.
        DistributedError: the rendezvous did not complete within ``FASTNAS_DIST_INIT_TIMEOUT`` seconds.
    """
    global _STARTED
    import torch.distributed as dist

    w = env_world()
    if w is None or w.size == 1:
        yield w or World()
        return
    if dist.is_initialized():
        yield world()
        return
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={w.size}: this torch build has no torch.distributed; run one process")
    init_timeout = _seconds_env(INIT_TIMEOUT_ENV, _DEFAULT_INIT_TIMEOUT)
    timeout = _seconds_env(TIMEOUT_ENV, _DEFAULT_TIMEOUT)
    if torch.cuda.is_available() and w.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(w.local_rank)
    where = f"MASTER_ADDR={os.environ['MASTER_ADDR']} MASTER_PORT={os.environ['MASTER_PORT']}"
    try:
        # The rendezvous store waits at most init_timeout (also for every rank's Gloo address, read from it
        # while the group is made); collectives afterwards get the longer timeout.
        store, rank, size = next(iter(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=init_timeout))))
        dist.init_process_group(_backend(), store=store, rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=timeout))
        store.set_timeout(datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError, OSError) as e:  # DistStoreError / DistNetworkError are RuntimeErrors
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(
            f"rank {w.rank} of {w.size} could not join the process group at {where} within {init_timeout:g} s "
            f"({detail}); check that every rank was started and can reach MASTER_ADDR ({INIT_TIMEOUT_ENV} sets "
            "the wait)") from None
    try:
        _STARTED = world().broadcast_object(time.time())
        yield world()
    finally:
        _STARTED = None
        dist.destroy_process_group()


def local_device(device: torch.device, w: Optional[World] = None) -> torch.device:
    """The device of this rank for the run's ``device``: ``cuda`` -> ``cuda:LOCAL_RANK`` in a world of more
    than one process (unchanged for one process, and for CPU).

    Raises:
        ValueError: an explicit ``cuda:K`` in a world of several processes (each rank takes its own GPU), or
            a ``LOCAL_RANK`` without a GPU.
    """
    w = w or world()
    device = torch.device(device)
    if w.size == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(f"device={str(device)!r} under torchrun ({w.size} processes): each rank uses the GPU of "
                         "its LOCAL_RANK; give --device cuda (or auto)")
    count = torch.cuda.device_count()
    if w.local_rank >= count:
        raise ValueError(f"LOCAL_RANK={w.local_rank}: this node has {count} CUDA device(s); start at most {count} "
                         "processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", w.local_rank)


def _text(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def agree(settings: Optional[Mapping[str, Any]], error: Optional[BaseException] = None, *,
          w: Optional[World] = None, what: str = "settings") -> None:
    """Checks that every rank validated the same ``settings`` (and met no error); the first collective.

    Every rank passes either its ``settings`` (a flat mapping of comparable, picklable values) or the
    ``error`` it met while validating. In a world of one, ``error`` is raised and nothing else happens.

    Raises:
        on rank 0: its own ``error``; else a ``ValueError`` with another rank's error or naming each
            setting that differs with every rank's value;
        on other ranks: :class:`Abandoned` (rank 0 says why).
    """
    w = w or world()
    if w.size == 1:
        if error is not None:
            raise error
        return
    mine = (None if error is not None else dict(settings or {}),
            None if error is None else (" ".join(str(error).split()) or type(error).__name__))
    items = w.all_gather_object(mine)
    failed = [(r, msg) for r, (_, msg) in enumerate(items) if msg is not None]
    differ: List[str] = []
    if not failed:
        keys: List[str] = []
        for d, _ in items:
            keys += [k for k in d if k not in keys]
        marker = object()
        for k in keys:
            values = [d.get(k, marker) for d, _ in items]
            if any(v != values[0] for v in values[1:]):
                shown = "; ".join(f"rank {r}: {'(unset)' if v is marker else _text(v)}" for r, v in enumerate(values))
                differ.append(f"{k} ({shown})")
    if not failed and not differ:
        return
    if not w.is_main:
        raise Abandoned(f"rank {w.rank}: rank 0 reports the error")
    if error is not None:
        raise error
    if failed:
        r, msg = failed[0]
        more = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        raise ValueError(f"rank {r} of {w.size}{more}: {msg}")
    raise ValueError(f"the {w.size} ranks were started with different {what}: {', '.join(differ)}; start every rank "
                     "with the same command line, config file and data")
