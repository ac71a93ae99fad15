"""``python tests/cli/_fault_run.py ARGS``: ``fastnas ARGS`` with a fault injected inside scoring.

``FASTNAS_TEST_FAULT=<kind>:<k>`` fires the fault at the k-th call of ``torch.nn.functional.conv2d``
made during the search phase (every convolution of recalibration and of clean and perturbed passes
calls it), i.e. in the middle of scoring a candidate:

* ``oom``: raises ``torch.OutOfMemoryError`` (how an out-of-memory is simulated on CPU);
* ``interrupt``: raises ``KeyboardInterrupt`` (Ctrl-C);
* ``sigterm``: sends SIGTERM to this process (the CLI's handler raises at the next bytecode);
* ``error``: raises ``RuntimeError``.

A test helper only: the library and the CLI know nothing of it.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

import fastnas.run.pipeline as pipeline
from fastnas.cli import main


def _fire(kind: str) -> None:
    if kind == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by _fault_run)")
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if kind == "error":
        raise RuntimeError("injected by _fault_run")
    raise SystemExit(f"_fault_run: unknown fault {kind!r}")


def _install(kind: str, at: int) -> None:
    real_conv = torch.nn.functional.conv2d
    real_search = pipeline.Run.search
    state = {"on": False, "calls": 0}

    def conv2d(*args, **kwargs):
        if state["on"]:
            state["calls"] += 1
            if state["calls"] == at:
                _fire(kind)
        return real_conv(*args, **kwargs)

    def search(self):
        state["on"] = True
        try:
            return real_search(self)
        finally:
            state["on"] = False

    torch.nn.functional.conv2d = conv2d
    pipeline.Run.search = search


if __name__ == "__main__":
    kind, _, at = os.environ["FASTNAS_TEST_FAULT"].partition(":")
    _install(kind, int(at))
    sys.exit(main(sys.argv[1:]))
