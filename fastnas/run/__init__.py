"""Runs: the settings (:class:`RunConfig`), the run directory, the end-to-end pipeline and its report.

Example::

    from fastnas.run import RunConfig, Run, prepare
    run = Run(prepare(RunConfig(epochs=5, out="runs/demo")))
    result = run.execute()          # dict, also written to runs/demo/result.json
    print(result["arch"])
"""

from __future__ import annotations

from fastnas.run.config import METRICS, SEARCHERS, RunConfig, dumps_toml, load_toml, parse_sigmas
from fastnas.run.pipeline import Prepared, Run, prepare, prepare_from_run
from fastnas.run.rundir import RunDir

__all__ = ["METRICS", "SEARCHERS", "RunConfig", "RunDir", "Run", "Prepared", "prepare", "prepare_from_run",
           "dumps_toml", "load_toml", "parse_sigmas"]
