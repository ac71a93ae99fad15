"""Kill -9 at any phase, then `--resume`: the same result.json (timings aside) as an uninterrupted run;
the killed session's time still counts; resuming a finished run changes nothing.

The kills use the CLI's test hook ``FASTNAS_TEST_KILL_AT=<phase>:<n>`` (see fastnas/cli/progress.py):
the process sends itself SIGKILL at that point, exactly like ``kill -9`` from outside.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from _cli_helpers import run_subprocess, tiny

# Two epochs of 4 steps (128 images, batch 32), 8 candidates, 2 retraining epochs.
ARGS = tiny(epochs=2, retrain_epochs=2)


def _result(path):
    d = json.loads((path / "result.json").read_text())
    d.pop("timings")
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_subprocess(["search", *ARGS, "--out", out])
    assert r.code == 0, r.err
    return _result(out)


def _killed(out, point):
    r = run_subprocess(["search", *ARGS, "--out", out], env_extra={"FASTNAS_TEST_KILL_AT": point})
    assert r.code == -signal.SIGKILL, (r.code, r.err)
    assert not (out / "result.json").exists()


def test_kill_during_supernet_training_then_resume(tmp_path, reference):
    out = tmp_path / "run"
    _killed(out, "train:6")  # in the second epoch: resumes from the end-of-epoch-1 checkpoint
    state = json.loads((out / "state.json").read_text())
    assert state["phases"]["train"] == "started"
    killed = state["timings"]
    assert killed["train"] > 0  # the killed session's training time, written with its end-of-epoch checkpoint
    r = run_subprocess(["search", "--resume", out, "--quiet"])
    assert r.code == 0, r.err
    assert _result(out) == reference
    timings = json.loads((out / "result.json").read_text())["timings"]
    assert timings["sessions"] == 2 and "in 2 session(s)" in r.out
    assert timings["seconds"]["train"] > killed["train"]  # both sessions' training
    assert timings["seconds"]["data"] > killed["data"]
    assert timings["total"] >= sum(killed.values())


def test_resuming_a_finished_run_rewrites_nothing(tmp_path, reference):
    out = tmp_path / "run"
    assert run_subprocess(["search", *ARGS, "--out", out]).code == 0
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in files}
    r = run_subprocess(["search", "--resume", out, "--threads", "1"])  # a session setting: no new work
    assert r.code == 0, r.err
    assert "is finished" in r.err and reference["arch"] in r.out and "in 1 session(s)" in r.out
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files
    assert {p: (p.read_bytes(), os.stat(p).st_mtime_ns) for p in files} == before


def test_kill_during_search_and_retraining_then_resume(tmp_path, reference):
    out = tmp_path / "run"
    _killed(out, "search:5")  # candidate 5 scored but not saved: it is scored again
    saved = json.loads((out / "search_state.json").read_text())
    assert len(saved["state"]["history"]) == 4
    r = run_subprocess(["search", "--resume", out, "--quiet"], env_extra={"FASTNAS_TEST_KILL_AT": "retrain:1"})
    assert r.code == -signal.SIGKILL, r.err
    r = run_subprocess(["search", "--resume", out, "--quiet"])
    assert r.code == 0, r.err
    got = _result(out)
    assert got == reference
    assert got["test_accuracy"] is not None
    assert json.loads((out / "result.json").read_text())["timings"]["sessions"] == 3
