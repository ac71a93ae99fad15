"""SIGTERM and SIGINT end a command cleanly, and faults inside scoring leave a run that resumes exactly.

Signals from outside go to a ``python -m fastnas search`` subprocess once it is in the phase under test
(its ``state.json`` says training started, or its ``search_state.json`` exists: at least one candidate
is scored and saved). Faults inside scoring come from ``tests/cli/_fault_run.py``, which runs the same
command with an out-of-memory error or a SIGTERM injected at a chosen convolution of the search. Each
interrupted run exits with its code (130 SIGINT, 143 SIGTERM, 1 out of memory) and one line saying how
to continue (``--resume``), no traceback; ``--resume`` then ends with the ``result.json`` (timings aside)
of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from _cli_helpers import REPO, run_subprocess, tiny

# Two epochs of 4 steps, 8 x 6 = 48 candidates: the search lasts long enough to be signalled in.
ARGS = tiny(epochs=2, population=8, generations=6)
FAULT_RUN = REPO / "tests" / "cli" / "_fault_run.py"


def _result(path):
    d = json.loads((path / "result.json").read_text())
    d.pop("timings")
    return d


def _env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("FASTNAS_TEST_KILL_AT", None)
    env.pop("FASTNAS_TEST_FAULT", None)
    env.update(extra or {})
    return env


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _signalled(args, sig, ready, timeout=240.0):
    """Starts ``fastnas ARGS``, sends ``sig`` once ``ready()`` holds; returns ``(code, stderr)``."""
    proc = subprocess.Popen([sys.executable, "-m", "fastnas", *map(str, args)], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended (code {proc.returncode}) before it could be signalled"
            assert time.monotonic() < deadline, "the run never reached the point to signal it at"
            time.sleep(0.005)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc.stdout.close()
    reader.join(timeout=10)
    return proc.returncode, "".join(err)


def _faulted(args, fault):
    proc = subprocess.run([sys.executable, str(FAULT_RUN), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env=_env({"FASTNAS_TEST_FAULT": fault}), timeout=240)
    return proc.returncode, proc.stderr


def _check_clean_exit(code, err, expected_code, words):
    assert code == expected_code, (code, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("fastnas: ") and "--resume" in last and all(w in last for w in words), last


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_subprocess(["search", *ARGS, "--out", out])
    assert r.code == 0, r.err
    return _result(out)


def test_sigterm_in_training_then_oom_in_search_then_resume(tmp_path, reference):
    out = tmp_path / "run"

    def training():
        state = _read_json(out / "state.json")
        return bool(state) and state["phases"].get("train") == "started"

    code, err = _signalled(["search", *ARGS, "--out", out], signal.SIGTERM, training)
    _check_clean_exit(code, err, 143, ["interrupted by SIGTERM"])
    assert _read_json(out / "state.json")["phases"]["train"] == "started"
    assert not (out / "result.json").exists()

    # Out of memory in the middle of the 6th candidate: 5 are saved, the 6th is scored again.
    code, err = _faulted(["search", "--resume", out, "--quiet"], "oom:500")
    _check_clean_exit(code, err, 1, ["out of memory", "--score-batch-size"])
    saved = _read_json(out / "search_state.json")
    assert saved is not None and 0 < len(saved["state"]["history"]) < 48

    r = run_subprocess(["search", "--resume", out, "--quiet"])
    assert r.code == 0, r.err
    assert _result(out) == reference
    assert json.loads((out / "result.json").read_text())["timings"]["sessions"] == 3


def test_sigint_in_search_then_sigterm_inside_scoring_then_resume(tmp_path, reference):
    out = tmp_path / "run"
    code, err = _signalled(["search", *ARGS, "--out", out], signal.SIGINT,
                           lambda: (out / "search_state.json").exists())
    _check_clean_exit(code, err, 130, ["interrupted;"])
    first = _read_json(out / "search_state.json")
    assert first is not None and len(first["state"]["history"]) < 48  # a whole, readable state
    assert not (out / "result.json").exists()

    code, err = _faulted(["search", "--resume", out, "--quiet"], "sigterm:300")
    _check_clean_exit(code, err, 143, ["interrupted by SIGTERM"])
    second = _read_json(out / "search_state.json")
    assert len(second["state"]["history"]) >= len(first["state"]["history"])

    r = run_subprocess(["search", "--resume", out, "--quiet"])
    assert r.code == 0, r.err
    assert _result(out) == reference
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


# ---- the handler itself, in this process ----------------------------------------------------------


def test_interrupt_signals_raise_interrupted_and_put_the_old_handlers_back():
    from fastnas.cli import Interrupted, interrupt_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for sig in (signal.SIGTERM, signal.SIGINT):
        with pytest.raises(Interrupted) as info:
            with interrupt_signals():
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler raises before this ends
        assert info.value.signum == sig and isinstance(info.value, KeyboardInterrupt)
        assert {s: signal.getsignal(s) for s in before} == before


def test_an_ignored_signal_stays_ignored():
    from fastnas.cli import interrupt_signals

    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with interrupt_signals():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)  # ignored: nothing happens
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)


def test_main_returns_143_with_the_resume_hint_on_sigterm(monkeypatch, capsys):
    from fastnas.cli import commands, main

    def search(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        return 0

    monkeypatch.setitem(commands.COMMANDS, "search", search)
    assert main(["search", "--out", "unused"]) == 143
    err = capsys.readouterr().err
    assert err.strip() == ("fastnas: interrupted by SIGTERM; the run continues with: "
                           "fastnas search --resume <run directory>")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_main_reports_out_of_memory_in_one_line(monkeypatch, capsys):
    import torch

    from fastnas.cli import commands, main

    def search(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB\nmore details")

    monkeypatch.setitem(commands.COMMANDS, "search", search)
    assert main(["search", "--out", "unused"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastnas: error: out of memory (CUDA out of memory. Tried to allocate 1.00 GiB); ")
    assert "--resume" in err and len(err.splitlines()) == 1


def test_a_second_signal_while_unwinding_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from fastnas.cli import Interrupted, interrupt_signals\n"
        "with interrupt_signals():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(5)\n"
        "    except Interrupted:\n"
        "        try:\n"
        "            os.kill(os.getpid(), signal.SIGINT)  # e.g. Ctrl-C while a slow cleanup runs\n"
        "            time.sleep(5)\n"
        "        finally:\n"
        "            print('cleanup finished', flush=True)\n"
    )
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert "interrupted again" in proc.stderr and "Traceback" not in proc.stderr
    assert "cleanup finished" not in proc.stdout  # os._exit: nothing more runs
    assert time.monotonic() - t0 < 60
