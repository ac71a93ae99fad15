"""The other subcommands: --help, info, score, retrain, export, kendall."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from fastnas.cli.parser import build_parser

SUBCOMMANDS = ["search", "train-supernet", "score", "retrain", "export", "kendall", "info"]
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"


@pytest.mark.parametrize("command", [None] + SUBCOMMANDS)
def test_help_of_every_subcommand(cli, command):
    r = cli(*([command] if command else []), "--help")
    assert r.code == 0
    assert "usage: fastnas" in r.out
    if command in ("search", "train-supernet", "score", "retrain", "export", "kendall"):
        assert "example" in r.out  # an epilog with examples
    if command == "search":
        for flag in ("--metric", "--sigmas", "--noise", "--samples", "--gamma", "--alpha", "--searcher",
                     "--resume", "--config", "--retrain-epochs", "--device", "--seed", "--quiet"):
            assert flag in r.out
        assert "--limit-train" not in r.out  # hidden test flag


def test_every_config_field_is_a_flag():
    from fastnas.cli.parser import CONFIG_FLAG_DESTS
    from fastnas.run.config import PHASE_KEYS, SESSION_KEYS, RunConfig

    fields = set(RunConfig().to_dict())
    assert fields == set(CONFIG_FLAG_DESTS) | {"quiet"}
    assert fields == {k for keys in PHASE_KEYS.values() for k in keys} | set(SESSION_KEYS)
    assert build_parser().parse_args(["search"]).command == "search"


def test_info(cli):
    r = cli("info")
    assert r.code == 0
    for word in ("fastnas", "torch", "backends:", "reference", "threads", "device"):
        assert word in r.out


def test_version(cli):
    r = cli("--version")
    assert r.code == 0 and r.out.startswith("fastnas ")


def test_score_given_architectures(cli, tiny_run):
    result = json.loads((tiny_run / "result.json").read_text())
    r = cli("score", "--run", tiny_run, "--arch", result["arch"], "--arch", ALL_NONE, "--json")
    assert r.code == 0, r.err
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert [row["arch"] for row in rows] == [result["arch"], ALL_NONE]
    # the same architecture gets the same score as in the search (same data, seed and noise)
    assert rows[0]["score"] == pytest.approx(result["score"], rel=1e-9)
    r = cli("score", "--run", tiny_run, "--arch", ALL_NONE, "--metric", "angle")
    assert r.code == 0 and ALL_NONE in r.out and "metric angle" in r.out


def test_retrain_an_architecture(cli, tiny_run):
    r = cli("retrain", "--run", tiny_run, "--arch", ALL_NONE, "--retrain-epochs", "1", "--quiet")
    assert r.code == 0, r.err
    files = list((tiny_run / "retrain").glob("*.json"))
    assert len(files) == 1
    out = json.loads(files[0].read_text())
    assert out["arch"] == ALL_NONE and 0.0 <= out["test_accuracy"] <= 1.0 and out["epochs"] == 1


def test_export_runs_without_fastnas(cli, tiny_run, tmp_path):
    out = tmp_path / "exported_net.py"
    r = cli("export", "--run", tiny_run, "--out", out)
    assert r.code == 0, r.err
    weights = out.with_suffix(".pt")
    assert out.exists() and weights.exists()
    assert "fastnas" not in [line.split()[1] for line in out.read_text().splitlines()
                             if line.startswith(("import ", "from "))]

    # The reference output: the fastnas network of the same architecture with the same weights.
    from fastnas.spaces import create_space

    result = json.loads((tiny_run / "result.json").read_text())
    space = create_space("nb201", C=4, N=1, num_classes=10, in_channels=1, resolution=8)
    arch = space.parse(result["arch"])
    net = space.supernet().extract(arch)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = net(x)

    # A clean interpreter: no PYTHONPATH, no site dirs of the repo, and an import hook refusing fastnas.
    script = textwrap.dedent(f"""
        import sys
        sys.path = [p for p in sys.path if p and 'work/main' not in p]
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == 'fastnas' or name.startswith('fastnas.'):
                    raise ImportError('fastnas is blocked here')
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(tmp_path)!r})
        import torch
        import exported_net
        m = exported_net.Network()
        m.load_state_dict(torch.load({str(weights)!r}, weights_only=True))
        m.eval()
        with torch.no_grad():
            y = m(torch.load({str(tmp_path / 'x.pt')!r}))
        torch.save(y, {str(tmp_path / 'y.pt')!r})
        assert 'fastnas' not in sys.modules
    """)
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = torch.load(tmp_path / "y.pt")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # thread counts differ


def test_export_rejects_bad_output_names(cli, tiny_run, tmp_path):
    for name in ("net.txt", "my-net.py"):
        r = cli("export", "--run", tiny_run, "--out", tmp_path / name)
        assert r.code == 2 and r.err.startswith("fastnas: error: ")
    assert not list(tmp_path.iterdir())


def test_kendall_on_a_hand_made_csv(cli, tiny_run, tmp_path):
    with open(tiny_run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    truth = tmp_path / "truth.csv"
    # ground truth = the score itself, in another text form of the same architectures: tau = 1
    with open(truth, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Architecture", "test_acc"])
        for row in rows:
            w.writerow([" " + row["arch"] + " ", float(row["score"]) * 2 + 1])
    plot = tmp_path / "k.png"
    r = cli("kendall", "--run", tiny_run, "--truth", truth, "--plot", plot)
    assert r.code == 0, r.err
    assert "Kendall tau 1.0000" in r.out and f"over {len(rows)} architectures" in r.out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    r = cli("kendall", "--run", tiny_run, "--truth", truth, "--score-column", "nope")
    assert r.code == 2 and "not a column" in r.err


def test_kendall_with_fewer_than_two_matches_is_an_error_and_keeps_the_plot(cli, tiny_run, tmp_path):
    with open(tiny_run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    truth = tmp_path / "truth.csv"
    truth.write_text("arch,test_acc\n" + f"{rows[0]['arch']},0.5\n")  # one architecture only
    plot = tmp_path / "k.png"
    plot.write_bytes(b"an earlier plot")
    r = cli("kendall", "--run", tiny_run, "--truth", truth, "--plot", plot)
    assert r.code == 2 and "only 1 of the run's" in r.err and "at least 2" in r.err, r.err
    assert plot.read_bytes() == b"an earlier plot"


def test_kendall_names_a_missing_truth_file(cli, tiny_run, tmp_path):
    r = cli("kendall", "--run", tiny_run, "--truth", tmp_path / "nope.csv")
    assert r.code == 2 and "--truth" in r.err and "no such file" in r.err and "Errno" not in r.err, r.err


def test_kendall_columns_by_name(cli, tiny_run, tmp_path):
    with open(tiny_run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="") as fh:  # two accuracy-like columns: ambiguous without a name
        w = csv.writer(fh)
        w.writerow(["cell", "acc_a", "acc_b"])
        for i, row in enumerate(rows):
            w.writerow([row["arch"], float(row["score"]), -float(row["score"])])
    r = cli("kendall", "--run", tiny_run, "--truth", truth)
    assert r.code == 2 and "--arch-column NAME" in r.err, r.err
    r = cli("kendall", "--run", tiny_run, "--truth", truth, "--arch-column", "cell")
    assert r.code == 2 and "--acc-column NAME" in r.err and "several columns" in r.err, r.err
    r = cli("kendall", "--run", tiny_run, "--truth", truth, "--arch-column", "cell", "--acc-column", "acc_b",
            "--plot", tmp_path / "k.png")
    assert r.code == 0, r.err
    assert "Kendall tau -1.0000" in r.out


@pytest.mark.parametrize("command, hint", [("search", "fastnas search --resume"),
                                           ("groundtruth", "the same command continues the table"),
                                           ("kendall", "nothing was left half-written")])
def test_ctrl_c_says_how_to_continue_that_command(cli, monkeypatch, command, hint):
    from fastnas.cli import commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(commands.COMMANDS, command, interrupted)
    args = {"search": [], "groundtruth": ["--archs", "1", "--out", "x.csv"],
            "kendall": ["--run", "r", "--truth", "t.csv"]}[command]
    r = cli(command, *args)
    assert r.code == 130 and hint in r.err, r.err
