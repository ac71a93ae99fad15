"""Fixtures for the CLI tests: tiny run settings, an in-process runner, a subprocess runner, one shared run.

Every run here is tiny (NB201 with C=4, N=1 on 128 images of the bundled digits; one epoch; 4 x 2
candidates) so the whole directory stays well under a minute on two shared cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

import pytest

from fastnas.cli import main

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


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> Result``: runs ``fastnas`` in this process."""

    def run(*args: str) -> Result:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # --help / --version exit through argparse
            code = e.code if isinstance(e.code, int) else 0
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_subprocess(args: List[str], *, env_extra=None, cwd=None, timeout: float = 240) -> Result:
    """``python -m fastnas ARGS`` in a fresh process (for kills and isolation)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("FASTNAS_TEST_KILL_AT", None)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "fastnas", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny search (angle+flatness), shared by the read-only tests."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["search", *TINY, "--out", str(out)])
    assert code == 0
    return out
