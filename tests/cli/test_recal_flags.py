"""``--recal-batches``, ``--recal-batch-size`` and ``--recal-mode`` reach the evaluator that scores the
candidates, from ``fastnas search`` and from ``fastnas score``."""

from __future__ import annotations

import json

import pytest

from _cli_helpers import tiny
from fastnas.metrics import evaluator as evaluator_module
from fastnas.metrics import scores as scores_module


@pytest.fixture
def built(monkeypatch):
    """The keyword arguments of every MultiSigmaEvaluator the score functions build (and the evaluators)."""
    made = []
    real = evaluator_module.MultiSigmaEvaluator

    class Recording(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((kwargs, self))

    monkeypatch.setattr(scores_module, "MultiSigmaEvaluator", Recording)
    return made


def _recal(made):
    return [(kw["bn_batches"], kw["bn_batch_size"], kw["bn_mode"]) for kw, _ in made]


def test_search_and_score_pass_the_recalibration_flags(cli, tmp_path, built):
    out = tmp_path / "run"
    r = cli("search", *tiny(recal_batches=3, recal_batch_size=16, recal_mode="momentum"), "--metric", "flatness",
            "--out", out)
    assert r.code == 0, r.err
    assert _recal(built) == [(3, 16, "momentum")]
    ev = built[0][1]
    assert ev.evaluations > 0 and ev.report()["bn_batches"] == 3
    assert len(ev._calib) == 3 and all(b.shape[0] == 16 for b in ev._calib)
    assert ev.bn_mode == "momentum"
    arch = json.loads((out / "result.json").read_text())["arch"]

    built.clear()  # score: the run's settings by default, the flags override them
    r = cli("score", "--run", out, "--arch", arch, "--json")
    assert r.code == 0, r.err
    assert _recal(built) == [(3, 16, "momentum")]
    built.clear()
    r = cli("score", "--run", out, "--arch", arch, "--json", "--recal-batches", "5", "--recal-batch-size", "8",
            "--recal-mode", "exact")
    assert r.code == 0, r.err
    assert _recal(built) == [(5, 8, "exact")]
    ev = built[0][1]
    assert len(ev._calib) == 5 and all(b.shape[0] == 8 for b in ev._calib) and ev.bn_mode == "exact"
    assert ev.report()["compiled"]  # the NB201 candidates ran through the compiled forward
