"""`fastnas search` writes a complete run directory with a valid architecture."""

from __future__ import annotations

import csv
import json

from fastnas.run.config import RunConfig, load_toml
from fastnas.spaces import create_space

from _cli_helpers import TINY


def test_search_writes_a_complete_run_directory(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.toml", "state.json", "supernet.pt", "supernet_init.pt", "search_state.json",
            "history.csv", "result.json", "plots"} <= names
    assert not [n for n in names if n.endswith(".tmp")]  # no leftovers of atomic writes
    plots = {p.name for p in (tiny_run / "plots").iterdir()}
    assert {"search_progress.png", "cell.png", "loss_vs_sigma.png"} <= plots
    for p in (tiny_run / "plots").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads((tiny_run / "result.json").read_text())
    space = create_space("nb201")
    arch = space.parse(result["arch"])
    assert space.format(arch) == result["arch"]
    assert result["params"] > 0 and result["flops"] > 0
    assert {"angle", "flatness"} <= set(result["parts"])
    assert result["test_accuracy"] is None  # not retrained
    assert result["search"]["n_scored"] == 8
    t = result["timings"]
    assert {"train", "scoring", "report"} <= set(t["seconds"])
    assert abs(sum(t["share"].values()) - 1) < 1e-6
    assert result["environment"]["backends"]["used"]
    assert result["scoring"]["route"] in ("extracted", "supernet", "batched", "model")
    assert result["scoring"]["route_reason"]

    with open(tiny_run / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert {"arch", "score", "angle", "flatness", "params", "flops", "generation"} <= set(rows[0])
    assert result["arch"] in {r["arch"] for r in rows}
    best = max(rows, key=lambda r: float(r["score"]))
    assert best["arch"] == result["arch"]


def test_config_toml_holds_the_full_resolved_config(tiny_run):
    saved = RunConfig.from_dict(load_toml(tiny_run / "config.toml"))
    assert saved.channels == 4 and saved.epochs == 1 and saved.limit_train == 128
    # "choose for me" values are decided and recorded
    assert saved.topk is not None and saved.mutations is not None and saved.augment is False


def test_search_prints_the_architecture_and_the_report_path(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("search", *TINY, "--metric", "accuracy", "--searcher", "random", "--out", out)
    assert r.code == 0, r.err
    result = json.loads((out / "result.json").read_text())
    assert result["arch"] in r.out
    assert str(out / "result.json") in r.out
    for label in ("supernet training", "scoring", "report and plots"):
        assert label in r.out  # the timing table
    assert "accuracy" in result["parts"]
    assert not (out / "plots" / "loss_vs_sigma.png").exists()  # no flatness, no sigma plot


def test_config_file_sets_values_and_flags_win(cli, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('metric = "angle"\nsearcher = "random"\npopulation = 3\n[search]\nmutate_prob = 0.25\n')
    out = tmp_path / "run"
    r = cli("search", *TINY, "--config", cfg, "--population", "2", "--out", out)
    assert r.code == 0, r.err
    saved = RunConfig.from_dict(load_toml(out / "config.toml"))
    assert saved.metric == "angle" and saved.searcher == "random"
    assert saved.population == 2 and saved.mutate_prob == 0.25
    assert json.loads((out / "result.json").read_text())["search"]["n_scored"] == 4  # 2 x 2 generations


def test_train_supernet_then_search_with_other_search_settings(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train-supernet", *TINY, "--out", out)
    assert r.code == 0, r.err
    assert (out / "supernet.pt").exists() and not (out / "result.json").exists()
    r = cli("search", "--resume", out, "--metric", "angle", "--quiet")  # search not started: may change
    assert r.code == 0, r.err
    assert json.loads((out / "result.json").read_text())["search"]["metric"] == "angle"
    r = cli("search", "--resume", out, "--metric", "accuracy")  # now it has
    assert r.code == 2 and "cannot change metric" in r.err


def test_search_with_ground_truth_adds_kendall(cli, tmp_path):
    import itertools
    import random

    from fastnas.spaces.nb201 import EDGES, OPS

    space = create_space("nb201")
    rng = random.Random(0)
    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arch", "accuracy"])
        for arch in itertools.product(OPS, repeat=len(EDGES)):
            w.writerow([space.format(arch), rng.uniform(10, 90)])
    out = tmp_path / "run"
    r = cli("search", *TINY, "--truth", truth, "--out", out)
    assert r.code == 0, r.err
    result = json.loads((out / "result.json").read_text())
    assert result["kendall"]["n"] == 8 and -1 <= result["kendall"]["tau"] <= 1
    assert (out / "plots" / "kendall.png").exists()
    assert "Kendall tau" in r.out


def test_population_one_runs_without_a_topk(cli, tmp_path):
    from _cli_helpers import tiny

    out = tmp_path / "run"
    r = cli("search", *tiny(population=1, generations=2), "--out", out)
    assert r.code == 0, r.err
    result = json.loads((out / "result.json").read_text())
    assert result["search"]["n_scored"] == 2
