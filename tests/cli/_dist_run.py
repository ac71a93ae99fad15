"""``torchrun ... tests/cli/_dist_run.py ARGS``: ``fastnas ARGS`` on each rank, with test hooks.

* ``FASTNAS_TEST_NO_WRITES=<dir>``: on every rank but 0, any attempt to create, write, move or remove a
  path under ``<dir>`` prints ``RANK-WRITE <rank> <op> <path>`` on stderr and raises ``PermissionError``
  (so a rank other than 0 that writes the run directory fails the test, even where the error is caught).
* ``FASTNAS_TEST_KILL_RANK=<rank>:<n>``: rank ``<rank>`` sends itself SIGKILL (like ``kill -9``) when it
  starts scoring its ``n``-th candidate (counted in this process), in the middle of a generation.

A test helper only: the library and the CLI know nothing of it.
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
from pathlib import Path

from fastnas.cli import main


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _guard_writes(root: str) -> None:
    root_path = os.path.realpath(root)
    rank = _rank()

    def under(path) -> bool:
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return p == root_path or p.startswith(root_path + os.sep)

    def refuse(op: str, path) -> None:
        print(f"RANK-WRITE {rank} {op} {path}", file=sys.stderr, flush=True)
        raise PermissionError(f"rank {rank} must not {op} {path}")

    real_open, real_os_open = builtins.open, os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            refuse("open", file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & writing and under(path):
            refuse("os.open", path)
        return real_os_open(path, flags, *args, **kwargs)

    def wrap(name: str):
        real = getattr(os, name)

        def fn(path, *args, **kwargs):
            if under(path) or (args and isinstance(args[0], (str, os.PathLike)) and under(args[0])):
                refuse(name, path)
            return real(path, *args, **kwargs)

        setattr(os, name, fn)

    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # a path goes to torch's C++ writer, past Python's open
        if isinstance(f, (str, os.PathLike)) and under(f):
            refuse("torch.save", f)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    builtins.open = open_
    os.open = os_open
    for name in ("replace", "rename", "mkdir", "makedirs", "remove", "unlink", "rmdir"):
        wrap(name)
    for name in ("write_text", "write_bytes", "touch", "mkdir"):  # pathlib may bypass os.* on some versions
        real_method = getattr(Path, name)

        def method(self, *args, _real=real_method, _name=name, **kwargs):
            if under(self):
                refuse(f"Path.{_name}", self)
            return _real(self, *args, **kwargs)

        setattr(Path, name, method)


def _kill_at(spec: str) -> None:
    rank, _, n = spec.partition(":")
    if int(rank) != _rank():
        return
    import fastnas.run.scoring as scoring

    real_call = scoring.TimedScoreFn.__call__
    state = {"calls": 0}

    def call(self, arch):
        state["calls"] += 1
        if state["calls"] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_call(self, arch)

    scoring.TimedScoreFn.__call__ = call


if __name__ == "__main__":
    if os.environ.get("FASTNAS_TEST_NO_WRITES") and _rank() != 0:
        _guard_writes(os.environ["FASTNAS_TEST_NO_WRITES"])
    if os.environ.get("FASTNAS_TEST_KILL_RANK"):
        _kill_at(os.environ["FASTNAS_TEST_KILL_RANK"])
    sys.exit(main(sys.argv[1:]))
