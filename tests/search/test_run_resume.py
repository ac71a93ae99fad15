"""Random and exhaustive search resume through a run: kill -9 mid-search, ``--resume``, same result.json.

The kill uses the CLI's test hook ``FASTNAS_TEST_KILL_AT=search:<n>`` (fastnas/cli/progress.py): the
process sends itself SIGKILL after candidate n is scored and before the search state is saved. The
uninterrupted and the resumed sessions run in this process (one thread either way: the CLI uses one
thread for images of at most 16 px), only the killed one in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastnas.cli import main

REPO = Path(__file__).resolve().parents[2]

TINY = ["--channels", "4", "--cells", "1", "--epochs", "1", "--valid-size", "48", "--limit-train", "128",
        "--batch-size", "32", "--recal-batches", "2", "--quiet"]
RANDOM = TINY + ["--searcher", "random", "--population", "4", "--generations", "3"]  # 3 rounds of 4
# NB201 with C=4, N=1: the architectures without a live convolution have the fewest parameters (4822);
# they fall into 78 classes of equivalent cells (space.canonical), one scored each, in rounds of 30.
EXHAUSTIVE = TINY + ["--searcher", "exhaustive", "--metric", "angle", "--max-params", "4822",
                     "--population", "30", "--generations", "1"]


def _main(*args) -> int:
    return main([str(a) for a in args])


def _killed(args, out: Path, at: int) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["FASTNAS_TEST_KILL_AT"] = f"search:{at}"
    proc = subprocess.run([sys.executable, "-m", "fastnas", "search", *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    assert not (out / "result.json").exists()


def _result(path: Path) -> dict:
    d = json.loads((path / "result.json").read_text())
    d.pop("timings")
    return d


def _calls(path: Path) -> int:
    return json.loads((path / "result.json").read_text())["timings"]["scoring"]["calls"]


@pytest.fixture(scope="module")
def random_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("random") / "ref"
    assert _main("search", *RANDOM, "--out", out) == 0
    return out


def test_random_search_resumes_after_kill_mid_round(tmp_path, random_reference):
    out = tmp_path / "run"
    _killed(RANDOM, out, 7)  # round 0 closed, round 1 asked, 2 of its 4 told and saved
    saved = json.loads((out / "search_state.json").read_text())
    assert saved["searcher"] == "random" and saved["version"] == 2
    state = saved["state"]
    assert len(state["history"]) == 6 and len(state["pending"]) == 2 and state["rounds"] == 1
    assert _main("search", "--resume", out) == 0
    assert _result(out) == _result(random_reference)
    assert _calls(out) == 12 - 6  # the saved candidates are not scored again
    assert [r["text"] for r in saved["state"]["history"]] == \
        [r["text"] for r in json.loads((random_reference / "search_state.json").read_text())["state"]["history"][:6]]


def test_old_search_state_is_refused_with_a_way_out(tmp_path, random_reference, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(random_reference, out)
    old = {"version": 1, "searcher": "random", "records": []}  # what fastnas wrote before the ask/tell protocol
    (out / "search_state.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert _main("search", "--resume", out) == 2
    err = capsys.readouterr().err
    assert "has version 1" in err and "reads version 2" in err and "delete that file" in err
    (out / "search_state.json").unlink()  # the way out the message gives: search again, supernet kept
    assert _main("search", "--resume", out) == 0
    assert _result(out) == _result(random_reference)


def test_changed_search_settings_in_a_saved_state_are_refused(tmp_path, random_reference, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(random_reference, out)
    saved = json.loads((out / "search_state.json").read_text())
    saved["config"]["seed"] += 1
    (out / "search_state.json").write_text(json.dumps(saved))
    # a finished run is left as it is (its search state is not read again): reopen its search
    state = json.loads((out / "state.json").read_text())
    state["phases"]["search"] = "running"
    state["phases"].pop("report", None)
    (out / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert _main("search", "--resume", out) == 2
    assert "other search settings ['seed']" in capsys.readouterr().err


def _exhaustive_classes():
    from fastnas.data import load_dataset
    from fastnas.spaces import create_space

    ds = load_dataset("digits")  # the run's default data
    space = create_space("nb201", channels=4, cells=1, num_classes=ds.num_classes, in_channels=ds.in_channels,
                         resolution=ds.resolution)
    members = [a for a in space.enumerate() if space.params(space.canonical(a)) <= 4822]
    return len({space.canonical(a) for a in members}), len(members)


def test_exhaustive_search_resumes_after_kill(tmp_path):
    classes, members = _exhaustive_classes()
    assert classes == 78
    ref = tmp_path / "ref"
    assert _main("search", *EXHAUSTIVE, "--out", ref) == 0
    reference = _result(ref)
    assert reference["search"]["n_scored"] == classes and reference["search"]["exhausted"]
    assert reference["search"]["equivalent_proposals"] == members - classes  # every other member of a class
    out = tmp_path / "run"
    _killed(EXHAUSTIVE, out, 41)  # in the second round of 30
    state = json.loads((out / "search_state.json").read_text())["state"]
    assert len(state["history"]) == 40 and len(state["pending"]) == 20 and state["rounds"] == 1
    assert 0 < state["equivalent"] < members - classes
    assert _main("search", "--resume", out) == 0
    assert _result(out) == reference
    assert _calls(out) == classes - 40
