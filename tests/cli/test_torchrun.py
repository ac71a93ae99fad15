"""``torchrun --nproc_per_node=2 -m fastnas search``: the same search as one process, rank 0 alone writes,
a killed rank resumes to the same result; bad input under torchrun is one error and nothing written.

Two Gloo processes on CPU. The supernet is trained once, in one process (training under torchrun is
tested with fastnas/train); each search then resumes a copy of it. Population 5 (odd, above the world
size, so the ranks score unequal shares) and 2 generations.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli_helpers import REPO, tiny
from fastnas.cli import main

torch_dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not torch_dist.is_available() or not torch_dist.is_gloo_available(),
                                reason="torch has no distributed/Gloo support")

TRAIN = tiny()  # the tiny settings of every CLI test (1 epoch, batch 32, 128 images)
SEARCH = ["--population", "5", "--generations", "2", "--metric", "angle+flatness", "--quiet"]
HELPER = str(Path(__file__).with_name("_dist_run.py"))


def fastnas_root() -> str:
    """The directory holding the fastnas package this process imported."""
    import fastnas

    return str(Path(fastnas.__file__).resolve().parents[1])


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "FASTNAS_TEST_KILL_AT")}
    # the ranks import the fastnas this process imported (the installed one in CI, with its compiled kernels):
    # a reference computed here and ranks on another build would differ in the last bits
    env["PYTHONPATH"] = os.pathsep.join(p for p in (fastnas_root(), str(REPO), env.get("PYTHONPATH")) if p)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra})
    return env


def _torchrun(args, *, log_dir: Path, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 tests/cli/_dist_run.py ARGS``, each rank's output in log_dir."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--log-dir", str(log_dir), "--redirects", "3", HELPER, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def _rank_logs(log_dir: Path, rank: int) -> str:
    files = sorted(log_dir.rglob(f"attempt_*/{rank}/std*.log"))
    assert files, f"no logs of rank {rank} under {log_dir}"
    return "".join(f.read_text() for f in files)


def _result(path: Path) -> dict:
    d = json.loads((path / "result.json").read_text())
    d.pop("timings")
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "trained"
    assert main(["train-supernet", *TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory) -> Path:
    """The search in one process (in this process)."""
    out = tmp_path_factory.mktemp("dist") / "one"
    shutil.copytree(trained, out)
    assert main(["search", "--resume", str(out), *SEARCH]) == 0
    return out


def _same_search(got: Path, ref: Path) -> None:
    assert (got / "history.csv").read_bytes() == (ref / "history.csv").read_bytes()
    assert (got / "search_state.json").read_bytes() == (ref / "search_state.json").read_bytes()
    assert _result(got) == _result(ref)


def test_two_ranks_search_as_one_process_and_only_rank0_writes(trained, reference, tmp_path):
    out = tmp_path / "two"
    shutil.copytree(trained, out)
    t0 = time.perf_counter()
    r = _torchrun(["search", "--resume", out, *SEARCH], log_dir=tmp_path / "logs",
                  env=_env(FASTNAS_TEST_NO_WRITES=str(out)))
    seconds = time.perf_counter() - t0
    rank0, rank1 = _rank_logs(tmp_path / "logs", 0), _rank_logs(tmp_path / "logs", 1)
    assert r.returncode == 0, (r.stderr[-3000:], rank0[-3000:], rank1[-3000:])
    assert "RANK-WRITE" not in rank1
    assert rank1.strip() == ""  # rank 1 prints nothing
    assert "2 processes" in rank0 and "found architecture" in rank0
    _same_search(out, reference)
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) - 1 > 5  # more than one generation was scored, shared by the two ranks
    assert seconds < 120


def test_kill_one_rank_mid_search_then_resume_under_torchrun(trained, reference, tmp_path):
    out = tmp_path / "killed"
    shutil.copytree(trained, out)
    # Rank 1 scores candidates 1 and 3 of generation 1 (of 5): its third is in generation 2.
    r = _torchrun(["search", "--resume", out, *SEARCH], log_dir=tmp_path / "logs1",
                  env=_env(FASTNAS_TEST_KILL_RANK="1:3"))
    assert r.returncode != 0
    assert "SIGKILL" in r.stderr or "-9" in r.stderr, r.stderr[-3000:]
    assert not (out / "result.json").exists()
    saved = json.loads((out / "search_state.json").read_text())
    assert len(saved["state"]["history"]) == 5  # generation 1, gathered and saved by rank 0
    r = _torchrun(["search", "--resume", out, "--quiet"], log_dir=tmp_path / "logs2", env=_env())
    assert r.returncode == 0, (r.stderr[-3000:], _rank_logs(tmp_path / "logs2", 0)[-3000:])
    _same_search(out, reference)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(args0, args1, *, timeout: float = 120):
    """Ranks 0 and 1 started by hand (a launcher other than torchrun): ``[(code, stdout, stderr)] * 2``."""
    port = str(_free_port())
    procs = []
    for rank, args in enumerate((args0, args1)):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        # not cwd=REPO: `python -m` puts the cwd first on sys.path, over the fastnas _env chose
        procs.append(subprocess.Popen([sys.executable, "-m", "fastnas", *map(str, args)], env=env,
                                      cwd=Path(fastnas_root()).parent,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


def test_ranks_with_different_settings_one_error_nothing_written(tmp_path):
    out = tmp_path / "new"
    base = ["search", *tiny(generations=2), "--out", out]
    (c0, o0, e0), (c1, o1, e1) = _two_ranks(base + ["--population", "5"], base + ["--population", "7"])
    assert c0 == 2 and c1 == 2, (e0, e1)
    assert "different settings" in e0 and "--population (rank 0: 5; rank 1: 7)" in e0
    assert "--mutations" not in e0  # derived settings are not blamed
    assert e0.count("error") == 1 and e1 == "" and o0 == "" and o1 == ""
    assert not out.exists()


def test_batch_size_not_divisible_by_world_size(tmp_path):
    out = tmp_path / "new"
    args = ["search", *tiny(batch_size=33), "--out", out]
    (c0, _, e0), (c1, _, e1) = _two_ranks(args, args)
    assert c0 == 2 and c1 == 2
    assert "--batch-size 33 is not divisible by the world size 2" in e0 and "32 or 34" in e0
    assert e1 == ""
    assert not out.exists()


def test_missing_rendezvous_is_a_clear_error_at_once(tmp_path, monkeypatch, capsys):
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    t0 = time.perf_counter()
    code = main(["search", *tiny(), "--out", str(tmp_path / "new")])
    err = capsys.readouterr().err
    assert code == 2
    assert "torchrun environment incomplete" in err and "not MASTER_ADDR, MASTER_PORT" in err
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "new").exists()


def test_absent_rank0_times_out_with_a_clear_error(tmp_path):
    env = _env(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               FASTNAS_DIST_INIT_TIMEOUT="2")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "fastnas", "search", *tiny(), "--out", str(tmp_path / "new")],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastnas: error: (rank 1) rank 1 of 2 could not join the process group"), r.stderr[-2000:]
    assert "FASTNAS_DIST_INIT_TIMEOUT" in last
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "new").exists()


def test_single_process_commands_refuse_a_torchrun_world(monkeypatch, capsys):
    for k, v in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert main(["info"]) == 2
    assert "fastnas info runs in one process (WORLD_SIZE=2 is set)" in capsys.readouterr().err


def _model_state(path: Path) -> dict:
    import torch

    return torch.load(path / "supernet.pt", weights_only=False)["model"]


def test_train_supernet_under_torchrun_completes_and_resumes_after_a_kill(tmp_path):
    import torch

    args = ["train-supernet", *tiny(epochs=2)]
    ref = tmp_path / "uninterrupted"
    r = _torchrun([*args, "--out", ref], log_dir=tmp_path / "l0", env=_env(FASTNAS_TEST_NO_WRITES=str(ref)))
    assert r.returncode == 0, (r.stderr[-3000:], _rank_logs(tmp_path / "l0", 0)[-3000:])
    assert "RANK-WRITE" not in _rank_logs(tmp_path / "l0", 1)
    killed = tmp_path / "killed"
    # 128 images / 32 = 4 steps per epoch: rank 0 is killed at step 6, in the second epoch
    r = _torchrun([*args, "--out", killed], log_dir=tmp_path / "l1", env=_env(FASTNAS_TEST_KILL_AT="train:6"))
    assert r.returncode != 0
    state = json.loads((killed / "state.json").read_text())
    assert state["phases"]["train"] == "started"
    r = _torchrun(["train-supernet", "--resume", killed, "--quiet"], log_dir=tmp_path / "l2", env=_env())
    assert r.returncode == 0, (r.stderr[-3000:], _rank_logs(tmp_path / "l2", 0)[-3000:])
    a, b = _model_state(ref), _model_state(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same ranks, same order: bit-identical


def test_refine_under_torchrun(tmp_path):
    out = tmp_path / "refine"
    args = ["refine", "--channels", "4", "--cells", "1", "--epochs", "2", "--retrain-epochs", "0",
            "--controller-steps", "2", "--samples", "3", "--derive", "3", "--valid-size", "64", "--limit-train",
            "128", "--batch-size", "32", "--quiet", "--out", out]
    r = _torchrun(args, log_dir=tmp_path / "l", env=_env(FASTNAS_TEST_NO_WRITES=str(out)))
    assert r.returncode == 0, (r.stderr[-3000:], _rank_logs(tmp_path / "l", 0)[-3000:],
                               _rank_logs(tmp_path / "l", 1)[-3000:])
    assert "RANK-WRITE" not in _rank_logs(tmp_path / "l", 1)
    res = json.loads((out / "result.json").read_text())
    assert len(res["refine"]["trace"]) == 4 and res["ops"] and res["flops"] <= res["base_flops"] * 2
    assert "2 processes" in _rank_logs(tmp_path / "l", 0)
