"""Progress into a file or a pipe: plain log lines, never tqdm's carriage-return redraws."""

from __future__ import annotations

from _cli_helpers import TINY, run_subprocess

NOT_QUIET = [a for a in TINY if a != "--quiet"]


def test_progress_into_a_pipe_is_lines_without_carriage_returns(tmp_path):
    r = run_subprocess(["search", *NOT_QUIET, "--retrain-epochs", "1", "--out", tmp_path / "run"])
    assert r.code == 0, r.err
    assert "\r" not in r.err and "\r" not in r.out
    for line in ("train: started", "epoch 1/1: loss", "generation 1/2: best", "generation 2/2: best",
                 "retrain epoch 1/1", "report: done"):
        assert line in r.err, (line, r.err)


def test_long_stretches_get_a_line_every_few_seconds(cli, tmp_path, monkeypatch):
    from fastnas.cli import progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)  # every step and candidate is due
    r = cli("search", *NOT_QUIET, "--out", tmp_path / "run")
    assert r.code == 0, r.err
    assert "\r" not in r.err
    assert "supernet epoch 1: step 4/4, loss" in r.err
    assert "scored 8/8 candidates (generation 2), best" in r.err
