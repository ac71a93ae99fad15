"""Fixtures for the CLI tests: tiny run settings, an in-process runner, a subprocess runner, one shared run.

Every run here is tiny (NB201 with C=4, N=1 on 128 images of the bundled digits; one epoch; 4 x 2
candidates) so the whole directory stays well under a minute on two shared cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _cli_helpers import TINY, Result
from fastnas.cli import main


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny search (angle+flatness), shared by the read-only tests."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = main(["search", *TINY, "--metric", "angle+flatness", "--out", str(out)])
    assert code == 0
    return out
