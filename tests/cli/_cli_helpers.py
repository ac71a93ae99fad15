"""Shared pieces of the CLI tests (a uniquely named module: test directories have no __init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

REPO = Path(__file__).resolve().parents[2]

TINY = ["--channels", "4", "--cells", "1", "--epochs", "1", "--population", "4", "--generations", "2",
        "--valid-size", "48", "--limit-train", "128", "--batch-size", "32", "--recal-batches", "2", "--quiet"]


def tiny(**changes: object) -> List[str]:
    """``TINY`` with some flags changed (``tiny(epochs=2)``) or added."""
    args = list(TINY)
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = str(value)
        else:
            args += [flag, str(value)]
    return args


class Result(NamedTuple):
    code: int
    out: str
    err: str


def run_subprocess(args: List[str], *, env_extra=None, cwd=None, timeout: float = 240) -> Result:
    """``python -m fastnas ARGS`` in a fresh process (for kills and isolation)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("FASTNAS_TEST_KILL_AT", None)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "fastnas", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)
