"""Bad input: one line `fastnas: error: ...` on stderr, exit code 2, and nothing written."""

from __future__ import annotations

import shutil

import pytest
import torch

from _cli_helpers import TINY

BAD = {
    "unknown space": ["--space", "nb202"],
    "unknown metric": ["--metric", "angel"],
    "unknown searcher": ["--searcher", "genetic"],
    "unknown dataset": ["--data", "digitz"],
    "missing npz": ["--data", "no/such/file.npz"],
    "sigmas decreasing": ["--sigmas", "1e-2,2e-3"],
    "sigmas not positive": ["--sigmas", "0,1e-2"],
    "sigmas not numbers": ["--sigmas", "a,b"],
    "noise mode": ["--noise", "gaussian"],
    "epochs zero": ["--epochs", "0"],
    "epochs not int": ["--epochs", "two"],
    "unknown flag": ["--populaton", "3"],
    "population too small": ["--population", "4", "--topk", "5"],
    "missing config": ["--config", "no/such.toml"],
    "missing truth": ["--truth", "no/such.csv"],
    "valid-size above the validation half": ["--valid-size", "100000"],
    "max-params below every architecture": ["--max-params", "10"],
    "max-flops below every architecture": ["--max-flops", "0.001"],
}


def _check(r, out_dir):
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastnas: error: "), r.err
    assert not out_dir.exists()


@pytest.mark.parametrize("args", list(BAD.values()), ids=list(BAD))
def test_bad_search_input(cli, tmp_path, args):
    out = tmp_path / "run"
    _check(cli("search", *TINY, *args, "--out", out), out)


def test_bad_config_file_key_and_value(cli, tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text("metrik = 'angle'\n")
    r = cli("search", *TINY, "--config", cfg, "--out", out)
    _check(r, out)
    assert "did you mean 'metric'" in r.err
    cfg.write_text("mutate_prob = 'many'\n")
    _check(cli("search", *TINY, "--config", cfg, "--out", out), out)
    cfg.write_text("mutate_prob = [\n")
    _check(cli("search", *TINY, "--config", cfg, "--out", out), out)


def test_out_holding_another_run_or_other_files(cli, tiny_run, tmp_path):
    before = sorted(p.name for p in tiny_run.iterdir())
    r = cli("search", *TINY, "--metric", "accuracy", "--out", tiny_run)
    assert r.code == 2 and "already holds a run" in r.err
    assert sorted(p.name for p in tiny_run.iterdir()) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = cli("search", *TINY, "--out", other)
    assert r.code == 2 and "not empty" in r.err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_resume_with_changed_settings_of_a_started_phase(cli, tiny_run):
    r = cli("search", "--resume", tiny_run, "--channels", "8")
    assert r.code == 2 and "cannot change channels" in r.err


def test_bad_architecture_strings(cli, tiny_run, tmp_path):
    def listing():  # the shared run may hold another test's retrain/ already: compare, do not assume
        return sorted((str(q.relative_to(tiny_run)), q.stat().st_mtime_ns) for q in tiny_run.rglob("*"))

    before = listing()
    for cmd in (["score", "--run", tiny_run, "--arch", "|conv~0|+"],
                ["retrain", "--run", tiny_run, "--arch", "|nor_conv_3x3~0|"],
                ["export", "--run", tiny_run, "--arch", "nonsense", "--out", tmp_path / "net.py"]):
        r = cli(*cmd)
        assert r.code == 2 and r.err.startswith("fastnas: error: ") and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "net.py").exists() and listing() == before


@pytest.mark.parametrize("damage", ["truncate", "foreign", "garbage"])
def test_corrupt_or_foreign_checkpoint_is_a_clear_error(cli, tiny_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ckpt = run / "supernet.pt"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, ckpt)
    else:
        ckpt.write_bytes(b"not a checkpoint at all")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for cmd in (["search", "--resume", run], ["score", "--run", run, "--arch",
                                              "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"]):
        r = cli(*cmd)
        assert r.code == 2, r.err
        assert "supernet.pt" in r.err and len(r.err.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_corrupt_search_state_is_a_clear_error(cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "search_state.json").write_text('{"version": 1, "searcher": "evol')
    r = cli("search", "--resume", run)
    assert r.code == 2 and "search_state.json" in r.err and "corrupt" in r.err


def test_not_a_run_directory(cli, tmp_path):
    for cmd in (["search", "--resume", tmp_path], ["score", "--run", tmp_path, "--arch", "x"],
                ["kendall", "--run", tmp_path, "--truth", tmp_path / "t.csv"]):
        r = cli(*cmd)
        assert r.code == 2 and "not a fastnas run directory" in r.err, r.err


@pytest.mark.parametrize("case", ["nan", "inf", "negative labels"])
def test_bad_npz_data_is_refused_at_load(cli, tmp_path, case):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 8)).astype(np.float32)
    y = np.arange(40) % 4
    if case == "nan":
        x[3, 2, 2] = np.nan
        expect = "not finite"
    elif case == "inf":
        x[5, 0, 0] = np.inf
        expect = "not finite"
    else:
        y = y - 5
        expect = "labels must be class indices >= 0, got a minimum of -5"
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    out = tmp_path / "run"
    r = cli("search", *TINY, "--data", data, "--out", out)
    _check(r, out)
    assert expect in r.err, r.err


def test_quiet_logs_each_generation_once(tmp_path):
    from _cli_helpers import run_subprocess

    r = run_subprocess(["search", *TINY, "--out", tmp_path / "run"])
    assert r.code == 0, r.err
    lines = [ln for ln in r.err.splitlines() if "generation 1/" in ln]
    assert len(lines) == 1, lines


def test_a_mistyped_fastnas_backend_fails_before_any_work(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNAS_BACKEND", "cpq")
    out = tmp_path / "run"
    r = cli("search", *TINY, "--out", out)
    _check(r, out)
    assert "FASTNAS_BACKEND='cpq' is not a backend" in r.err and "cpp" in r.err, r.err
    r = cli("info")
    assert r.code == 2 and "error: FASTNAS_BACKEND='cpq'" in r.out and "backends:" in r.out


def test_two_corrupt_checkpoints_are_both_named_and_no_message_is_cut_mid_word(cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "supernet.pt").write_bytes((run / "supernet.pt").read_bytes()[:3000])  # torch's long zip error
    (run / "supernet_init.pt").write_bytes(b"garbage")
    r = cli("search", "--resume", run)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "2 unreadable files" in r.err and "supernet.pt'" in r.err and "supernet_init.pt'" in r.err, r.err
    assert " h..." not in r.err  # torch's advice was cut as "there is a h..." (the rule: test below)


def test_a_long_reason_is_shortened_at_a_sentence_or_word_boundary():
    from fastnas.train.checkpoint import _shorten

    text = ("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an "
            "internal miniz error. If you are seeing this error, there is a high chance the file is damaged.")
    short = _shorten(text, limit=100)
    assert short == "PytorchStreamReader failed reading zip archive: failed finding central directory."
    one = "word " * 50
    cut = _shorten(one.strip(), limit=40)
    assert cut.endswith("word...") and len(cut) <= 40


def test_messages_name_flags_not_python_arguments(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("search", *TINY, "--data", "mnist", "--data-dir", tmp_path / "none", "--out", out)
    _check(r, out)
    assert "--data-dir" in r.err and "data_dir" not in r.err, r.err
    for flag, value in (("--score-batch-size", "0"), ("--recal-batches", "-1"), ("--mutate-prob", "2")):
        r = cli("search", *TINY, flag, value, "--out", out)
        _check(r, out)
        assert f"{flag} " in r.err and "bn_batches" not in r.err and "batch_size=" not in r.err, r.err
    r = cli("search", *TINY, "--truth", tmp_path / "missing.csv", "--out", out)
    _check(r, out)
    assert "--truth" in r.err and "no such file" in r.err and "truth=" not in r.err, r.err


def test_flag_spelling_changes_only_flags_written_as_python_arguments():
    from fastnas.cli import flag_spelling
    from fastnas.cli.parser import build_parser

    parser = build_parser()
    assert flag_spelling("pass data_dir= a directory", parser) == "pass --data-dir a directory"
    assert flag_spelling("arch_column='x' is not a column", parser) == "--arch-column 'x' is not a column"
    assert flag_spelling("csv_path='t.csv' is empty", parser) == "csv_path='t.csv' is empty"  # no such flag
    assert flag_spelling("sampler='fair' in '/a/data_dir=b'", parser) == "sampler='fair' in '/a/data_dir=b'"


@pytest.mark.parametrize("content,expect", [(b"arch,acc\nx,1\n", "not a valid .npz archive"),
                                            (b"\x93NUMPY\x01\x00", "a single .npy array, not a .npz archive"),
                                            (b"", "the file is empty")])
def test_a_file_that_is_not_an_npz_archive_says_so(cli, tmp_path, content, expect):
    data = tmp_path / "d.npz"
    data.write_bytes(content)
    out = tmp_path / "run"
    r = cli("search", *TINY, "--data", data, "--out", out)
    _check(r, out)
    assert expect in r.err and "allow_pickle" not in r.err, r.err
